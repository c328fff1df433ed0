package pipeline

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/v2/bson"
	"google.golang.org/protobuf/proto"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/kafka"
)

// TestEndToEnd: 2,000 messages over 8 conversations, as SendMessage publishes them (some in protojson,
// some from a `service` sender that is no member), are stored exactly once, in send order per
// conversation, each with one MESSAGE_PERSISTED event, and nothing is dead-lettered.
func TestEndToEnd(t *testing.T) {
	e := newEnv(t)
	w := e.workload("t1", 8, 3)
	const n = 2000
	recs := w.next(n - 4)
	// A protojson envelope, a service sender without membership, and one that shows the transform.
	c := w.convs[0]
	extra := []*platformv1.InboundMessage{
		inbound(c.TenantID, c.ID, c.CreatorID, "sent as protojson"),
		inbound(c.TenantID, c.ID, "billing-bot", "sent by a service", "service"),
		inbound(c.TenantID, c.ID, "user-0-1", "  Cafe\u0301 for @user-0-2 and @bob. Mail me: x@y.z \n"),
		inbound(c.TenantID, c.ID, c.CreatorID, "last"),
	}
	w.msgs = append(w.msgs, extra...)
	recs = append(recs, record(extra[0], true), record(extra[1], false), record(extra[2], false), record(extra[3], false))
	e.produce(recs...)

	start := time.Now()
	p := e.start(Config{})
	e.waitStored(n)
	elapsed := time.Since(start)
	t.Logf("%d messages stored in %v (%.0f messages/s, pipeline start included)", n, elapsed.Round(time.Millisecond), n/elapsed.Seconds())
	// Lag is measured from the committed offsets: it reaches 0 once the last batch is committed.
	deadline := time.Now().Add(10 * time.Second)
	for p.series("platform_pipeline_consumer_lag_records") == 0 || p.metric("platform_pipeline_consumer_lag_records") != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("consumer lag: %d partitions reported, total %v; want partitions reported and 0 left once all is stored",
				p.series("platform_pipeline_consumer_lag_records"), p.metric("platform_pipeline_consumer_lag_records"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := p.stop(); err != nil {
		t.Fatalf("graceful stop: %v", err)
	}

	// The transformed body was checked against the sent one by checkStored, so fix the expectation first.
	var doc storedDoc
	if err := e.messagesCollection().FindOne(testCtx(t), bson.D{{Key: "_id", Value: extra[2].GetId()}}).Decode(&doc); err != nil {
		t.Fatal(err)
	}
	if want := "Caf\u00e9 for @user-0-2 and @bob. Mail me: x@y.z"; doc.Body != want || !slices.Equal(doc.Mentions, []string{"user-0-2", "bob"}) {
		t.Fatalf("transformed message = %q mentions %q; want %q mentions [user-0-2 bob]", doc.Body, doc.Mentions, want)
	}
	extra[2].Body = doc.Body
	e.checkStored(w)
	e.checkEvents(w, true)
	if got := e.dlqCount(); got != 0 {
		t.Fatalf("%d dead letters, want 0", got)
	}
	if got := p.metric("platform_pipeline_messages_total", "result", "stored"); got != n {
		t.Fatalf("messages_total{stored} = %v, want %d", got, n)
	}
	if got := p.metric("platform_bulk_writer_batch_size"); got == 0 {
		t.Fatal("the bulk writer recorded no batch")
	}
	t.Logf("bulk inserts: %v for %d messages; polled batches: %v",
		p.metric("platform_bulk_writer_batch_size"), n, p.metric("platform_pipeline_batch_records"))
}

// crashStage simulates the process dying right after persist on its nth call: the run's context is
// cancelled with no drain time, and the stage's items fail (nothing after persist happens for them).
type crashStage struct {
	at    int64
	calls atomic.Int64
	crash func()
}

func (*crashStage) Name() string { return "crash" }

func (s *crashStage) Process(_ context.Context, b *Batch) {
	batch := b.Items
	if s.calls.Add(1) != s.at {
		return
	}
	s.crash()
	for _, it := range batch {
		it.Fail(Transient, errors.New("process crashed"))
	}
}

// TestCrashMidBatch: the consumer dies mid-batch (stored, not notified, not committed), a new one takes
// over: every message is stored exactly once, none is lost, the crashed batch is redelivered (seen as
// duplicates) and every message still gets its event.
func TestCrashMidBatch(t *testing.T) {
	e := newEnv(t)
	w := e.workload("t1", 6, 2)
	const n = 1500
	e.produce(w.next(n)...)

	var first atomic.Pointer[running]
	crash := &crashStage{at: 4}
	crash.crash = func() {
		for first.Load() == nil { // start has not returned yet
			time.Sleep(time.Millisecond)
		}
		first.Load().cancel()
	}
	cfg := Config{MaxPollRecords: 200, DrainTimeout: time.Nanosecond, stages: func(s []Stage) []Stage {
		i := slices.IndexFunc(s, func(st Stage) bool { return st.Name() == StagePersist })
		return slices.Insert(s, i+1, Stage(crash))
	}}
	first.Store(e.start(cfg))
	if err := first.Load().wait(); err == nil {
		t.Fatal("crashed run returned no error: the batch was not abandoned")
	}
	stored, _ := e.messagesCollection().CountDocuments(testCtx(t), bson.D{})
	t.Logf("first consumer crashed after storing %d of %d messages", stored, n)
	if stored == 0 || stored == n {
		t.Fatalf("%d stored at the crash: want a crash mid-way", stored)
	}
	_ = first.Load().stop()

	second := e.start(Config{MaxPollRecords: 200})
	e.waitStored(n)
	if err := second.stop(); err != nil {
		t.Fatal(err)
	}
	e.checkStored(w)
	e.checkEvents(w, false)
	if got := second.metric("platform_pipeline_messages_total", "result", "duplicate"); got == 0 {
		t.Fatal("no duplicate after the crash: the crashed batch was committed, not redelivered")
	}
	if got := e.dlqCount(); got != 0 {
		t.Fatalf("%d dead letters, want 0", got)
	}
}

// TestRebalanceTwoConsumers: a second consumer joins the group while messages are produced, then the
// first leaves while more are produced: every message is stored exactly once and none is lost.
func TestRebalanceTwoConsumers(t *testing.T) {
	e := newEnv(t)
	w := e.workload("t1", 12, 2)
	cfg := Config{MaxPollRecords: 100}

	a := e.start(cfg)
	e.produce(w.next(500)...)
	e.waitStored(500)

	b := e.start(cfg)
	// Produce while the group rebalances, until the newcomer has stored some (it was assigned partitions;
	// the first member notices the rebalance at its next heartbeat, within seconds).
	ctx := testCtx(t)
	for b.metric("platform_pipeline_messages_total") == 0 {
		e.produce(w.next(10)...)
		select {
		case <-ctx.Done():
			t.Fatal("the second consumer never processed anything")
		case <-time.After(20 * time.Millisecond):
		}
	}
	e.produce(w.next(500)...)

	// The first leaves (gracefully) while more is produced.
	stopped := make(chan error, 1)
	go func() { stopped <- a.stop() }()
	e.produce(w.next(500)...)
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	e.produce(w.next(500)...)
	e.waitStored(int64(len(w.msgs)))
	if err := b.stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d messages: first consumer %v, second %v (duplicates %v)", len(w.msgs),
		a.metric("platform_pipeline_messages_total"), b.metric("platform_pipeline_messages_total"),
		a.metric("platform_pipeline_messages_total", "result", "duplicate")+b.metric("platform_pipeline_messages_total", "result", "duplicate"))
	e.checkStored(w)
	e.checkEvents(w, false)
	if got := e.dlqCount(); got != 0 {
		t.Fatalf("%d dead letters, want 0", got)
	}
}

// TestStoreOutage: FerretDB stops for a few seconds mid-load: consumption pauses and retries, nothing is
// dead-lettered, nothing is lost.
func TestStoreOutage(t *testing.T) {
	e := newEnv(t)
	w := e.workload("t1", 6, 2)
	// A stage attempt gives up after 3s (the driver would wait 5s to select a server), then retries. Not
	// much less: under the race detector the embedded FerretDB needs more than a second for a bulk insert.
	p := e.start(Config{StageTimeout: 3 * time.Second, RetryMax: 500 * time.Millisecond})
	e.produce(w.next(300)...)
	e.waitStored(300)

	e.mongo.Stop()
	e.produce(w.next(700)...)
	time.Sleep(3 * time.Second) // the outage
	e.mongo.Start()

	e.waitStored(int64(len(w.msgs)))
	if err := p.stop(); err != nil {
		t.Fatal(err)
	}
	if got := p.metric("platform_pipeline_stage_retries_total"); got == 0 {
		t.Fatal("no stage was retried: the outage was not noticed")
	}
	t.Logf("retries during the outage: %v", p.metric("platform_pipeline_stage_retries_total"))
	e.checkStored(w)
	e.checkEvents(w, false)
	if got := e.dlqCount(); got != 0 {
		t.Fatalf("%d dead letters, want 0", got)
	}
}

// tampered replaces r's value with m, keeping r's signature: the value no longer matches it.
func tampered(r *kgo.Record, m *platformv1.InboundMessage) *kgo.Record {
	r.Value = mustMarshal(m)
	return r
}

// foreignSigned re-signs r with a key the pipeline does not know.
func foreignSigned(t *testing.T, r *kgo.Record) *kgo.Record {
	k, err := envelope.NewKeys("rogue", "a-rogue-producer-secret-0123456789abcdef")
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Sign(r); err != nil {
		t.Fatal(err)
	}
	return r
}

// TestPermanentFailuresDeadLettered: each bad record becomes one DLQ record with the right headers, and
// the good ones around it (same partition) are stored.
func TestPermanentFailuresDeadLettered(t *testing.T) {
	e := newEnv(t)
	c := e.conversation("t1", "alice", "bob")
	archived := e.conversation("t1", "alice")
	if _, err := e.st.Conversations.Archive(testCtx(t), "t1", archived.ID); err != nil {
		t.Fatal(err)
	}
	other := e.conversation("t2", "carol")
	key := []byte(c.ID)
	good := func(body string) *kgo.Record { return record(inbound("t1", c.ID, "bob", body), false) }
	withKey := func(r *kgo.Record) *kgo.Record { r.Key = key; return signed(r) }

	invalid := inbound("t1", c.ID, "bob", "   ")
	badID := inbound("t1", c.ID, "bob", "hello")
	badID.Id = "not-a-ulid"
	retried := withKey(record(inbound("t1", c.ID, "", "no sender"), false))
	retried.Headers = append(retried.Headers,
		kgoHeader(envelope.HeaderDLQAttempts, "2"), kgoHeader(envelope.HeaderDLQFirstFailedAt, "2031-05-06T07:08:09.123Z"),
		kgoHeader(envelope.HeaderDLQStage, "validate"))
	type bad struct {
		rec    *kgo.Record
		stage  string
		tenant string
	}
	bads := []bad{
		{signed(&kgo.Record{Topic: kafka.TopicInbound, Key: key, Value: []byte{0xff, 0xff, 0x01}, Headers: []kgo.RecordHeader{kgoHeader("content-type", "application/x-protobuf"), kgoHeader("x-request-id", "r1")}}), StageDeserialize, ""},
		{signed(&kgo.Record{Topic: kafka.TopicInbound, Key: key, Value: []byte(`{"id": 3`), Headers: []kgo.RecordHeader{kgoHeader("content-type", "application/json; charset=utf-8")}}), StageDeserialize, ""},
		{signed(&kgo.Record{Topic: kafka.TopicInbound, Key: key, Value: mustMarshal(inbound("t1", c.ID, "bob", "x")), Headers: []kgo.RecordHeader{kgoHeader("content-type", "text/plain")}}), StageDeserialize, ""},
		// Not through the API: a non-member claiming the service role, and a record in a real member's name.
		{unsigned(record(inbound("t1", c.ID, "mallory", "I am a service", "service"), false)), StageAuthenticate, ""},
		{unsigned(record(inbound("t1", c.ID, "bob", "bob never sent this"), false)), StageAuthenticate, ""},
		{tampered(record(inbound("t1", c.ID, "bob", "signed"), false), inbound("t1", c.ID, "bob", "then changed")), StageAuthenticate, ""},
		{foreignSigned(t, record(inbound("t1", c.ID, "bob", "signed with a key we do not know"), false)), StageAuthenticate, ""},
		{record(invalid, false), StageValidate, "t1"},
		{record(badID, false), StageValidate, "t1"},
		{withKey(record(inbound("t1", c.ID, "mallory", "not a member"), false)), StageAuthorize, "t1"},
		{withKey(record(inbound("t1", c.ID, "alice", "from the owner, whatever its platform roles", "operator"), false)), "", ""}, // stored
		{withKey(record(inbound("t1", archived.ID, "alice", "to an archived conversation"), false)), StageTenant, "t1"},
		{withKey(record(inbound("t1", other.ID, "carol", "to another tenant's conversation"), false)), StageTenant, "t1"},
		{retried, StageValidate, "t1"},
	}
	var recs []*kgo.Record
	var goods []*kgo.Record
	for i, b := range bads {
		g := good("good " + strconv.Itoa(i))
		goods = append(goods, g)
		recs = append(recs, g, b.rec)
	}
	last := good("last")
	goods = append(goods, last)
	recs = append(recs, last)
	e.produce(recs...)

	p := e.start(Config{})
	wantDead := 0
	for _, b := range bads {
		if b.stage != "" {
			wantDead++
		}
	}
	dead := e.consume(kafka.TopicDLQ, func(r []*kgo.Record) bool { return len(r) >= wantDead })
	e.waitStored(int64(len(goods) + 1)) // the owner's message too
	if err := p.stop(); err != nil {
		t.Fatal(err)
	}
	if len(dead) != wantDead {
		t.Fatalf("%d dead letters, want %d", len(dead), wantDead)
	}
	byOffset := map[int64]*kgo.Record{}
	for _, d := range dead {
		h, _ := headers(d)
		off, _ := strconv.ParseInt(h[envelope.HeaderDLQOriginalOffset], 10, 64)
		byOffset[off] = d
	}
	for i, b := range bads {
		d, ok := byOffset[b.rec.Offset]
		if b.stage == "" {
			if ok {
				t.Errorf("bad %d: dead-lettered, want stored", i)
			}
			continue
		}
		if !ok {
			t.Fatalf("bad %d (offset %d): no dead letter", i, b.rec.Offset)
		}
		h, keys := headers(d)
		wantAttempts := "1"
		if b.rec == retried {
			wantAttempts = "3"
		}
		for k, want := range map[string]string{
			envelope.HeaderDLQStage: b.stage, envelope.HeaderDLQErrorClass: "permanent", envelope.HeaderDLQAttempts: wantAttempts,
			envelope.HeaderDLQOriginalTopic: kafka.TopicInbound, envelope.HeaderDLQOriginalPartition: strconv.Itoa(int(b.rec.Partition)),
			envelope.HeaderDLQTenantID: b.tenant,
		} {
			if h[k] != want {
				t.Errorf("bad %d: %s = %q, want %q (error %q)", i, k, h[k], want, h[envelope.HeaderDLQError])
			}
		}
		if h[envelope.HeaderDLQError] == "" {
			t.Errorf("bad %d: empty %s", i, envelope.HeaderDLQError)
		}
		ts, err := time.Parse(time.RFC3339, h[envelope.HeaderDLQFirstFailedAt])
		if err != nil {
			t.Errorf("bad %d: %s = %q: %v", i, envelope.HeaderDLQFirstFailedAt, h[envelope.HeaderDLQFirstFailedAt], err)
		}
		if b.rec == retried && !ts.Equal(time.Date(2031, 5, 6, 7, 8, 9, 123e6, time.UTC)) {
			t.Errorf("retried record: first_failed_at %v, want the one it carried", ts)
		}
		if string(d.Key) != string(b.rec.Key) || string(d.Value) != string(b.rec.Value) {
			t.Errorf("bad %d: dead letter key/value differ from the original", i)
		}
		for _, oh := range b.rec.Headers {
			if !slices.Contains(keys, oh.Key) {
				t.Errorf("bad %d: original header %s dropped", i, oh.Key)
			}
		}
		for _, k := range keys {
			if n := countKey(keys, k); n != 1 {
				t.Errorf("bad %d: header %s appears %d times", i, k, n)
			}
		}
	}
	for i, g := range goods {
		in := &platformv1.InboundMessage{}
		if err := proto.Unmarshal(g.Value, in); err != nil {
			t.Fatal(err)
		}
		if _, err := e.st.Messages.Get(testCtx(t), "t1", c.ID, in.GetId()); err != nil {
			t.Errorf("good %d not stored: %v", i, err)
		}
	}
	if got := p.metric("platform_pipeline_dead_letters_total", "class", "permanent"); got != float64(wantDead) {
		t.Errorf("dead_letters_total = %v, want %d", got, wantDead)
	}
}

func kgoHeader(k, v string) kgo.RecordHeader { return kgo.RecordHeader{Key: k, Value: []byte(v)} }

func countKey(keys []string, k string) int {
	n := 0
	for _, x := range keys {
		if x == k {
			n++
		}
	}
	return n
}
