package testenv_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/testenv"
)

func TestFreeAddr(t *testing.T) {
	addr := testenv.FreeAddr(t)
	if !strings.HasPrefix(addr, "127.0.0.1:") {
		t.Fatalf("FreeAddr = %q, want 127.0.0.1:port", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on FreeAddr %s: %v", addr, err)
	}
	_ = ln.Close()
}

func TestKafka(t *testing.T) {
	addr := testenv.Kafka(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()

	producer, err := kgo.NewClient(kgo.SeedBrokers(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	for _, topic := range kafka.Topics {
		if err := producer.ProduceSync(ctx, &kgo.Record{Topic: topic, Key: []byte("c1"), Value: []byte(topic)}).FirstErr(); err != nil {
			t.Fatalf("produce to %s: %v", topic, err)
		}
	}

	consumer, err := kgo.NewClient(
		kgo.SeedBrokers(addr),
		kgo.ConsumerGroup("testenv"),
		kgo.ConsumeTopics(kafka.TopicInbound),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	)
	if err != nil {
		t.Fatal(err)
	}
	defer consumer.Close()
	fetches := consumer.PollRecords(ctx, 10)
	if errs := fetches.Errors(); len(errs) > 0 {
		t.Fatalf("poll: %v", errs[0].Err)
	}
	recs := fetches.Records()
	if len(recs) != 1 || string(recs[0].Value) != kafka.TopicInbound || recs[0].Topic != kafka.TopicInbound {
		t.Fatalf("consumed %d records (%v), want the one produced to %s", len(recs), recs, kafka.TopicInbound)
	}
	if err := consumer.CommitRecords(ctx, recs...); err != nil {
		t.Fatalf("commit: %v", err)
	}
}

func TestMongo(t *testing.T) {
	coll := collection(t, testenv.Mongo(t), "platform", "items")
	insertFindUnique(t, coll)
}

// TestSharedMongo runs parallel tests on one server: each gets its own database, so identical writes do
// not collide, and the databases are dropped when the tests end.
func TestSharedMongo(t *testing.T) {
	uri := testenv.SharedMongo(t)
	if again := testenv.SharedMongo(t); again != uri {
		t.Fatalf("SharedMongo returned %q, then %q", uri, again)
	}
	var names []string
	t.Run("group", func(t *testing.T) {
		for i := range 3 {
			name := testenv.MongoDatabase(t, uri)
			names = append(names, name)
			t.Run(fmt.Sprintf("db%d", i), func(t *testing.T) {
				t.Parallel()
				insertFindUnique(t, collection(t, uri, name, "items"))
				// Proves the "dropped" check below is meaningful: the database did exist.
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				dbs, err := connect(t, uri).ListDatabaseNames(ctx, bson.D{})
				if err != nil || !slices.Contains(dbs, name) {
					t.Fatalf("ListDatabaseNames = %v, %v; want it to include %s", dbs, err, name)
				}
			})
		}
	})

	valid := regexp.MustCompile(`^[a-zA-Z0-9_-]{1,63}$`)
	for _, n := range names {
		if !valid.MatchString(n) {
			t.Errorf("database name %q is not valid for FerretDB", n)
		}
	}
	t.Run(strings.Repeat("very long name/", 8), func(t *testing.T) {
		name := testenv.MongoDatabase(t, uri)
		if !valid.MatchString(name) {
			t.Fatalf("database name %q is not valid for FerretDB", name)
		}
		insertFindUnique(t, collection(t, uri, name, "items"))
	})
	client := connect(t, uri)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	left, err := client.ListDatabaseNames(ctx, bson.D{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if slices.Contains(left, n) {
			t.Errorf("database %s still exists after its test ended", n)
		}
	}
}

// TestMongoStopStart simulates an outage: operations fail while stopped, and after Start the same client
// finds the document written before.
func TestMongoStopStart(t *testing.T) {
	srv := testenv.StartMongoServer(t)
	uri := srv.URI()
	coll := collection(t, uri, "platform", "items")
	ctx := context.Background()
	if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: "kept"}}); err != nil {
		t.Fatal(err)
	}

	srv.Stop()
	srv.Stop() // idempotent
	failCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := coll.InsertOne(failCtx, bson.D{{Key: "_id", Value: "during-outage"}}); err == nil {
		t.Fatal("insert succeeded while mongo was stopped")
	}

	srv.Start()
	if srv.URI() != uri {
		t.Fatalf("URI changed across restart: %q → %q", uri, srv.URI())
	}
	var doc bson.M
	err := eventually(15*time.Second, func(ctx context.Context) error {
		return coll.FindOne(ctx, bson.D{{Key: "_id", Value: "kept"}}).Decode(&doc)
	})
	if err != nil {
		t.Fatalf("document written before the outage: %v", err)
	}
}

// needRedisServer skips a test of the real redis-server where none is installed, outside CI; with CI=true
// it fails instead, as StartRedisServer does.
func needRedisServer(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
			t.Fatalf("redis-server must be installed for this test with CI=true: %v", err)
		}
		t.Skipf("redis-server is not on PATH (%v): this test of the real server is skipped; the others use miniredis", err)
	}
}

func TestRedis(t *testing.T) {
	needRedisServer(t)
	rdb := redisClient(t, testenv.Redis(t))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := rdb.Set(ctx, "k", "v", time.Minute).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	if got, err := rdb.Get(ctx, "k").Result(); err != nil || got != "v" {
		t.Fatalf("GET = %q, %v; want v", got, err)
	}
	// A real server reports its process; miniredis has no INFO server section.
	info, err := rdb.Info(ctx, "server").Result()
	if err != nil || !strings.Contains(info, "process_id:") {
		t.Fatalf("INFO server = %q, %v; want a real redis-server", info, err)
	}
}

