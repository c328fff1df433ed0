package embedded_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/msgplatform/platform/internal/embedded"
	"github.com/msgplatform/platform/internal/kafka"
)

func TestKafka(t *testing.T) {
	tests := []struct {
		name     string
		addr     string
		wantHost string // host of Addr(), which is also what the broker advertises
	}{
		{name: "loopback", addr: "127.0.0.1:0", wantHost: "127.0.0.1"},
		{name: "wildcard is advertised as loopback", addr: ":0", wantHost: "127.0.0.1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k, err := embedded.StartKafka(tc.addr, kafka.Topics)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(k.Close)

			host, port, err := net.SplitHostPort(k.Addr())
			if err != nil {
				t.Fatalf("Addr() = %q: %v", k.Addr(), err)
			}
			if host != tc.wantHost || port == "0" {
				t.Fatalf("Addr() = %q, want host %s and a real port", k.Addr(), tc.wantHost)
			}
			checkTopics(t, k.Addr())
			produceConsume(t, k.Addr())
		})
	}
}

func TestKafkaExactPort(t *testing.T) {
	addr := freeAddr(t)
	k, err := embedded.StartKafka(addr, kafka.Topics)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	if k.Addr() != addr {
		t.Fatalf("Addr() = %q, want %q", k.Addr(), addr)
	}
	// The port is taken, so a second broker on it must fail rather than silently pick another.
	if k2, err := embedded.StartKafka(addr, nil); err == nil {
		k2.Close()
		t.Fatalf("second StartKafka on %s succeeded", addr)
	}
	produceConsume(t, k.Addr())
}

// checkTopics asserts every platform topic exists with embedded.KafkaPartitions partitions.
func checkTopics(t *testing.T, addr string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	details, err := kadm.NewClient(cl).ListTopics(ctx, kafka.Topics...)
	if err != nil {
		t.Fatalf("list topics: %v", err)
	}
	for _, topic := range kafka.Topics {
		d, ok := details[topic]
		if !ok || d.Err != nil {
			t.Fatalf("topic %s: present=%v err=%v", topic, ok, d.Err)
		}
		if got := len(d.Partitions); got != embedded.KafkaPartitions {
			t.Errorf("topic %s has %d partitions, want %d", topic, got, embedded.KafkaPartitions)
		}
	}
}

// produceConsume produces one record to messages.inbound and reads it back in a consumer group.
func produceConsume(t *testing.T, addr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()

	producer, err := kgo.NewClient(kgo.SeedBrokers(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	want := fmt.Sprintf("hello-%d", time.Now().UnixNano())
	rec := &kgo.Record{Topic: kafka.TopicInbound, Key: []byte("conv-1"), Value: []byte(want)}
	if err := producer.ProduceSync(ctx, rec).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}

	consumer, err := kgo.NewClient(
		kgo.SeedBrokers(addr),
		kgo.ConsumerGroup("embedded-test"),
		kgo.ConsumeTopics(kafka.TopicInbound),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	)
	if err != nil {
		t.Fatal(err)
	}
	defer consumer.Close()
	for {
		fetches := consumer.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("record %q not consumed: %v", want, err)
		}
		for _, fe := range fetches.Errors() {
			t.Fatalf("fetch %s/%d: %v", fe.Topic, fe.Partition, fe.Err)
		}
		for _, r := range fetches.Records() {
			if string(r.Value) == want {
				if string(r.Key) != "conv-1" {
					t.Fatalf("key = %q, want conv-1", r.Key)
				}
				if err := consumer.CommitRecords(ctx, r); err != nil {
					t.Fatalf("commit: %v", err)
				}
				return
			}
		}
	}
}

func TestMongoRequiresDataDir(t *testing.T) {
	if _, err := embedded.StartMongo(context.Background(), "127.0.0.1:0", "", nil); err == nil {
		t.Fatal("StartMongo without a data directory succeeded; in-memory FerretDB hangs on updates")
	}
}

