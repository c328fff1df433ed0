package dlq_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kgo"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/dlq"
	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/testenv"
)

// What a DLQ record claims is not trusted: anyone who can produce to messages.dlq can write one.
//   - An entry naming messages.events (which stream subscribers read) as its original topic is parked and
//     never republished there, by the scheduler or by an operator's retry.
//   - Its tenant comes from a payload whose signature verifies, never from dlq.tenant_id.
//   - A truncated entry (an oversized record) is parked and cannot be retried.
//
// Metric labels taken from its headers stay bounded.
func TestForgedDeadLettersGoNowhere(t *testing.T) {
	e := newEnv(t)
	h := func(k, v string) kgo.RecordHeader { return kgo.RecordHeader{Key: k, Value: []byte(v)} }
	ev := &platformv1.Event{Id: "01ARZ3NDEKTSV4RRFFQ69G5FAV", Type: platformv1.EventType_EVENT_TYPE_MESSAGE_PERSISTED, TenantId: "t1",
		ConversationId: "c1", Payload: &platformv1.Event_Message{Message: &platformv1.Message{Id: "01ARZ3NDEKTSV4RRFFQ69G5FAV", Body: "nobody sent this"}}}
	evRec, err := envelope.EventRecord(ev, testKeys) // even a genuinely signed event
	if err != nil {
		t.Fatal(err)
	}
	toEvents := &kgo.Record{Topic: kafka.TopicDLQ, Key: []byte("c1"), Value: evRec.Value, Headers: append(evRec.Headers,
		h(envelope.HeaderDLQErrorClass, "transient"), h(envelope.HeaderDLQStage, "persist"), h(envelope.HeaderDLQAttempts, "1"),
		h(envelope.HeaderDLQOriginalTopic, kafka.TopicEvents), h(envelope.HeaderDLQOriginalPartition, "0"),
		h(envelope.HeaderDLQOriginalOffset, "5"), h(envelope.HeaderDLQTenantID, "t1"))}
	// An unsigned payload claiming tenant t2, and a header saying so too.
	claim := dlqRecord(1, 6, 1, dlq.ClassPermanent, "validate", "t2", []byte("c2"), mustMarshal(t, inboundMsg("t2", "hi")))
	var stripped []kgo.RecordHeader
	for _, hd := range claim.Headers {
		if hd.Key != envelope.HeaderKeyID && hd.Key != envelope.HeaderSignature {
			stripped = append(stripped, hd)
		}
	}
	claim.Headers = stripped
	truncated := dlqRecord(2, 7, 1, dlq.ClassTransient, "authenticate", "", []byte("c3"), []byte("xxxx"))
	truncated.Headers = append(truncated.Headers, h(envelope.HeaderDLQTruncated, "true"), h(envelope.HeaderDLQOriginalSize, "999800"),
		h(envelope.HeaderDLQOriginalSHA256, strings.Repeat("ab", 32)))
	weird := dlqRecord(2, 8, 1, "catastrophic", "made-up-stage-"+strings.Repeat("z", 40), "", []byte("c4"), []byte("y"))
	e.produce(toEvents, claim, truncated, weird)

	m := newMetrics(t)
	stop := e.startProcessor(dlq.Config{GroupID: "dlq-forged", Policy: dlq.Policy{InitialDelay: time.Millisecond}}, m)
	testenv.Eventually(t, "4 entries", 0, func() bool { return e.count(store.DeadLetterFilter{}) == 4 })
	stop()

	fwd := e.get("messages.events-0-5-1")
	if fwd.Status != store.DeadLetterParked || !strings.Contains(fwd.Note, "not a retry target") {
		t.Errorf("entry for messages.events: %s %q; want parked, not a retry target", fwd.Status, fwd.Note)
	}
	if c := e.get("messages.inbound-1-6-1"); c.TenantID != "" || c.MessageID != "" {
		t.Errorf("unsigned payload attributed to tenant %q, message %q; want neither", c.TenantID, c.MessageID)
	}
	tr := e.get("messages.inbound-2-7-1")
	if tr.Status != store.DeadLetterParked || !tr.PayloadTruncated || tr.OriginalSize != 999800 || tr.OriginalSHA256 != strings.Repeat("ab", 32) {
		t.Errorf("truncated entry: %+v", tr)
	}
	if got := testutil.ToFloat64(m.RecordsIn.WithLabelValues("other", "other")); got != 1 {
		t.Errorf("records_in_total{stage=other,class=other} = %v, want 1 (labels bounded)", got)
	}

	// Neither the operators' retries nor the scheduler send them anywhere.
	r := dlq.NewRetrier(e.st, e.producer, m, testLogger(t), dlq.Config{})
	for _, id := range []string{fwd.ID, tr.ID} {
		if _, err := r.RetryNow(testCtx(t), id, "operator test"); !errors.Is(err, dlq.ErrNotRetryable) {
			t.Errorf("RetryNow(%s) = %v, want ErrNotRetryable", id, err)
		}
	}
	n, err := r.RetryMatching(testCtx(t), store.DeadLetterFilter{}, "operator test")
	if err != nil || n != 2 { // the two retryable-looking inbound entries (claim, weird): they go back and fail again
		t.Errorf("RetryMatching = %d, %v; want 2 (never the events or truncated entries)", n, err)
	}
	// (A pending entry for messages.events stored before the allow-list existed is parked by the scheduler:
	// TestDeadLetterSchedulerParksExhaustedAndKeepsFailedRepublishes.)
	s, err := dlq.NewScheduler(dlq.Config{}, e.st, e.producer, m, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.RunOnce(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if n := e.endOffsets(kafka.TopicEvents); n != 0 {
		t.Fatalf("%d records republished to %s, want 0", n, kafka.TopicEvents)
	}
}

// DirectWriter stores a dead-letter record as the processor would, once.
func TestDirectWriterStoresLikeTheProcessor(t *testing.T) {
	e := newEnv(t)
	in := inboundMsg("t1", "kafka refused my dead letter")
	rec := dlqRecord(4, 9, 1, dlq.ClassPermanent, "validate", "t1", []byte("c1"), mustMarshal(t, in))
	m := newMetrics(t)
	w := dlq.NewDirectWriter(e.st, testKeys, dlq.Policy{}, m, testLogger(t))
	for range 2 {
		if err := w.StoreRecords(testCtx(t), []*kgo.Record{rec}); err != nil {
			t.Fatal(err)
		}
	}
	d := e.get("messages.inbound-4-9-1")
	if d.Status != store.DeadLetterParked || d.TenantID != "t1" || d.MessageID != in.GetId() || d.Stage != "validate" {
		t.Errorf("entry: %+v", d)
	}
	if e.count(store.DeadLetterFilter{}) != 1 || testutil.ToFloat64(m.Duplicates) != 1 {
		t.Errorf("%d entries, %v duplicates; want 1 and 1", e.count(store.DeadLetterFilter{}), testutil.ToFloat64(m.Duplicates))
	}
}
