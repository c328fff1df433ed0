// Package store holds the MongoDB access of the platform: connection, capabilities and (as they land)
// the tenant-scoped repositories and the bulk writer.
package store

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/readpref"
)

// Connect opens a client and pings the primary, retrying until ctx ends. Errors name the URI's hosts,
// never its credentials. It is ConnectWithMetrics without metrics.
func Connect(ctx context.Context, uri string) (*mongo.Client, error) {
	return ConnectWithMetrics(ctx, uri, nil)
}

// ConnectWithMetrics is Connect with the driver's pool and server-monitoring events turned into metrics
// registered with reg (see DriverMetrics; nil reg: nothing is registered). A second client on the same
// registry feeds the same series.
//
// Pool and timeout settings come from the URI and are honoured as the driver documents them, e.g.
// maxPoolSize (default 100), minPoolSize (default 0), maxConnecting, maxIdleTimeMS, waitQueueTimeoutMS,
// connectTimeoutMS, heartbeatFrequencyMS. serverSelectionTimeoutMS defaults to 5s here (the driver's 30s
// would hold every call that long during an outage).
func ConnectWithMetrics(ctx context.Context, uri string, reg prometheus.Registerer) (*mongo.Client, error) {
	m := NewDriverMetrics()
	if reg != nil {
		var err error
		if m, err = registerDriverMetrics(reg, m); err != nil {
			return nil, err
		}
	}
	return ConnectMonitored(ctx, uri, m)
}

// ConnectMonitored is Connect feeding m (which the caller registers, possibly later) from the driver's
// pool and server-monitoring events.
func ConnectMonitored(ctx context.Context, uri string, m *DriverMetrics) (*mongo.Client, error) {
	opts := options.Client().SetServerSelectionTimeout(5 * time.Second).SetAppName("platform").ApplyURI(uri)
	if m != nil {
		opts.SetPoolMonitor(m.PoolMonitor()).SetServerMonitor(m.ServerMonitor())
	}
	client, err := mongo.Connect(opts)
	if err != nil {
		return nil, fmt.Errorf("mongodb %s: configure client: %s", RedactURI(uri), redactErr(err, uri))
	}
	for {
		err = client.Ping(ctx, readpref.Primary())
		if err == nil {
			return client, nil
		}
		select {
		case <-ctx.Done():
			_ = client.Disconnect(context.Background())
			return nil, fmt.Errorf("mongodb %s: not reachable: %w", RedactURI(uri), err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// redactErr returns err's text with the URI's password, if any, replaced: the driver's URI parse errors
// may quote the URI.
func redactErr(err error, uri string) string {
	msg := err.Error()
	if u, perr := url.Parse(uri); perr == nil && u.User != nil {
		if pw, ok := u.User.Password(); ok && pw != "" {
			msg = strings.ReplaceAll(msg, pw, "xxxxx")
		}
	}
	return msg
}

// RedactURI returns the URI's scheme and hosts only, for messages and logs.
func RedactURI(uri string) string {
	u, err := url.Parse(uri)
	if err != nil {
		return "(unparsable URI)"
	}
	return u.Scheme + "://" + u.Host
}

// Ping asks the primary whether it is there.
func Ping(ctx context.Context, client *mongo.Client) error {
	if err := client.Ping(ctx, readpref.Primary()); err != nil {
		return fmt.Errorf("ping mongodb: %w", err)
	}
	return nil
}

// Server error codes that mean "this server has no change streams": NotImplemented (FerretDB),
// CommandNotSupported, and the standalone-server error (40573, "only supported on replica sets").
var noChangeStreamCodes = map[int32]bool{238: true, 115: true, 40573: true}

// ErrNoChangeStreams means the server is reachable but offers no change streams.
var ErrNoChangeStreams = errors.New("the MongoDB server has no change streams")

// CheckChangeStreams opens (and closes at once) a change stream on one collection of db (collection-level
// streams work on every replica set version, where database-level ones need 4.0+). It returns an error wrapping
// ErrNoChangeStreams on servers without them (FerretDB, a standalone mongod), another error when the
// server cannot be asked, and nil when change streams work.
func CheckChangeStreams(ctx context.Context, db *mongo.Database) error {
	cs, err := db.Collection("messages").Watch(ctx, mongo.Pipeline{bson.D{{Key: "$match", Value: bson.D{{Key: "operationType", Value: "noop"}}}}})
	if err == nil {
		return cs.Close(ctx)
	}
	var se mongo.ServerError
	if errors.As(err, &se) {
		for code := range noChangeStreamCodes {
			if se.HasErrorCode(int(code)) {
				return fmt.Errorf("%w (%s)", ErrNoChangeStreams, firstLine(err.Error()))
			}
		}
	}
	return fmt.Errorf("open change stream: %w", err)
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
