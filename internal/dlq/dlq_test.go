package dlq_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/protobuf/proto"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/dlq"
	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/testenv"
)

// env is kfake with every platform topic plus a dead_letters collection on the shared FerretDB.
type env struct {
	t        *testing.T
	broker   string
	st       *store.DeadLetters
	producer *kgo.Client
	admin    *kadm.Client
}

func newEnv(t *testing.T) *env {
	t.Helper()
	broker := testenv.Kafka(t)
	uri := testenv.SharedMongo(t)
	client, err := store.Connect(testCtx(t), uri)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Disconnect(context.Background()) })
	st := store.NewDeadLetters(client.Database(testenv.MongoDatabase(t, uri)))
	if err := st.EnsureIndexes(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	producer, err := kafka.NewProducer([]string{broker}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(producer.Close)
	return &env{t: t, broker: broker, st: st, producer: producer, admin: kadm.NewClient(producer)}
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func testLogger(t *testing.T) *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// testKeys sign the original records of the tests' dead letters, as the gateway signed them; the
// processor verifies with them.
var testKeys = func() *envelope.Keys {
	k, err := envelope.NewKeys("test", "dlq-test-signing-secret-0123456789abcdef")
	if err != nil {
		panic(err)
	}
	return k
}()

// dlqRecord is what the pipeline produces for a failure of the record at topic/partition/offset: the
// original (signed) record's key, value and headers plus the dlq.* headers.
func dlqRecord(partition int32, offset int64, attempts int, class, stage, tenant string, key, value []byte) *kgo.Record {
	h := func(k, v string) kgo.RecordHeader { return kgo.RecordHeader{Key: k, Value: []byte(v)} }
	orig := &kgo.Record{Topic: kafka.TopicInbound, Key: key, Value: value, Headers: []kgo.RecordHeader{
		h("content-type", "application/x-protobuf"),
		h("x-request-id", "req-"+strconv.FormatInt(offset, 10)),
	}}
	if err := testKeys.Sign(orig); err != nil {
		panic(err)
	}
	return &kgo.Record{Topic: kafka.TopicDLQ, Key: key, Value: value, Headers: append(orig.Headers,
		h(envelope.HeaderDLQError, "failed at "+stage),
		h(envelope.HeaderDLQErrorClass, class),
		h(envelope.HeaderDLQStage, stage),
		h(envelope.HeaderDLQAttempts, strconv.Itoa(attempts)),
		h(envelope.HeaderDLQOriginalTopic, kafka.TopicInbound),
		h(envelope.HeaderDLQOriginalPartition, strconv.Itoa(int(partition))),
		h(envelope.HeaderDLQOriginalOffset, strconv.FormatInt(offset, 10)),
		h(envelope.HeaderDLQFirstFailedAt, "2030-01-02T03:04:05.678Z"),
		h(envelope.HeaderDLQTenantID, tenant),
	)}
}

func inboundMsg(tenant, body string) *platformv1.InboundMessage {
	return &platformv1.InboundMessage{Id: ulid.Make().String(), TenantId: tenant, ConversationId: "c1", SenderId: "bob", Body: body}
}

func mustMarshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (e *env) produce(recs ...*kgo.Record) {
	e.t.Helper()
	if err := e.producer.ProduceSync(testCtx(e.t), recs...).FirstErr(); err != nil {
		e.t.Fatalf("produce: %v", err)
	}
}

// run runs fn in the background until the test ends (or the returned stop is called) and checks it
// returned nil.
func run(t *testing.T, fn func(context.Context) error) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("stopped with %v", err)
		}
	}
	t.Cleanup(stop)
	return stop
}

func (e *env) startProcessor(cfg dlq.Config, m *dlq.Metrics) (stop func()) {
	e.t.Helper()
	p, err := dlq.NewProcessor(cfg, []kgo.Opt{kgo.SeedBrokers(e.broker)}, e.st, testKeys, m, testLogger(e.t))
	if err != nil {
		e.t.Fatal(err)
	}
	stopRun := run(e.t, p.Run)
	// Closed when the test ends too, not only when the test stops it: a client left open logs (connection
	// errors as the cluster goes) after the test completed, which panics the test binary.
	var once sync.Once
	stop = func() { once.Do(func() { stopRun(); p.Close() }) }
	e.t.Cleanup(stop)
	return stop
}

