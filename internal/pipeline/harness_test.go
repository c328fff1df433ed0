package pipeline

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/authz"
	"github.com/msgplatform/platform/internal/config"
	"github.com/msgplatform/platform/internal/dlq"
	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/events"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/requestid"
	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/testenv"
)

// env is what a pipeline test runs against: kfake, a stoppable file-backed FerretDB, a real redis-server,
// the production configuration pointing at them, a store for setting up and checking data, and a
// producer playing SendMessage.
type env struct {
	t        testing.TB
	cfg      config.Config
	mongo    *testenv.MongoServer
	st       *store.Store
	producer *kgo.Client
	admin    *kadm.Client
}

func newEnv(t testing.TB) *env {
	t.Helper()
	broker := testenv.Kafka(t)
	m := testenv.StartMongoServer(t)
	vars := map[string]string{
		"KAFKA_BROKERS": broker, "MONGO_URI": m.URI(), "MONGO_DATABASE": "platform", "REDIS_URL": testenv.Redis(t),
		// The production default: a graceful stop finishes the polls in hand within it. 10 s was not
		// enough in CI, where FerretDB and kfake share two cores with other packages' tests under -race.
		"SHUTDOWN_TIMEOUT": "30s", "KAFKA_SIGNING_KEYS": testSigningKID + "=" + testSigningSecret,
	}
	cfg, err := config.Load(func(k string) string { return vars[k] })
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	client, err := store.Connect(ctx, m.URI())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Disconnect(context.Background()) })
	st := store.New(client.Database(cfg.MongoDatabase))
	if err := st.EnsureIndexes(ctx); err != nil {
		t.Fatal(err)
	}
	producer, err := kafka.NewProducer(cfg.KafkaBrokers, cfg.ProduceTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(producer.Close)
	return &env{t: t, cfg: cfg, mongo: m, st: st, producer: producer, admin: kadm.NewClient(producer)}
}

