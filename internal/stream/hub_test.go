package stream_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/stream"
	"github.com/msgplatform/platform/internal/testenv"
)

// waitFor bounds every wait for a condition; no test asserts on how long anything takes.
const waitFor = 20 * time.Second

type hubEnv struct {
	t        *testing.T
	broker   string
	keys     *envelope.Keys
	reg      *prometheus.Registry
	hub      *stream.Hub
	producer *kgo.Client // partitions records by key, as the platform does
	manual   *kgo.Client // writes to the partition each record names
	ctx      context.Context
	stop     context.CancelFunc
	ran      chan struct{} // closed when hub.Run returned
}

// startHub starts a hub on a fresh cluster and waits until it reads every partition of messages.events.
func startHub(t *testing.T) *hubEnv {
	t.Helper()
	e := &hubEnv{t: t, broker: testenv.Kafka(t), keys: testenv.SigningKeys(t), reg: prometheus.NewRegistry(),
		ran: make(chan struct{})}
	var err error
	if e.producer, err = kafka.NewProducer([]string{e.broker}, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.producer.Close)
	if e.manual, err = kafka.NewProducer([]string{e.broker}, 10*time.Second, kgo.RecordPartitioner(kgo.ManualPartitioner())); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.manual.Close)
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelError}))
	if e.hub, err = stream.NewHub([]kgo.Opt{kgo.SeedBrokers(e.broker)}, e.keys, e.reg, logger); err != nil {
		t.Fatal(err)
	}
	e.ctx, e.stop = context.WithTimeout(context.Background(), time.Minute)
	go func() {
		defer close(e.ran)
		e.hub.Run(e.ctx)
	}()
	t.Cleanup(func() {
		e.stop()
		<-e.ran
	})
	e.waitReady()
	return e
}

// waitReady waits until the hub reads every partition of messages.events: the hub starts at the topic's
// end, so a record produced before it listed a partition's end offset is never seen. It sends signed
// probe events of a conversation of their own to each partition until the hub has dispatched one from
// every partition; late probes only reach that conversation, whose subscription is then closed.
func (e *hubEnv) waitReady() {
	e.t.Helper()
	topics, err := kadm.NewClient(e.producer).ListTopics(e.ctx, kafka.TopicEvents)
	if err == nil {
		err = topics.Error()
	}
	if err != nil {
		e.t.Fatal(err)
	}
	partitions := topics[kafka.TopicEvents].Partitions.Numbers()
	if len(partitions) == 0 {
		e.t.Fatalf("no partitions of %s", kafka.TopicEvents)
	}

	probes := e.hub.Subscribe("probe-tenant", "probe-conversation")
	defer probes.Close()
	ready := map[int32]bool{}
	deadline := time.After(waitFor)
	for seq := 0; len(ready) < len(partitions); seq++ {
		for _, p := range partitions {
			if ready[p] {
				continue
			}
			ev := &platformv1.Event{Id: fmt.Sprintf("probe-%d-%d", p, seq), TenantId: "probe-tenant",
				ConversationId: "probe-conversation", Type: platformv1.EventType_EVENT_TYPE_MESSAGE_PERSISTED}
			r := e.record(ev)
			r.Partition = p
			e.produceWith(e.manual, r)
		}
		tick := time.After(50 * time.Millisecond)
	drain:
		for {
			select {
			case ev, ok := <-probes.C:
				if !ok {
					e.t.Fatalf("probe subscription ended: %v", probes.Err())
				}
				var p int32
				var n int
				if _, err := fmt.Sscanf(ev.GetId(), "probe-%d-%d", &p, &n); err != nil {
					e.t.Fatalf("unexpected probe %q", ev.GetId())
				}
				ready[p] = true
			case <-tick:
				break drain
			case <-deadline:
				e.t.Fatalf("hub read only partitions %v of %v", ready, partitions)
			}
		}
	}
}