func newMetrics(t *testing.T) *dlq.Metrics {
	t.Helper()
	m, err := dlq.NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func (e *env) get(id string) store.DeadLetter {
	e.t.Helper()
	d, err := e.st.Get(testCtx(e.t), id)
	if err != nil {
		e.t.Fatal(err)
	}
	return d
}

func (e *env) count(f store.DeadLetterFilter) int {
	e.t.Helper()
	n := 0
	if err := e.st.Each(testCtx(e.t), f, 200, func(page []store.DeadLetter) error { n += len(page); return nil }); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// endOffsets sums the end offsets of topic's partitions: how many records it ever received.
func (e *env) endOffsets(topic string) int64 {
	e.t.Helper()
	offs, err := e.admin.ListEndOffsets(testCtx(e.t), topic)
	if err != nil {
		e.t.Fatal(err)
	}
	var n int64
	offs.Each(func(o kadm.ListedOffset) { n += o.Offset })
	return n
}

// consumeAll reads every record of topic from the start, n of them.
func (e *env) consumeAll(topic string, n int) []*kgo.Record {
	e.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.broker), kgo.ConsumeTopics(topic))
	if err != nil {
		e.t.Fatal(err)
	}
	defer cl.Close()
	var recs []*kgo.Record
	ctx := testCtx(e.t)
	for len(recs) < n && ctx.Err() == nil {
		recs = append(recs, cl.PollFetches(ctx).Records()...)
	}
	if len(recs) != n {
		e.t.Fatalf("%d records on %s, want %d", len(recs), topic, n)
	}
	return recs
}

func headerMap(r *kgo.Record) map[string]string {
	m := map[string]string{}
	for _, h := range r.Headers {
		m[h.Key] = string(h.Value)
	}
	return m
}

func TestDeadLetterProcessorStoresEachFailureOnce(t *testing.T) {
	e := newEnv(t)
	in := inboundMsg("t1", "hello")
	perm := dlqRecord(2, 10, 1, dlq.ClassPermanent, "deserialize", "", []byte("c1"), []byte{0xff, 0x00, 0xfe})
	trans := dlqRecord(3, 11, 1, dlq.ClassTransient, "persist", "t1", []byte("c1"), mustMarshal(t, in))
	exhausted := dlqRecord(3, 12, 5, dlq.ClassTransient, "persist", "t1", []byte("c1"), []byte("x"))
	stray := &kgo.Record{Topic: kafka.TopicDLQ, Value: []byte("no headers at all")}
	// The same failure twice (a producer retry after a lost ack).
	e.produce(perm, trans, exhausted, stray, dlqRecord(2, 10, 1, dlq.ClassPermanent, "deserialize", "", []byte("c1"), []byte{0xff, 0x00, 0xfe}))

	m := newMetrics(t)
	cfg := dlq.Config{GroupID: "dlq-test-1", Policy: dlq.Policy{InitialDelay: time.Hour, MaxDelay: time.Hour}}
	stop := e.startProcessor(cfg, m)
	testenv.Eventually(t, "4 entries stored, 1 duplicate", 0, func() bool {
		return testutil.ToFloat64(m.Duplicates) == 1 && testutil.ToFloat64(m.RecordsIn.WithLabelValues("deserialize", "permanent"))+
			testutil.ToFloat64(m.RecordsIn.WithLabelValues("persist", "transient"))+testutil.ToFloat64(m.RecordsIn.WithLabelValues("other", "other")) == 4
	})
	stop()

	if n := e.count(store.DeadLetterFilter{}); n != 4 {
		t.Fatalf("%d entries, want 4", n)
	}
	p := e.get("messages.inbound-2-10-1")
	if p.Status != store.DeadLetterParked || p.ErrorClass != "permanent" || p.Stage != "deserialize" || p.Attempts != 1 ||
		string(p.Payload) != "\xff\x00\xfe" || string(p.Key) != "c1" || p.MessageID != "" || p.NextRetryTime != nil ||
		p.Error != "failed at deserialize" || !p.FirstFailureTime.Equal(time.Date(2030, 1, 2, 3, 4, 5, 678e6, time.UTC)) || len(p.Headers) != 13 {
		t.Errorf("permanent entry: %+v", p)
	}
	tr := e.get("messages.inbound-3-11-1")
	if tr.Status != store.DeadLetterPendingRetry || tr.NextRetryTime == nil || tr.MessageID != in.GetId() || tr.TenantID != "t1" ||
		tr.OriginalPartition != 3 || tr.OriginalOffset != 11 {
		t.Errorf("transient entry: %+v", tr)
	}
	if x := e.get("messages.inbound-3-12-5"); x.Status != store.DeadLetterParked || x.Note != "attempts exhausted (5 of at most 5)" {
		t.Errorf("exhausted entry: status %s, note %q", x.Status, x.Note)
	}
	if testutil.ToFloat64(m.Parked) != 3 {
		t.Errorf("parked_total = %v, want 3", testutil.ToFloat64(m.Parked))
	}
	strays, _, err := e.st.List(testCtx(t), store.DeadLetterFilter{Stage: "unknown"}, 0, "")
	if err != nil || len(strays) != 1 || strays[0].OriginalTopic != kafka.TopicDLQ || strays[0].Status != store.DeadLetterParked {
		t.Errorf("record without dlq headers: %+v, %v", strays, err)
	}

	// Another consumer group reads everything again (a redelivery of every record): nothing new is stored.
	m2 := newMetrics(t)
	e.startProcessor(dlq.Config{GroupID: "dlq-test-2"}, m2)
	testenv.Eventually(t, "5 duplicates", 0, func() bool { return testutil.ToFloat64(m2.Duplicates) == 5 })
	if n := e.count(store.DeadLetterFilter{}); n != 4 || testutil.ToFloat64(m2.RecordsIn.WithLabelValues("persist", "transient")) != 0 {
		t.Errorf("%d entries after redelivery, want 4", n)
	}
}

