package store

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/event"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/msgplatform/platform/internal/testenv"
)

// TestPoolMetricsInUseDuringQuery reads the in-use gauge from the command monitor, which the driver calls
// while the command's connection is checked out.
func TestPoolMetricsInUseDuringQuery(t *testing.T) {
	m := NewDriverMetrics()
	var inUseDuringFind float64 = -1
	e := newOutageEnv(t, func(o *options.ClientOptions) {
		o.SetPoolMonitor(m.PoolMonitor()).SetServerMonitor(m.ServerMonitor()).
			SetMonitor(&event.CommandMonitor{Started: func(_ context.Context, ev *event.CommandStartedEvent) {
				if ev.CommandName == "find" {
					inUseDuringFind = testutil.ToFloat64(m.inUse)
				}
			}})
	})
	ctx := context.Background()
	if _, err := e.st.Conversations.Get(ctx, "t1", "none"); err == nil {
		t.Fatal("Get of a missing conversation succeeded")
	}
	if inUseDuringFind < 1 {
		t.Fatalf("platform_mongodb_pool_connections_in_use during a find = %v, want >= 1", inUseDuringFind)
	}
	if v := testutil.ToFloat64(m.inUse); v != 0 {
		t.Fatalf("platform_mongodb_pool_connections_in_use after the find = %v, want 0", v)
	}
	if v := testutil.ToFloat64(m.stateChanges.WithLabelValues("Unknown")); v != 0 {
		t.Fatalf("server went Unknown %v times with the server up", v)
	}

	// An outage: heartbeats fail and the server's kind changes to Unknown.
	e.srv.Stop()
	_, _ = e.st.Conversations.Get(ctx, "t1", "none")
	testenv.Eventually(t, "the server to be seen Unknown", waitLimit, func() bool {
		return testutil.ToFloat64(m.stateChanges.WithLabelValues("Unknown")) >= 1
	})
	testenv.Eventually(t, "a failed heartbeat", waitLimit, func() bool { return testutil.ToFloat64(m.heartbeatsFail) >= 1 })
	e.srv.Start()
}

func TestPoolMetricsCheckoutFailed(t *testing.T) {
	m := NewDriverMetrics()
	m.PoolMonitor().Event(&event.PoolEvent{Type: event.ConnectionCheckOutFailed, Reason: event.ReasonConnectionErrored})
	m.PoolMonitor().Event(&event.PoolEvent{Type: event.ConnectionCheckOutFailed, Reason: event.ReasonTimedOut})
	if v := testutil.ToFloat64(m.checkoutsFailed.WithLabelValues(event.ReasonConnectionErrored)); v != 1 {
		t.Fatalf("checkouts failed (connectionError) = %v, want 1", v)
	}
}

// TestConnectWithMetrics connects through the public constructor: the metrics are registered, the
// initial discovery of the server counts as a state change, URI pool options are accepted, and a second
// client on the same registry shares the series.
func TestConnectWithMetrics(t *testing.T) {
	uri := testenv.SharedMongo(t)
	reg := prometheus.NewRegistry()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	withPool := uri + "?maxPoolSize=4&minPoolSize=1"
	if strings.Contains(uri, "?") {
		withPool = uri + "&maxPoolSize=4&minPoolSize=1"
	}
	c1, err := ConnectWithMetrics(ctx, withPool, reg)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Disconnect(ctx)
	c2, err := ConnectWithMetrics(ctx, uri, reg)
	if err != nil {
		t.Fatalf("second client on the same registry: %v", err)
	}
	defer c2.Disconnect(ctx)
	if err := c1.Database("x").Collection("y").FindOne(ctx, bson.D{}).Err(); err != nil && err != mongo.ErrNoDocuments {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			got[mf.GetName()] += mt.GetCounter().GetValue() + mt.GetGauge().GetValue()
		}
	}
	if got["platform_mongodb_server_state_changes_total"] < 2 {
		t.Errorf("server_state_changes_total = %v, want >= 2 (each client discovered the server)", got["platform_mongodb_server_state_changes_total"])
	}
	if _, ok := got["platform_mongodb_pool_connections_in_use"]; !ok {
		t.Errorf("platform_mongodb_pool_connections_in_use not registered; have %v", got)
	}
}

func TestConnectBadURINeverPrintsPassword(t *testing.T) {
	_, err := Connect(context.Background(), "mongodb://admin:hunter2@127.0.0.1:1/?maxPoolSize=notanumber")
	if err == nil {
		t.Fatal("Connect with a malformed option succeeded")
	}
	if strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("error = %v: want the host named and no password", err)
	}
}