// record returns ev as the signed record the platform produces.
func (e *hubEnv) record(ev *platformv1.Event) *kgo.Record {
	e.t.Helper()
	r, err := envelope.EventRecord(ev, e.keys)
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

func (e *hubEnv) produce(rs ...*kgo.Record) {
	e.t.Helper()
	e.produceWith(e.producer, rs...)
}

func (e *hubEnv) produceWith(client *kgo.Client, rs ...*kgo.Record) {
	e.t.Helper()
	if err := client.ProduceSync(e.ctx, rs...).FirstErr(); err != nil {
		e.t.Fatalf("produce: %v", err)
	}
}

// metric is testenv.Metric over the hub's registry.
func (e *hubEnv) metric(name string, labels ...string) float64 {
	e.t.Helper()
	return testenv.Metric(e.t, e.reg, name, labels...)
}

func (e *hubEnv) rejected(reason string) float64 {
	return e.metric("platform_stream_events_rejected_total", "reason", reason)
}

// eventually waits for cond, failing the test with what() when it does not hold within waitFor.
func eventually(t *testing.T, cond func() bool, what func() string) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(what())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// receive returns the next event of s, failing when none comes within waitFor or s ends.
func receive(t *testing.T, s *stream.Subscription) *platformv1.Event {
	t.Helper()
	select {
	case ev, ok := <-s.C:
		if !ok {
			t.Fatalf("subscription ended: %v", s.Err())
		}
		return ev
	case <-time.After(waitFor):
		t.Fatal("no event received")
	}
	return nil
}

// ended waits for s to end and returns its error, after draining what it buffered.
func ended(t *testing.T, s *stream.Subscription) (buffered int, err error) {
	t.Helper()
	timeout := time.After(waitFor)
	for {
		select {
		case _, ok := <-s.C:
			if !ok {
				return buffered, s.Err()
			}
			buffered++
		case <-timeout:
			t.Fatal("subscription did not end")
		}
	}
}

func event(tenant, conversation, id string) *platformv1.Event {
	return &platformv1.Event{Id: id, Type: platformv1.EventType_EVENT_TYPE_MESSAGE_PERSISTED, TenantId: tenant,
		ConversationId: conversation, ActorId: "u1", RequestId: "req-" + id}
}

func TestHubDispatchesOnlyGenuineEventsOfTheConversation(t *testing.T) {
	e := startHub(t)
	sub := e.hub.Subscribe("t1", "c1")
	defer sub.Close()
	other := e.hub.Subscribe("t1", "c2")
	defer other.Close()

	if got := e.metric("platform_stream_subscribers"); got != 2 {
		t.Errorf("platform_stream_subscribers = %v, want 2", got)
	}

	// Unsigned: the signature headers stripped.
	unsigned := e.record(event("t1", "c1", "unsigned"))
	var headers []kgo.RecordHeader
	for _, h := range unsigned.Headers {
		if h.Key != envelope.HeaderKeyID && h.Key != envelope.HeaderSignature {
			headers = append(headers, h)
		}
	}
	unsigned.Headers = headers

	// Signed with a key the hub does not know.
	rogue, err := envelope.NewKeys("rogue", "R0gue-signing-secret-9f8e7d6c5b4a3210zyxw")
	if err != nil {
		t.Fatal(err)
	}
	forged, err := envelope.EventRecord(event("t1", "c1", "rogue"), rogue)
	if err != nil {
		t.Fatal(err)
	}

	// Signed by the right key, then its value replaced.
	tampered := e.record(event("t1", "c1", "tampered"))
	if tampered.Value, err = proto.Marshal(event("t1", "c1", "tampered-forged")); err != nil {
		t.Fatal(err)
	}

	// Signed by the right key, but the value is not an event.
	garbage := &kgo.Record{Topic: kafka.TopicEvents, Key: []byte("c1"), Value: []byte{0xff, 0xff, 0xff, 0xff},
		Headers: []kgo.RecordHeader{{Key: envelope.HeaderContentType, Value: []byte(envelope.ContentTypeProtobuf)}}}
	if err := e.keys.Sign(garbage); err != nil {
		t.Fatal(err)
	}

	// Same tenant, other conversation; and another tenant's conversation of the same id.
	otherConv := e.record(event("t1", "c2", "other-conversation"))
	otherTenant := e.record(event("t2", "c1", "other-tenant"))

	genuineEvent := event("t1", "c1", "genuine")
	genuine := e.record(genuineEvent)

	e.produce(unsigned, forged, tampered, garbage, otherConv, otherTenant, genuine)

	got := receive(t, sub)
	if !proto.Equal(got, genuineEvent) {
		t.Fatalf("subscriber got %v, want the genuine event %v", got, genuineEvent)
	}
	if ev := receive(t, other); ev.GetId() != "other-conversation" {
		t.Errorf("subscriber of t1/c2 got %q, want other-conversation", ev.GetId())
	}

	want := map[string]float64{
		stream.RejectUnsigned: 1, stream.RejectUnknownKey: 1, stream.RejectBadSignature: 1, stream.RejectUndecodable: 1,
	}
	eventually(t, func() bool {
		for reason, n := range want {
			if e.rejected(reason) != n {
				return false
			}
		}
		return true
	}, func() string {
		got := map[string]float64{}
		for reason := range want {
			got[reason] = e.rejected(reason)
		}
		return fmt.Sprintf("platform_stream_events_rejected_total = %v, want %v", got, want)
	})

	// Every record produced is now accounted for (dispatched, or counted as rejected; t2/c1 has no
	// subscriber): nothing else may be waiting for t1/c1.
	select {
	case ev, ok := <-sub.C:
		if ok {
			t.Errorf("subscriber of t1/c1 also got %v", ev)
		} else {
			t.Errorf("subscription of t1/c1 ended: %v", sub.Err())
		}
	default:
	}
}

func TestHubEvictsSlowSubscriber(t *testing.T) {
	e := startHub(t)
	slow := e.hub.Subscribe("t1", "c1") // never read until it ends
	fast := e.hub.Subscribe("t1", "c1") // read all along
	defer fast.Close()

	const buffer = 256
	var rs []*kgo.Record
	for i := range buffer {
		rs = append(rs, e.record(event("t1", "c1", fmt.Sprintf("e%03d", i))))
	}
	e.produce(rs...)
	for i := range buffer {
		if ev := receive(t, fast); ev.GetId() != fmt.Sprintf("e%03d", i) {
			t.Fatalf("fast subscriber got %q as event %d", ev.GetId(), i)
		}
	}
	// The hub handed each of those events to slow as well, filling its buffer; one more overflows it.
	e.produce(e.record(event("t1", "c1", "overflow")))
	if ev := receive(t, fast); ev.GetId() != "overflow" {
		t.Fatalf("fast subscriber got %q, want overflow", ev.GetId())
	}

	buffered, err := ended(t, slow)
	if !errors.Is(err, stream.ErrTooSlow) {
		t.Fatalf("slow subscription ended with %v, want ErrTooSlow", err)
	}
	if buffered != buffer {
		t.Errorf("slow subscription kept %d events, want the %d it buffered", buffered, buffer)
	}
	if got := e.metric("platform_stream_slow_subscribers_dropped_total"); got != 1 {
		t.Errorf("platform_stream_slow_subscribers_dropped_total = %v, want 1", got)
	}
	if got := e.metric("platform_stream_subscribers"); got != 1 {
		t.Errorf("platform_stream_subscribers = %v, want 1 (the fast one)", got)
	}
	slow.Close() // harmless after eviction
	if got := e.metric("platform_stream_subscribers"); got != 1 {
		t.Errorf("platform_stream_subscribers after closing the evicted subscription = %v, want 1", got)
	}
}

func TestHubCloseEndsSubscriptions(t *testing.T) {
	e := startHub(t)
	a := e.hub.Subscribe("t1", "c1")
	b := e.hub.Subscribe("t2", "c9")
	unsubscribed := e.hub.Subscribe("t1", "c1")
	unsubscribed.Close()
	if _, err := ended(t, unsubscribed); err != nil {
		t.Errorf("subscription closed by its owner ended with %v, want nil", err)
	}

	e.hub.Close()
	for _, s := range []*stream.Subscription{a, b} {
		if _, err := ended(t, s); !errors.Is(err, stream.ErrClosed) {
			t.Errorf("subscription ended with %v, want ErrClosed", err)
		}
	}
	if err := unsubscribed.Err(); err != nil {
		t.Errorf("Close of the hub changed an ended subscription's error to %v", err)
	}
	if got := e.metric("platform_stream_subscribers"); got != 0 {
		t.Errorf("platform_stream_subscribers = %v, want 0", got)
	}

	late := e.hub.Subscribe("t1", "c1")
	if _, err := ended(t, late); !errors.Is(err, stream.ErrClosed) {
		t.Errorf("subscription to a closed hub ended with %v, want ErrClosed", err)
	}
	e.hub.Close() // idempotent

	select {
	case <-e.ran:
	case <-time.After(waitFor):
		t.Fatal("Run did not return after Close")
	}
}

func TestHubRunEndsSubscriptionsWhenContextEnds(t *testing.T) {
	e := startHub(t)
	s := e.hub.Subscribe("t1", "c1")
	e.stop()
	if _, err := ended(t, s); !errors.Is(err, stream.ErrClosed) {
		t.Errorf("subscription ended with %v, want ErrClosed", err)
	}
	select {
	case <-e.ran:
	case <-time.After(waitFor):
		t.Fatal("Run did not return after its context ended")
	}
}

func TestNewHubRefusesNilKeys(t *testing.T) {
	if _, err := stream.NewHub([]kgo.Opt{kgo.SeedBrokers("127.0.0.1:1")}, nil, prometheus.NewRegistry(), slog.Default()); err == nil {
		t.Fatal("NewHub with no keys succeeded")
	}
}

func TestNewHubRefusesDuplicateMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	keys := testenv.SigningKeys(t)
	h, err := stream.NewHub([]kgo.Opt{kgo.SeedBrokers("127.0.0.1:1")}, keys, reg, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if _, err := stream.NewHub([]kgo.Opt{kgo.SeedBrokers("127.0.0.1:1")}, keys, reg, slog.Default()); err == nil {
		t.Fatal("a second hub registered the same metrics")
	}
}