func TestDeadLetterSchedulerRepublishesAfterItsDelay(t *testing.T) {
	e := newEnv(t)
	in := inboundMsg("t1", "retry me")
	e.produce(dlqRecord(1, 7, 2, dlq.ClassTransient, "persist", "t1", []byte("c1"), mustMarshal(t, in)))
	cfg := dlq.Config{GroupID: "dlq-sched", Interval: 10 * time.Millisecond, Policy: dlq.Policy{InitialDelay: 50 * time.Millisecond}}
	m := newMetrics(t)
	e.startProcessor(cfg, m)
	id := "messages.inbound-1-7-2"
	var pending store.DeadLetter
	testenv.Eventually(t, "the entry stored", 0, func() bool {
		d, err := e.st.Get(testCtx(t), id)
		pending = d
		return err == nil
	})
	if pending.Status != store.DeadLetterPendingRetry || pending.NextRetryTime == nil || pending.NextRetryTime.Before(pending.CreateTime) {
		t.Fatalf("stored %+v", pending)
	}
	if n := e.endOffsets(kafka.TopicInbound); n != 0 {
		t.Fatalf("%d records on %s before the scheduler ran", n, kafka.TopicInbound)
	}

	s, err := dlq.NewScheduler(cfg, e.st, e.producer, m, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	run(t, s.Run)
	testenv.Eventually(t, "the entry retried", 0, func() bool { return e.get(id).Status == store.DeadLetterRetried })
	recs := e.consumeAll(kafka.TopicInbound, 1)
	r, h := recs[0], headerMap(recs[0])
	if string(r.Key) != "c1" || string(r.Value) != string(mustMarshal(t, in)) || h[envelope.HeaderDLQAttempts] != "2" ||
		h[envelope.HeaderDLQFirstFailedAt] != "2030-01-02T03:04:05.678Z" || h["content-type"] != "application/x-protobuf" ||
		h["x-request-id"] != "req-7" || len(h) != 6 || h[envelope.HeaderDLQStage] != "" {
		t.Errorf("republished record key %q headers %v", r.Key, h)
	}
	if err := testKeys.Verify(r); err != nil {
		t.Errorf("the republished record does not verify: %v", err)
	}
	// Produced once due: the scheduler claims only when next_retry_time has passed.
	if r.Timestamp.Before(*pending.NextRetryTime) {
		t.Errorf("republished at %v, before its retry time %v", r.Timestamp, *pending.NextRetryTime)
	}
	d := e.get(id)
	if d.Retries != 1 || d.LastRetryTime == nil || d.ClaimOwner != "" || d.NextRetryTime != nil {
		t.Errorf("retried entry: %+v", d)
	}
	if testutil.ToFloat64(m.Retries.WithLabelValues(dlq.ResultRepublished)) != 1 {
		t.Errorf("retries_total{republished} = %v", testutil.ToFloat64(m.Retries.WithLabelValues(dlq.ResultRepublished)))
	}
}

func TestDeadLetterSchedulerParksExhaustedAndKeepsFailedRepublishes(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t)
	now := e.st.Now()
	due := now.Add(-time.Second)
	pending := func(id, topic string, attempts int) store.DeadLetter {
		return store.DeadLetter{ID: id, OriginalTopic: topic, Payload: []byte(id), Stage: "persist", ErrorClass: "transient",
			Attempts: attempts, Status: store.DeadLetterPendingRetry, NextRetryTime: &due}
	}
	if _, err := e.st.InsertMany(ctx, []store.DeadLetter{
		pending("exhausted-0-1-5", kafka.TopicInbound, 5),
		pending("elsewhere-0-1-1", kafka.TopicEvents, 1), // only messages.inbound is a retry target
		pending("failing-0-1-1", kafka.TopicInbound, 1),
	}); err != nil {
		t.Fatal(err)
	}
	m := newMetrics(t)
	s, err := dlq.NewScheduler(dlq.Config{Policy: dlq.Policy{MaxAttempts: 5, InitialDelay: time.Hour, MaxDelay: time.Hour}}, e.st, failingProducer{}, m, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	republished, parked, err := s.RunOnce(ctx)
	if republished != 0 || parked != 2 || err == nil {
		t.Fatalf("RunOnce = %d republished, %d parked, %v; want 0, 2 and the republish error", republished, parked, err)
	}
	if d := e.get("exhausted-0-1-5"); d.Status != store.DeadLetterParked || d.Note != "attempts exhausted (5 of at most 5)" {
		t.Errorf("exhausted entry: %s %q", d.Status, d.Note)
	}
	if d := e.get("elsewhere-0-1-1"); d.Status != store.DeadLetterParked || !strings.Contains(d.Note, "not a retry target") {
		t.Errorf("entry for messages.events: %s %q, want parked as not a retry target", d.Status, d.Note)
	}
	d := e.get("failing-0-1-1")
	if d.Status != store.DeadLetterPendingRetry || d.NextRetryTime == nil || !d.NextRetryTime.After(now.Add(30*time.Minute)) || d.ClaimOwner != "" {
		t.Errorf("failed republish: %+v (want pending again, an hour-ish later)", d)
	}
	if n := e.endOffsets(kafka.TopicInbound); n != 0 {
		t.Errorf("%d records republished, want 0", n)
	}
	if n := e.endOffsets(kafka.TopicEvents); n != 0 {
		t.Errorf("%d records republished to %s, want 0", n, kafka.TopicEvents)
	}
	if testutil.ToFloat64(m.Parked) != 2 || testutil.ToFloat64(m.Retries.WithLabelValues(dlq.ResultFailed)) != 1 {
		t.Errorf("parked %v, failed retries %v", testutil.ToFloat64(m.Parked), testutil.ToFloat64(m.Retries.WithLabelValues(dlq.ResultFailed)))
	}
	if err := s.RefreshGauges(ctx); err != nil {
		t.Fatal(err)
	}
	if testutil.ToFloat64(m.Entries.WithLabelValues("parked")) != 2 || testutil.ToFloat64(m.Entries.WithLabelValues("pending_retry")) != 1 ||
		testutil.ToFloat64(m.OldestPendingAge) <= 0 {
		t.Errorf("gauges: parked %v pending %v oldest %v", testutil.ToFloat64(m.Entries.WithLabelValues("parked")),
			testutil.ToFloat64(m.Entries.WithLabelValues("pending_retry")), testutil.ToFloat64(m.OldestPendingAge))
	}
}

// failingProducer fails every record, as Kafka does when its brokers are gone.
type failingProducer struct{}

func (failingProducer) ProduceSync(_ context.Context, rs ...*kgo.Record) kgo.ProduceResults {
	out := make(kgo.ProduceResults, len(rs))
	for i, r := range rs {
		out[i] = kgo.ProduceResult{Record: r, Err: errors.New("brokers unreachable")}
	}
	return out
}

// Two schedulers over the same collection: every due entry is republished exactly once.
func TestDeadLetterSchedulersTwoReplicasRepublishEachEntryOnce(t *testing.T) {
	e := newEnv(t)
	const n = 40
	due := e.st.Now().Add(-time.Second)
	var dls []store.DeadLetter
	for i := range n {
		dls = append(dls, store.DeadLetter{
			ID: store.DeadLetterID(kafka.TopicInbound, 0, int64(i), 1), OriginalTopic: kafka.TopicInbound,
			Key: []byte(fmt.Sprint("c", i%4)), Payload: []byte(fmt.Sprint("payload-", i)), Stage: "persist", ErrorClass: "transient",
			Attempts: 1, Status: store.DeadLetterPendingRetry, NextRetryTime: &due,
		})
	}
	if _, err := e.st.InsertMany(testCtx(t), dls); err != nil {
		t.Fatal(err)
	}
	m := newMetrics(t)
	for _, owner := range []string{"replica-a", "replica-b"} {
		producer, err := kafka.NewProducer([]string{e.broker}, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(producer.Close)
		s, err := dlq.NewScheduler(dlq.Config{Owner: owner, Interval: 5 * time.Millisecond, BatchSize: 7}, e.st, producer, m, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		run(t, s.Run)
	}
	testenv.Eventually(t, "every entry retried", 0, func() bool {
		return e.count(store.DeadLetterFilter{Statuses: []store.DeadLetterStatus{store.DeadLetterRetried}}) == n
	})
	if got := e.endOffsets(kafka.TopicInbound); got != n {
		t.Fatalf("%d records republished for %d entries", got, n)
	}
	seen := map[string]int{}
	for _, r := range e.consumeAll(kafka.TopicInbound, n) {
		seen[string(r.Value)]++
	}
	for i := range n {
		if c := seen[fmt.Sprint("payload-", i)]; c != 1 {
			t.Errorf("payload-%d republished %d times", i, c)
		}
	}
	if got := testutil.ToFloat64(m.Retries.WithLabelValues(dlq.ResultRepublished)); got != n {
		t.Errorf("retries_total{republished} = %v, want %d", got, n)
	}
	owners := map[string]bool{}
	if err := e.st.Each(testCtx(t), store.DeadLetterFilter{}, 200, func(page []store.DeadLetter) error {
		for _, d := range page {
			owners[d.LastActor] = true
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("entries retried by %v", owners)
}

func TestDeadLetterPolicyDelayIsCappedExponentialWithJitter(t *testing.T) {
	p := dlq.Policy{InitialDelay: time.Second, MaxDelay: time.Minute}
	for attempts, want := range map[int]time.Duration{0: time.Second, 1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 6: 32 * time.Second, 7: time.Minute, 100: time.Minute} {
		for range 50 {
			if d := p.Delay(attempts); d > want || d < want/2 {
				t.Fatalf("Delay(%d) = %v, want within [%v, %v]", attempts, d, want/2, want)
			}
		}
	}
	if p.Exhausted(4) || !p.Exhausted(5) || (dlq.Policy{MaxAttempts: 2}).Exhausted(1) {
		t.Error("Exhausted: default max attempts 5")
	}
	if d := (dlq.Policy{InitialDelay: time.Second, Jitter: -1}).Delay(3); d != 4*time.Second {
		t.Errorf("no jitter: %v", d)
	}
}

// A dead letter that carries its original's trace context is stored inside that trace: one dlq.store
// span, child of the traceparent, naming the entry; a record without one makes no span.
func TestDeadLetterProcessorTracesInTheRecordsTrace(t *testing.T) {
	e := newEnv(t)
	const traceID, parentID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	traced := dlqRecord(1, 20, 1, dlq.ClassPermanent, "validate", "t1", []byte("c1"), mustMarshal(t, inboundMsg("t1", "traced")))
	traced.Headers = append(traced.Headers, kgo.RecordHeader{Key: envelope.HeaderTraceparent, Value: []byte("00-" + traceID + "-" + parentID + "-01")})
	untraced := dlqRecord(1, 21, 1, dlq.ClassPermanent, "validate", "t1", []byte("c1"), mustMarshal(t, inboundMsg("t1", "untraced")))
	e.produce(traced, untraced)

	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	m := newMetrics(t)
	stop := e.startProcessor(dlq.Config{GroupID: "dlq-trace", TracerProvider: tp}, m)
	testenv.Eventually(t, "2 entries stored", 0, func() bool {
		return testutil.ToFloat64(m.RecordsIn.WithLabelValues("validate", "permanent")) == 2
	})
	stop()

	spans := exp.GetSpans()
	if len(spans) != 1 {
		t.Fatalf("%d spans, want 1 (the traced record's)", len(spans))
	}
	s := spans[0]
	if s.Name != "dlq.store" || s.SpanContext.TraceID().String() != traceID || s.Parent.SpanID().String() != parentID {
		t.Errorf("span %q trace %s parent %s, want dlq.store in trace %s under %s", s.Name, s.SpanContext.TraceID(), s.Parent.SpanID(), traceID, parentID)
	}
	attrs := map[string]string{}
	for _, a := range s.Attributes {
		attrs[string(a.Key)] = a.Value.String()
	}
	if attrs["dead_letter.id"] != "messages.inbound-1-20-1" || attrs["dead_letter.status"] != string(store.DeadLetterParked) {
		t.Errorf("attributes %v", attrs)
	}
}
