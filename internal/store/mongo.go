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

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/readpref"
)

// Connect opens a client and pings the primary, retrying until ctx ends. Errors name the URI's hosts,
// never its credentials.
func Connect(ctx context.Context, uri string) (*mongo.Client, error) {
	opts := options.Client().ApplyURI(uri).SetServerSelectionTimeout(5 * time.Second).SetAppName("platform")
	client, err := mongo.Connect(opts)
	if err != nil {
		return nil, fmt.Errorf("mongodb %s: configure client: %w", RedactURI(uri), err)
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