// testCtx bounds whatever a test waits for, so a hang fails the test instead of the whole run.
func testCtx(t testing.TB) context.Context {
	t.Helper()
	// Bounds a hang only: FerretDB on two busy cores stores the 10,000-message tests in 40–100 s.
	ctx, cancel := context.WithTimeout(t.Context(), 180*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// testLogger writes warnings and errors to the test's output.
func testLogger(t testing.TB) *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// running is a pipeline built from the same parts internal/app gives it (a guarded store, the membership
// cache and authorizer, the bulk writer, the event publisher, the dead-letter fallback), run like app
// runs it (Run, then Close).
type running struct {
	t       testing.TB
	p       *Pipeline
	writer  *store.BulkWriter
	cache   *authz.MembershipCache
	reg     *prometheus.Registry
	cancel  context.CancelFunc
	exited  chan struct{} // closed when Run returned
	runErr  error
	once    sync.Once
	closers []func()
}

func (e *env) start(pcfg Config) *running {
	e.t.Helper()
	ctx := testCtx(e.t)
	reg := prometheus.NewRegistry()
	logger := testLogger(e.t)
	r := &running{t: e.t, reg: reg, exited: make(chan struct{})}
	fail := func(err error) {
		e.t.Helper()
		if err != nil {
			for _, c := range r.closers {
				c()
			}
			e.t.Fatal(err)
		}
	}
	client, err := store.Connect(ctx, e.cfg.MongoURI)
	fail(err)
	r.closers = append(r.closers, func() { _ = client.Disconnect(context.Background()) })
	breaker, err := store.NewBreaker(store.BreakerConfig{Name: "mongodb", FailureRatio: e.cfg.MongoBreakerRatio, CoolDown: e.cfg.MongoBreakerCoolDown}, nil)
	fail(err)
	guard := &store.Guard{Breaker: breaker}
	st := store.New(client.Database(e.cfg.MongoDatabase))
	st.SetGuard(guard)
	dls := store.NewDeadLetters(client.Database(e.cfg.MongoDatabase))
	dls.SetGuard(guard)
	fail(dls.EnsureIndexes(ctx))
	ropts, err := redis.ParseURL(e.cfg.RedisURL)
	fail(err)
	rdb := redis.NewClient(ropts)
	r.closers = append(r.closers, func() { _ = rdb.Close() })
	dir := authz.StoreDirectory{Store: st}
	r.cache, err = authz.NewMembershipCache(rdb, dir, authz.CacheConfig{}, reg, logger)
	fail(err)
	authorizer, err := authz.NewAuthorizer(r.cache, dir, reg)
	fail(err)
	producer, err := kafka.NewProducer(e.cfg.KafkaBrokers, e.cfg.ProduceTimeout)
	fail(err)
	r.closers = append(r.closers, func() {
		fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = producer.Flush(fctx)
		producer.Close()
	})
	pub, err := events.NewPublisher(producer, e.cfg.KafkaSigningKeys, reg)
	fail(err)
	r.writer, err = store.NewBulkWriter(st, store.BulkConfig{}, reg, logger)
	fail(err)
	if pcfg.DrainTimeout == 0 {
		pcfg.DrainTimeout = e.cfg.ShutdownTimeout
	}
	r.p, err = New(pcfg, Deps{
		Kafka: []kgo.Opt{kgo.SeedBrokers(e.cfg.KafkaBrokers...)}, Keys: e.cfg.KafkaSigningKeys, Store: st, Authorizer: authorizer,
		Writer: r.writer, Events: pub, Producer: producer,
		DeadLetters: dlq.NewDirectWriter(dls, e.cfg.KafkaSigningKeys, dlq.Policy{}, nil, logger),
		Registry:    reg, Logger: logger,
	})
	if err != nil {
		r.writer.Close()
		fail(err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	subCtx, stopSub := context.WithCancel(context.Background())
	subDone := make(chan struct{})
	go func() { defer close(subDone); r.cache.Run(subCtx) }()
	r.closers = append([]func(){func() { stopSub(); <-subDone }}, r.closers...)
	go func() {
		defer close(r.exited)
		r.runErr = r.p.Run(runCtx)
	}()
	e.t.Cleanup(func() { _ = r.stop() })
	return r
}

// wait waits for Run to return and returns its error.
func (r *running) wait() error {
	<-r.exited
	return r.runErr
}

// stop cancels Run (a graceful stop: the batch in hand finishes and is committed), waits for it, leaves
// the group, flushes the writer and the producer and closes the clients. It returns Run's error.
func (r *running) stop() error {
	r.once.Do(func() {
		r.cancel()
		<-r.exited
		r.p.Close()
		r.writer.Close()
		for _, c := range r.closers {
			c()
		}
	})
	return r.runErr
}

// series counts the label sets a metric has in the registry.
func (r *running) series(name string) int {
	mfs, err := r.reg.Gather()
	if err != nil {
		panic(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return len(mf.GetMetric())
		}
	}
	return 0
}

// metric is testenv.Metric over the pipeline's registry.
func (r *running) metric(name string, labels ...string) float64 {
	return testenv.Metric(r.t, r.reg, name, labels...)
}

// conversation creates a conversation of tenant with the creator (owner) and members.
func (e *env) conversation(tenant, creator string, members ...string) store.Conversation {
	e.t.Helper()
	var ms []store.Member
	for _, u := range members {
		ms = append(ms, store.Member{UserID: u})
	}
	c, err := e.st.Conversations.Create(testCtx(e.t), store.Conversation{TenantID: tenant, Title: "conversation of " + creator, CreatorID: creator}, ms)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// inbound is what SendMessage publishes for sender in conv.
func inbound(tenant, conv, sender, body string, roles ...string) *platformv1.InboundMessage {
	if roles == nil {
		roles = []string{"user"}
	}
	return &platformv1.InboundMessage{
		Id: ulid.Make().String(), TenantId: tenant, ConversationId: conv, SenderId: sender, Body: body,
		Metadata: map[string]string{"client": "test"}, RequestId: requestid.New(), SendTime: timestamppb.Now(),
		SenderRoles: roles,
	}
}

// The key the test pipelines verify with (KAFKA_SIGNING_KEYS of newEnv); record and signed sign with it.
const (
	testSigningKID    = "test"
	testSigningSecret = "pipeline-test-signing-secret-0123456789abcdef"
)

var testSigningKeys = func() *envelope.Keys {
	k, err := envelope.NewKeys(testSigningKID, testSigningSecret)
	if err != nil {
		panic(err)
	}
	return k
}()

func testKeys(testing.TB) *envelope.Keys { return testSigningKeys }

// signed signs r with the test key, as the gateway signs what it produces, and returns it.
func signed(r *kgo.Record) *kgo.Record {
	if err := testSigningKeys.Sign(r); err != nil {
		panic(err)
	}
	return r
}

// unsigned strips r's signature headers, as a record produced by hand has none, and returns it.
func unsigned(r *kgo.Record) *kgo.Record {
	var hs []kgo.RecordHeader
	for _, h := range r.Headers {
		if h.Key != envelope.HeaderKeyID && h.Key != envelope.HeaderSignature {
			hs = append(hs, h)
		}
	}
	r.Headers = hs
	return r
}

// record encodes in as SendMessage does (protobuf, key = conversation id, content-type and request id
// headers, signed with the test key); json selects protojson with content-type application/json instead.
func record(in *platformv1.InboundMessage, json bool) *kgo.Record {
	value, contentType := mustMarshal(in), "application/x-protobuf"
	if json {
		b, err := protojson.Marshal(in)
		if err != nil {
			panic(err)
		}
		value, contentType = b, "application/json"
	}
	return signed(&kgo.Record{Topic: kafka.TopicInbound, Key: []byte(in.GetConversationId()), Value: value, Headers: []kgo.RecordHeader{
		{Key: "content-type", Value: []byte(contentType)},
		{Key: requestid.Header, Value: []byte(in.GetRequestId())},
	}})
}

func mustMarshal(m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

// produce produces records in order and returns them with their partitions and offsets set.
func (e *env) produce(recs ...*kgo.Record) []*kgo.Record {
	e.t.Helper()
	if err := e.producer.ProduceSync(testCtx(e.t), recs...).FirstErr(); err != nil {
		e.t.Fatalf("produce: %v", err)
	}
	return recs
}

// workload is N messages over conversations, each sent by one of the conversation's members.
type workload struct {
	convs []store.Conversation
	msgs  []*platformv1.InboundMessage // send order
}

func (e *env) workload(tenant string, conversations, senders int) *workload {
	w := &workload{}
	for i := range conversations {
		var users []string
		for j := range senders {
			users = append(users, fmt.Sprintf("user-%d-%d", i, j))
		}
		w.convs = append(w.convs, e.conversation(tenant, users[0], users[1:]...))
	}
	return w
}

// next returns the records of n more messages, round-robin over conversations and senders.
func (w *workload) next(n int) []*kgo.Record {
	recs := make([]*kgo.Record, n)
	for i := range recs {
		k := len(w.msgs)
		c := w.convs[k%len(w.convs)]
		in := inbound(c.TenantID, c.ID, c.CreatorID, fmt.Sprintf("message %d", k))
		w.msgs = append(w.msgs, in)
		recs[i] = record(in, false)
	}
	return recs
}

// waitStored waits until the messages collection holds n documents. Counting makes FerretDB decode every
// document, so it polls only every 100ms, not to eat the CPU the pipeline needs; checkStored verifies the
// documents afterwards.
func (e *env) waitStored(n int64) {
	e.t.Helper()
	ctx := testCtx(e.t)
	coll := e.st.Database().Collection(store.MessagesCollection)
	var got int64
	for {
		c, err := coll.EstimatedDocumentCount(ctx)
		if err == nil {
			got = c
			if got >= n {
				return
			}
		}
		select {
		case <-ctx.Done():
			e.t.Fatalf("%d messages stored, want %d (last error %v)", got, n, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

type storedDoc struct {
	ID             string    `bson:"_id"`
	ConversationID string    `bson:"conversation_id"`
	Body           string    `bson:"body"`
	Mentions       []string  `bson:"mentions"`
	PersistTime    time.Time `bson:"persist_time"`
}

// checkStored checks that exactly the workload's messages are stored, each once, and that per
// conversation they were persisted in send order (persist times never go back in send order; ids, which
// sort the listing, are the send order by construction).
func (e *env) checkStored(w *workload) {
	e.t.Helper()
	ctx := testCtx(e.t)
	cur, err := e.st.Database().Collection(store.MessagesCollection).Find(ctx, bson.D{}, options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}))
	if err != nil {
		e.t.Fatal(err)
	}
	var docs []storedDoc
	if err := cur.All(ctx, &docs); err != nil {
		e.t.Fatal(err)
	}
	if len(docs) != len(w.msgs) {
		e.t.Fatalf("%d messages stored, want %d", len(docs), len(w.msgs))
	}
	byID := map[string]storedDoc{}
	for _, d := range docs {
		byID[d.ID] = d
	}
	last := map[string]time.Time{}
	for i, m := range w.msgs {
		d, ok := byID[m.GetId()]
		if !ok {
			e.t.Fatalf("message %d (%s) not stored", i, m.GetId())
		}
		if d.Body != m.GetBody() || d.ConversationID != m.GetConversationId() {
			e.t.Fatalf("message %d stored as %+v", i, d)
		}
		if d.PersistTime.Before(last[d.ConversationID]) {
			e.t.Fatalf("message %d of conversation %s persisted at %v, before an earlier message (%v)", i, d.ConversationID, d.PersistTime, last[d.ConversationID])
		}
		last[d.ConversationID] = d.PersistTime
	}
}

// consume reads topic from the start until done(records so far) or the test's deadline.
func (e *env) consume(topic string, done func([]*kgo.Record) bool) []*kgo.Record {
	e.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.cfg.KafkaBrokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		e.t.Fatal(err)
	}
	defer cl.Close()
	ctx := testCtx(e.t)
	var recs []*kgo.Record
	for !done(recs) {
		fetches := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			e.t.Fatalf("%s: %d records read, not done by the deadline", topic, len(recs))
		}
		recs = append(recs, fetches.Records()...)
	}
	return recs
}

// checkEvents reads messages.events until every workload message has a MESSAGE_PERSISTED event, and
// checks that per conversation the events came in send order (first occurrences: a redelivery may
// repeat an event, with the same id). exact also requires no repeats.
func (e *env) checkEvents(w *workload, exact bool) {
	e.t.Helper()
	want := map[string]bool{}
	for _, m := range w.msgs {
		want[m.GetId()] = true
	}
	seen := map[string]bool{}
	order := map[string][]string{} // conversation → message ids, first occurrences
	repeats := 0
	e.consume(kafka.TopicEvents, func(recs []*kgo.Record) bool {
		for _, r := range recs[len(seen)+repeats:] {
			ev := &platformv1.Event{}
			if err := proto.Unmarshal(r.Value, ev); err != nil {
				e.t.Fatalf("undecodable event: %v", err)
			}
			if ev.GetType() != platformv1.EventType_EVENT_TYPE_MESSAGE_PERSISTED || ev.GetId() != ev.GetMessage().GetId() ||
				string(r.Key) != ev.GetConversationId() || ev.GetMessage().GetState() != platformv1.MessageState_MESSAGE_STATE_PERSISTED {
				e.t.Fatalf("unexpected event %v (key %s)", ev, r.Key)
			}
			if seen[ev.GetId()] {
				repeats++
				continue
			}
			seen[ev.GetId()] = true
			order[ev.GetConversationId()] = append(order[ev.GetConversationId()], ev.GetId())
		}
		return len(seen) >= len(want)
	})
	for id := range seen {
		if !want[id] {
			e.t.Fatalf("event for unknown message %s", id)
		}
	}
	sent := map[string][]string{}
	for _, m := range w.msgs {
		sent[m.GetConversationId()] = append(sent[m.GetConversationId()], m.GetId())
	}
	for conv, ids := range sent {
		if !slices.Equal(order[conv], ids) {
			e.t.Fatalf("conversation %s: events in another order than sent", conv)
		}
	}
	if exact && repeats > 0 {
		e.t.Fatalf("%d repeated events, want none", repeats)
	}
}

// dlqCount returns how many records messages.dlq holds.
func (e *env) dlqCount() int64 {
	e.t.Helper()
	offsets, err := e.admin.ListEndOffsets(testCtx(e.t), kafka.TopicDLQ)
	if err != nil {
		e.t.Fatal(err)
	}
	var n int64
	offsets.Each(func(o kadm.ListedOffset) {
		if o.Err == nil {
			n += o.Offset
		}
	})
	return n
}

// headers returns a record's headers as a map (the last value of a key wins) and the keys in order.
func headers(r *kgo.Record) (map[string]string, []string) {
	m := map[string]string{}
	var keys []string
	for _, h := range r.Headers {
		m[h.Key] = string(h.Value)
		keys = append(keys, h.Key)
	}
	return m, keys
}

// messagesCollection returns the raw messages collection.
func (e *env) messagesCollection() *mongo.Collection {
	return e.st.Database().Collection(store.MessagesCollection)
}
