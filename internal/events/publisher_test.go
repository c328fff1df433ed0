package events_test

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/events"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/requestid"
	"github.com/msgplatform/platform/internal/testenv"
)

const waitFor = 20 * time.Second

// fakeProducer records what it is asked to produce and answers with err.
type fakeProducer struct {
	mu      sync.Mutex
	records []*kgo.Record
	err     error
}

func (f *fakeProducer) ProduceSync(_ context.Context, rs ...*kgo.Record) kgo.ProduceResults {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out kgo.ProduceResults
	for _, r := range rs {
		f.records = append(f.records, r)
		out = append(out, kgo.ProduceResult{Record: r, Err: f.err})
	}
	return out
}

// published returns platform_events_published_total{type,result}.
func published(t *testing.T, reg *prometheus.Registry, typ platformv1.EventType, result string) float64 {
	t.Helper()
	return testenv.Metric(t, reg, "platform_events_published_total", "type", typ.String(), "result", result)
}

func TestNewPublisherRefusesNilKeys(t *testing.T) {
	if _, err := events.NewPublisher(&fakeProducer{}, nil, prometheus.NewRegistry()); err == nil {
		t.Fatal("NewPublisher with no keys succeeded")
	}
}

// Two publishers of one process (the gateway's and the pipeline's, each over its own producer) share the
// registry: the second feeds the first's series.
func TestTwoPublishersShareTheirMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	keys := testenv.SigningKeys(t)
	a, err := events.NewPublisher(&fakeProducer{}, keys, reg)
	if err != nil {
		t.Fatal(err)
	}
	b, err := events.NewPublisher(&fakeProducer{}, keys, reg)
	if err != nil {
		t.Fatalf("a second publisher on the same registry: %v", err)
	}
	ev := func() *platformv1.Event {
		return &platformv1.Event{Type: platformv1.EventType_EVENT_TYPE_MESSAGE_PERSISTED, ConversationId: "c1"}
	}
	if err := a.Publish(context.Background(), ev()); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(context.Background(), ev()); err != nil {
		t.Fatal(err)
	}
	if got := published(t, reg, platformv1.EventType_EVENT_TYPE_MESSAGE_PERSISTED, "ok"); got != 2 {
		t.Fatalf("published_total{ok} = %v, want 2 (both publishers)", got)
	}
}

// readEvents returns every record of messages.events, waiting until there are want.
func readEvents(t *testing.T, broker string, want int) []*kgo.Record {
	t.Helper()
	client, err := kgo.NewClient(kgo.SeedBrokers(broker), kgo.ConsumeTopics(kafka.TopicEvents),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	var out []*kgo.Record
	for len(out) < want {
		fetches := client.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %d of %d records of %s: %v", len(out), want, kafka.TopicEvents, ctx.Err())
		}
		fetches.EachError(func(topic string, p int32, err error) { t.Logf("fetch %s/%d: %v", topic, p, err) })
		out = append(out, fetches.Records()...)
	}
	return out
}