func TestRedisStopStart(t *testing.T) {
	tests := []struct {
		name string
		env  func(t *testing.T)
	}{
		{name: "redis-server", env: needRedisServer},
		{name: "miniredis fallback", env: func(t *testing.T) {
			t.Setenv("PATH", t.TempDir())
			t.Setenv("CI", "")
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.env(t)
			srv := testenv.StartRedisServer(t)
			rdb := redisClient(t, srv.URL())
			ctx := context.Background()
			if err := rdb.Set(ctx, "k", "v", 0).Err(); err != nil {
				t.Fatalf("SET: %v", err)
			}

			srv.Stop()
			srv.Stop() // idempotent
			pingCtx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			if err := rdb.Ping(pingCtx).Err(); err == nil {
				t.Fatal("PING answered while redis was stopped")
			}

			srv.Start()
			if err := eventually(10*time.Second, func(ctx context.Context) error { return rdb.Ping(ctx).Err() }); err != nil {
				t.Fatalf("PING after restart: %v", err)
			}
			// No persistence: a restarted Redis is an empty cache.
			if err := rdb.Get(ctx, "k").Err(); !errors.Is(err, redis.Nil) {
				t.Fatalf("GET after restart = %v, want redis.Nil", err)
			}
		})
	}
}

// TestRedisCIRequiresRealServer: without redis-server and with CI=true the helper must fail the test.
func TestRedisCIRequiresRealServer(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	t.Setenv("CI", "true")
	rec := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		testenv.StartRedisServer(rec)
		rec.msg = "StartRedisServer returned"
	}()
	<-done
	if !strings.Contains(rec.msg, "redis-server not found") || !strings.Contains(rec.msg, "CI=true") {
		t.Fatalf("fatal message = %q, want it to name redis-server and CI=true", rec.msg)
	}
}

// fatalRecorder captures Fatal instead of failing the real test, ending the goroutine like Fatal does.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (r *fatalRecorder) Helper() {}

func (r *fatalRecorder) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (r *fatalRecorder) Fatal(args ...any) {
	r.msg = fmt.Sprint(args...)
	runtime.Goexit()
}

func connect(t *testing.T, uri string) *mongo.Client {
	t.Helper()
	client, err := mongo.Connect(options.Client().ApplyURI(uri).SetServerSelectionTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = client.Disconnect(ctx)
	})
	return client
}

func collection(t *testing.T, uri, db, name string) *mongo.Collection {
	t.Helper()
	return connect(t, uri).Database(db).Collection(name)
}

// insertFindUnique inserts, finds, and checks a unique index rejects a duplicate with E11000.
func insertFindUnique(t *testing.T, coll *mongo.Collection) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := coll.Indexes().CreateOne(ctx, mongo.IndexModel{
		Keys:    bson.D{{Key: "email", Value: 1}},
		Options: options.Index().SetUnique(true),
	}); err != nil {
		t.Fatalf("create unique index: %v", err)
	}
	if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: "u1"}, {Key: "email", Value: "a@example.com"}}); err != nil {
		t.Fatalf("insert: %v", err)
	}
	var got bson.M
	if err := coll.FindOne(ctx, bson.D{{Key: "email", Value: "a@example.com"}}).Decode(&got); err != nil {
		t.Fatalf("find: %v", err)
	}
	if got["_id"] != "u1" {
		t.Fatalf("found %v, want _id u1", got)
	}
	_, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: "u2"}, {Key: "email", Value: "a@example.com"}})
	var we mongo.WriteException
	if !mongo.IsDuplicateKeyError(err) || !errors.As(err, &we) || !we.HasErrorCode(11000) {
		t.Fatalf("duplicate email: got %v, want E11000 duplicate key error", err)
	}
}

func redisClient(t *testing.T, url string) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	// Fail fast while the server is down instead of retrying for seconds.
	opts.MaxRetries = -1
	opts.DialTimeout = 500 * time.Millisecond
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// eventually retries fn until it succeeds or timeout passes, returning the last error.
func eventually(timeout time.Duration, fn func(ctx context.Context) error) error {
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := fn(ctx)
		cancel()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Metric sums the series that carry every given label pair, over counters, gauges and histogram counts.
func TestMetric(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "c_total"}, []string{"a", "b"})
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "g"})
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "h_seconds"}, []string{"stage"})
	reg.MustRegister(c, g, h)
	c.WithLabelValues("x", "1").Add(2)
	c.WithLabelValues("x", "2").Add(3)
	c.WithLabelValues("y", "1").Add(5)
	g.Set(7)
	h.WithLabelValues("persist").Observe(0.1)
	h.WithLabelValues("persist").Observe(0.2)
	h.WithLabelValues("notify").Observe(0.3)
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"c_total", nil, 10},
		{"c_total", []string{"a", "x"}, 5},
		{"c_total", []string{"a", "x", "b", "2"}, 3},
		{"c_total", []string{"a", "z"}, 0},
		{"c_total", []string{"nope", "x"}, 0},
		{"g", nil, 7},
		{"h_seconds", []string{"stage", "persist"}, 2},
		{"absent", nil, 0},
	} {
		if got := testenv.Metric(t, reg, tc.name, tc.labels...); got != tc.want {
			t.Errorf("Metric(%s, %v) = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
}