func TestMongo(t *testing.T) {
	tests := []struct {
		name    string
		dataDir func(t *testing.T) string
	}{
		{name: "sqlite files", dataDir: func(t *testing.T) string { return t.TempDir() + "/data with space" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			m, err := embedded.StartMongo(ctx, "127.0.0.1:0", tc.dataDir(t), slog.New(slog.NewTextHandler(t.Output(), nil)))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(m.Close)
			if !strings.HasPrefix(m.URI(), "mongodb://127.0.0.1:") {
				t.Fatalf("URI() = %q", m.URI())
			}
			coll := mongoCollection(t, m.URI())
			insertFindUnique(t, coll)
		})
	}
}

// TestMongoRestart proves the outage simulation later tests rely on: Close makes operations fail at once,
// and a server started again on the same address and directory serves the earlier data to the same client.
func TestMongoRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	m, err := embedded.StartMongo(ctx, "127.0.0.1:0", dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := strings.TrimSuffix(strings.TrimPrefix(m.URI(), "mongodb://"), "/")
	coll := mongoCollection(t, m.URI())
	opCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := coll.InsertOne(opCtx, bson.D{{Key: "_id", Value: "before-outage"}}); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	m.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %v; clients connected should not delay it", d)
	}
	failCtx, failCancel := context.WithTimeout(ctx, 2*time.Second)
	defer failCancel()
	if err := coll.FindOne(failCtx, bson.D{{Key: "_id", Value: "before-outage"}}).Err(); err == nil {
		t.Fatal("FindOne succeeded while the server was stopped")
	}

	m2, err := embedded.StartMongo(ctx, addr, dir, nil)
	if err != nil {
		t.Fatalf("restart on %s: %v", addr, err)
	}
	t.Cleanup(m2.Close)
	if m2.URI() != m.URI() {
		t.Fatalf("restarted URI %q, want %q", m2.URI(), m.URI())
	}
	// The driver notices the server is back on its own; allow it a few heartbeats.
	var got bson.M
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, cancel := context.WithTimeout(ctx, 2*time.Second)
		err = coll.FindOne(c, bson.D{{Key: "_id", Value: "before-outage"}}).Decode(&got)
		cancel()
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("document written before the restart: %v", err)
	}
	t.Logf("client recovered %v after restart", time.Since(start))
}

func mongoCollection(t *testing.T, uri string) *mongo.Collection {
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
	return client.Database("embedded_test").Collection("items")
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
	var got struct {
		ID    string `bson:"_id"`
		Email string `bson:"email"`
	}
	if err := coll.FindOne(ctx, bson.D{{Key: "email", Value: "a@example.com"}}).Decode(&got); err != nil {
		t.Fatalf("find: %v", err)
	}
	if got.ID != "u1" {
		t.Fatalf("found _id %q, want u1", got.ID)
	}

	_, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: "u2"}, {Key: "email", Value: "a@example.com"}})
	var we mongo.WriteException
	if !mongo.IsDuplicateKeyError(err) || !errors.As(err, &we) || !we.HasErrorCode(11000) {
		t.Fatalf("duplicate email: got %v, want E11000 duplicate key error", err)
	}
	n, err := coll.CountDocuments(ctx, bson.D{})
	if err != nil || n != 1 {
		t.Fatalf("count = %d, %v; want 1", n, err)
	}
}

func TestRedis(t *testing.T) {
	r, err := embedded.StartRedis("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if !strings.HasPrefix(r.URL(), "redis://127.0.0.1:") || !strings.HasSuffix(r.URL(), "/0") {
		t.Fatalf("URL() = %q", r.URL())
	}
	opts, err := redis.ParseURL(r.URL())
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := rdb.Set(ctx, "k", "v", time.Minute).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	if got, err := rdb.Get(ctx, "k").Result(); err != nil || got != "v" {
		t.Fatalf("GET = %q, %v; want v", got, err)
	}
	// Keys expire in real time, as on redis-server (miniredis alone never expires them).
	if err := rdb.Set(ctx, "short", "v", 100*time.Millisecond).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for rdb.Exists(ctx, "short").Val() == 1 {
		if time.Now().After(deadline) {
			t.Fatal("a key with a 100 ms TTL still exists after 5 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if rdb.Exists(ctx, "k").Val() != 1 {
		t.Fatal("a key with a minute to live expired")
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