func TestPublishProducesSignedEvent(t *testing.T) {
	broker := testenv.Kafka(t)
	producer, err := kafka.NewProducer([]string{broker}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	keys := testenv.SigningKeys(t)
	reg := prometheus.NewRegistry()
	pub, err := events.NewPublisher(producer, keys, reg)
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(requestid.With(context.Background(), "req-123"), waitFor)
	defer cancel()
	ev := &platformv1.Event{Type: platformv1.EventType_EVENT_TYPE_MEMBER_ADDED, TenantId: "t1",
		ConversationId: "conv-42", ActorId: "u1"}
	before := time.Now()
	if err := pub.Publish(ctx, ev); err != nil {
		t.Fatal(err)
	}
	after := time.Now()

	// The empty fields were filled.
	if _, err := ulid.ParseStrict(ev.GetId()); err != nil {
		t.Errorf("event id %q is not a ULID: %v", ev.GetId(), err)
	}
	if ev.GetEventTime() == nil {
		t.Error("event time not set")
	} else if at := ev.GetEventTime().AsTime(); at.Before(before) || at.After(after) {
		t.Errorf("event time %v not between %v and %v", at, before, after)
	}
	if ev.GetRequestId() != "req-123" {
		t.Errorf("request id = %q, want the context's req-123", ev.GetRequestId())
	}

	records := readEvents(t, broker, 1)
	if len(records) != 1 {
		t.Fatalf("%d records on %s, want 1", len(records), kafka.TopicEvents)
	}
	r := records[0]
	if r.Topic != kafka.TopicEvents {
		t.Errorf("topic = %q, want %q", r.Topic, kafka.TopicEvents)
	}
	if !bytes.Equal(r.Key, []byte("conv-42")) {
		t.Errorf("key = %q, want the conversation id conv-42", r.Key)
	}
	if err := keys.Verify(r); err != nil {
		t.Errorf("Verify: %v", err)
	}
	if kid, _ := envelope.Header(r, envelope.HeaderKeyID); kid != keys.SigningKeyID() {
		t.Errorf("signed by %q, want %q", kid, keys.SigningKeyID())
	}
	if rid, _ := envelope.Header(r, envelope.HeaderRequestID); rid != "req-123" {
		t.Errorf("%s header = %q, want req-123", envelope.HeaderRequestID, rid)
	}
	got, err := envelope.DecodeEvent(r)
	if err != nil {
		t.Fatalf("DecodeEvent: %v", err)
	}
	if !proto.Equal(got, ev) {
		t.Errorf("decoded event %v, want %v", got, ev)
	}

	if n := published(t, reg, ev.GetType(), "ok"); n != 1 {
		t.Errorf("published_total{result=ok} = %v, want 1", n)
	}
	if n := published(t, reg, ev.GetType(), "error"); n != 0 {
		t.Errorf("published_total{result=error} = %v, want 0", n)
	}
}

func TestPublishKeepsFieldsAlreadySet(t *testing.T) {
	p := &fakeProducer{}
	keys := testenv.SigningKeys(t)
	pub, err := events.NewPublisher(p, keys, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	at := timestamppb.New(time.Date(2030, 5, 6, 7, 8, 9, 0, time.UTC))
	ev := &platformv1.Event{Id: "01J00000000000000000000000", Type: platformv1.EventType_EVENT_TYPE_MESSAGE_PERSISTED,
		TenantId: "t1", ConversationId: "c1", RequestId: "req-own", EventTime: at}
	want := proto.Clone(ev)
	if err := pub.Publish(requestid.With(context.Background(), "req-ctx"), ev); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(ev, want) {
		t.Errorf("Publish changed the event to %v, want %v", ev, want)
	}
	if len(p.records) != 1 {
		t.Fatalf("%d records produced, want 1", len(p.records))
	}
	got, err := envelope.DecodeEvent(p.records[0])
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, want) {
		t.Errorf("produced %v, want %v", got, want)
	}
	if err := keys.Verify(p.records[0]); err != nil {
		t.Errorf("Verify: %v", err)
	}
}

func TestPublishWithoutRequestID(t *testing.T) {
	p := &fakeProducer{}
	pub, err := events.NewPublisher(p, testenv.SigningKeys(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ev := &platformv1.Event{Type: platformv1.EventType_EVENT_TYPE_MESSAGE_DELETED, TenantId: "t1", ConversationId: "c1"}
	if err := pub.Publish(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	if ev.GetRequestId() != "" {
		t.Errorf("request id = %q, want empty without one in the context", ev.GetRequestId())
	}
	if ev.GetId() == "" || ev.GetEventTime() == nil {
		t.Errorf("id or time not filled: %v", ev)
	}
}

func TestPublishReturnsAndCountsProducerError(t *testing.T) {
	errBroker := errors.New("broker unavailable")
	p := &fakeProducer{err: errBroker}
	reg := prometheus.NewRegistry()
	pub, err := events.NewPublisher(p, testenv.SigningKeys(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	ev := &platformv1.Event{Type: platformv1.EventType_EVENT_TYPE_MESSAGE_UPDATED, TenantId: "t1", ConversationId: "c1"}
	err = pub.Publish(context.Background(), ev)
	if !errors.Is(err, errBroker) {
		t.Fatalf("Publish = %v, want the producer's error", err)
	}
	if len(p.records) != 1 {
		t.Errorf("%d records produced, want 1", len(p.records))
	}
	if n := published(t, reg, ev.GetType(), "error"); n != 1 {
		t.Errorf("published_total{type=%s,result=error} = %v, want 1", ev.GetType(), n)
	}
	if n := published(t, reg, ev.GetType(), "ok"); n != 0 {
		t.Errorf("published_total{type=%s,result=ok} = %v, want 0", ev.GetType(), n)
	}

	// The next success counts as ok, the error stays counted once.
	p.mu.Lock()
	p.err = nil
	p.mu.Unlock()
	if err := pub.Publish(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	if n := published(t, reg, ev.GetType(), "ok"); n != 1 {
		t.Errorf("published_total{result=ok} after a success = %v, want 1", n)
	}
	if n := published(t, reg, ev.GetType(), "error"); n != 1 {
		t.Errorf("published_total{result=error} after a success = %v, want 1", n)
	}
}
