package devstack_test

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/msgplatform/platform/internal/devstack"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/testenv"
)

func TestParseServers(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
		err  string
	}{
		{in: "kafka", want: []string{"kafka"}},
		{in: "redis, Kafka ,mongodb", want: []string{"kafka", "mongodb", "redis"}},
		{in: "mongodb,", want: []string{"mongodb"}},
		{in: "", err: "no server"},
		{in: "kafka,postgres", err: `unknown server "postgres"`},
		{in: "redis,redis", err: "named twice"},
	} {
		got, err := devstack.ParseServers(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseServers(%q) = %v, %v; want an error with %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("ParseServers(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

// TestRunServers starts the three embedded servers alone (no platform), talks to each at the address it
// announced, then stops them by ending the context.
func TestRunServers(t *testing.T) {
	cfg := testenv.Config(t, map[string]string{"DEVSTACK_DATA_DIR": t.TempDir()})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan devstack.ServerAddresses, 1)
	done := make(chan error, 1)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	go func() {
		done <- devstack.RunServers(ctx, cfg, devstack.Servers, logger, func(a devstack.ServerAddresses) { ready <- a })
	}()
	var addrs devstack.ServerAddresses
	select {
	case addrs = <-ready:
	case err := <-done:
		t.Fatalf("servers stopped before serving: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("servers not serving after 60s")
	}
	if addrs.Kafka == "" || !strings.HasPrefix(addrs.MongoURI, "mongodb://") || !strings.HasPrefix(addrs.RedisURL, "redis://") {
		t.Fatalf("addresses %+v", addrs)
	}

	octx, ocancel := context.WithTimeout(ctx, 30*time.Second)
	defer ocancel()
	kc, err := kgo.NewClient(kgo.SeedBrokers(addrs.Kafka))
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	topics, err := kadm.NewClient(kc).ListTopics(octx)
	if err != nil {
		t.Fatalf("list topics: %v", err)
	}
	for _, topic := range kafka.Topics {
		if !topics.Has(topic) {
			t.Errorf("topic %s not seeded; topics %v", topic, topics.Names())
		}
	}
	mc, err := store.Connect(octx, addrs.MongoURI)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = mc.Disconnect(context.Background()) }()
	if _, err := mc.Database("servers_test").Collection("c").InsertOne(octx, map[string]string{"k": "v"}); err != nil {
		t.Errorf("insert into FerretDB: %v", err)
	}
	opts, err := redis.ParseURL(addrs.RedisURL)
	if err != nil {
		t.Fatal(err)
	}
	rc := redis.NewClient(opts)
	defer rc.Close()
	if err := rc.Ping(octx).Err(); err != nil {
		t.Errorf("redis ping: %v", err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("RunServers returned %v after its context ended, want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("servers not stopped 30s after the context ended")
	}
}

func TestRunServersNeedsAServer(t *testing.T) {
	cfg := testenv.Config(t, nil)
	if err := devstack.RunServers(context.Background(), cfg, nil, slog.New(slog.DiscardHandler), nil); err == nil {
		t.Fatal("RunServers with no server returned nil")
	}
}
