package pipeline

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/resources"
)

func TestMentions(t *testing.T) {
	long := strings.Repeat("a", MaxMentionBytes)
	for _, c := range []struct {
		body string
		want []string
	}{
		{"hello", nil},
		{"@alice hi", []string{"alice"}},
		{"hi @alice, @bob and @alice again", []string{"alice", "bob"}},
		{"thanks @bob.", []string{"bob"}},
		{"ask @first.last-name-", []string{"first.last-name"}},
		{"mail bob@example.com or @@carol", nil},
		{"(@dave) [@erin]", []string{"dave", "erin"}},
		{"@Émilie et @ZOË", []string{"Émilie", "ZOË"}},
		{"@ alone and @. and @-", nil},
		{"@" + long + " and @" + long + "b", []string{long}},
		{"@a@b", []string{"a"}},
		{"x@y @z", []string{"z"}},
	} {
		if got := Mentions(c.body); !slices.Equal(got, c.want) {
			t.Errorf("Mentions(%q) = %q, want %q", c.body, got, c.want)
		}
	}
	many := strings.Repeat("@u ", 10)
	for i := range 2 * MaxMentions {
		many += "@user" + strconv.Itoa(i) + " "
	}
	if got := Mentions(many); len(got) != MaxMentions {
		t.Errorf("%d mentions kept, want %d", len(got), MaxMentions)
	}
}

func TestTransform(t *testing.T) {
	in := validInbound()
	in.Body = "\t  Cafe\u0301 @bob \n"
	items := []*Item{{Inbound: in}}
	transformStage{}.Process(context.Background(), items)
	m := items[0].Message
	if items[0].Failed() || m.Body != "Caf\u00e9 @bob" || !slices.Equal(m.Mentions, []string{"bob"}) || m.ID != in.GetId() ||
		!m.CreateTime.Equal(in.GetSendTime().AsTime()) || m.Metadata["k"] != "v" || m.RequestID != in.GetRequestId() {
		t.Fatalf("transformed = %+v (err %v)", m, items[0].Err())
	}
	// NFC can lengthen a body past the limit the API checked before normalisation.
	in = validInbound()
	in.Body = strings.Repeat("\u0958", resources.MaxBodyBytes/3) // 3 bytes, NFC-decomposes to 6
	items = []*Item{{Inbound: in}}
	transformStage{}.Process(context.Background(), items)
	if !items[0].Failed() || items[0].Class() != Permanent {
		t.Fatalf("oversized after NFC: failed %v class %q", items[0].Failed(), items[0].Class())
	}
}

func validInbound() *platformv1.InboundMessage {
	in := inbound("t1", "c1", "alice", "hello @bob")
	in.Metadata = map[string]string{"k": "v"}
	return in
}

func TestValidate(t *testing.T) {
	bad := func(edit func(*platformv1.InboundMessage)) *platformv1.InboundMessage {
		in := validInbound()
		edit(in)
		return in
	}
	if err := validate(validInbound()); err != nil {
		t.Fatalf("valid envelope: %v", err)
	}
	meta := map[string]string{}
	for i := range resources.MaxMetadata + 1 {
		meta[strconv.Itoa(i)] = "v"
	}
	for name, in := range map[string]*platformv1.InboundMessage{
		"id":             bad(func(m *platformv1.InboundMessage) { m.Id = "x" }),
		"tenant":         bad(func(m *platformv1.InboundMessage) { m.TenantId = "" }),
		"conversation":   bad(func(m *platformv1.InboundMessage) { m.ConversationId = strings.Repeat("c", MaxIDLen+1) }),
		"sender":         bad(func(m *platformv1.InboundMessage) { m.SenderId = "a\nb" }),
		"blank body":     bad(func(m *platformv1.InboundMessage) { m.Body = " \t\n" }),
		"long body":      bad(func(m *platformv1.InboundMessage) { m.Body = strings.Repeat("x", resources.MaxBodyBytes+1) }),
		"metadata count": bad(func(m *platformv1.InboundMessage) { m.Metadata = meta }),
		"metadata key":   bad(func(m *platformv1.InboundMessage) { m.Metadata = map[string]string{"": "v"} }),
		"metadata value": bad(func(m *platformv1.InboundMessage) {
			m.Metadata = map[string]string{"k": strings.Repeat("v", resources.MaxMetadataValue+1)}
		}),
		"client id": bad(func(m *platformv1.InboundMessage) {
			m.ClientMessageId = strings.Repeat("c", resources.MaxClientMessageIDLen+1)
		}),
		"send time": bad(func(m *platformv1.InboundMessage) { m.SendTime.Nanos = -1 }),
	} {
		if err := validate(in); !errors.Is(err, errInvalid) {
			t.Errorf("%s: validate = %v, want an invalid envelope", name, err)
		}
	}
	if err := validate(bad(func(m *platformv1.InboundMessage) { m.Body = strings.Repeat("é", resources.MaxBodyBytes/2) })); err != nil {
		t.Errorf("body of exactly %d bytes: %v", resources.MaxBodyBytes, err)
	}
}

// scriptStage fails items as its script says, per call (1-based) and item.
type scriptStage struct {
	name   string
	script func(call int, it *Item) (Class, error)
	mu     sync.Mutex
	calls  int
	seen   [][]*Item
}

func (s *scriptStage) Name() string { return s.name }

func (s *scriptStage) Process(_ context.Context, batch []*Item) {
	s.mu.Lock()
	s.calls++
	call := s.calls
	s.seen = append(s.seen, slices.Clone(batch))
	s.mu.Unlock()
	for _, it := range batch {
		if class, err := s.script(call, it); err != nil {
			it.Fail(class, err)
		}
	}
}

func testRunner(t *testing.T, cfg Config, stages ...Stage) *runner {
	t.Helper()
	cfg.RetryInitial, cfg.RetryMax = time.Millisecond, 2*time.Millisecond
	r, err := newRunner(stages, cfg.withDefaults(), prometheus.NewRegistry(), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func testItems(n int) []*Item {
	items := make([]*Item, n)
	for i := range items {
		items[i] = newItem(&kgo.Record{Topic: kafka.TopicInbound, Offset: int64(i)})
	}
	return items
}

func TestRunnerRetriesOnlyTransientFailures(t *testing.T) {
	items := testItems(3)
	flaky := &scriptStage{name: "flaky", script: func(call int, it *Item) (Class, error) {
		switch {
		case it == items[0]:
			return Permanent, errors.New("bad record")
		case it == items[1] && call <= 2:
			return Transient, errors.New("store down")
		}
		return "", nil
	}}
	after := &scriptStage{name: "after", script: func(int, *Item) (Class, error) { return "", nil }}
	r := testRunner(t, Config{}, flaky, after)
	if err := r.process(context.Background(), items); err != nil {
		t.Fatal(err)
	}
	if flaky.calls != 3 || len(flaky.seen[1]) != 1 || flaky.seen[1][0] != items[1] {
		t.Fatalf("flaky stage: %d calls, retry batches %v; want 3 calls retrying only the transient item", flaky.calls, flaky.seen)
	}
	if !items[0].Failed() || items[0].Class() != Permanent || items[0].Stage() != "flaky" || items[0].attempts != 1 {
		t.Fatalf("permanent item: failed %v class %q stage %q attempts %d", items[0].Failed(), items[0].Class(), items[0].Stage(), items[0].attempts)
	}
	if items[1].Failed() || items[2].Failed() || items[1].attempts != 2 {
		t.Fatalf("retried item failed %v (attempts %d), other failed %v", items[1].Failed(), items[1].attempts, items[2].Failed())
	}
	if len(after.seen) != 1 || !slices.Equal(after.seen[0], items[1:]) {
		t.Fatalf("the next stage got %v, want the two good items in order", after.seen)
	}
}

func TestRunnerRetryTimeoutDeadLettersAsTransient(t *testing.T) {
	items := testItems(1)
	down := &scriptStage{name: "down", script: func(int, *Item) (Class, error) { return Transient, errors.New("still down") }}
	r := testRunner(t, Config{TransientRetryTimeout: time.Minute}, down)
	now := time.Unix(1000, 0)
	r.now = func() time.Time { now = now.Add(20 * time.Second); return now }
	if err := r.process(context.Background(), items); err != nil {
		t.Fatal(err)
	}
	if !items[0].Failed() || items[0].Class() != Transient || down.calls != 4 || items[0].attempts != 4 {
		t.Fatalf("failed %v class %q after %d calls, %d attempts; want transient after 4", items[0].Failed(), items[0].Class(), down.calls, items[0].attempts)
	}
}

func TestRunnerAbandonsOnShutdown(t *testing.T) {
	items := testItems(2)
	ctx, cancel := context.WithCancel(context.Background())
	down := &scriptStage{name: "down", script: func(call int, _ *Item) (Class, error) {
		if call == 3 {
			cancel()
		}
		return Transient, errors.New("down")
	}}
	r := testRunner(t, Config{}, down)
	if err := r.process(ctx, items); !errors.Is(err, context.Canceled) {
		t.Fatalf("process = %v, want abandoned with context.Canceled", err)
	}
}

func TestDeadLetterRecord(t *testing.T) {
	in := validInbound()
	rec := &kgo.Record{Topic: kafka.TopicInbound, Partition: 4, Offset: 77, Key: []byte("c1"), Value: mustMarshal(in), Headers: []kgo.RecordHeader{
		kgoHeader("x-request-id", "r1"), kgoHeader(kafka.HeaderDLQAttempts, "4"), kgoHeader(kafka.HeaderDLQError, "old"),
		kgoHeader(kafka.HeaderDLQFirstFailedAt, "2030-01-02T03:04:05.006Z"),
	}}
	it := newItem(rec)
	it.Inbound = in
	it.Fail(Permanent, errors.New(strings.Repeat("é", maxErrorHeader)))
	it.stage, it.attempts = StageAuthorize, it.attempts+1
	d := deadLetterRecord(it)
	h, keys := headers(d)
	want := map[string]string{
		"x-request-id": "r1", kafka.HeaderDLQAttempts: "5", kafka.HeaderDLQStage: StageAuthorize, kafka.HeaderDLQErrorClass: "permanent",
		kafka.HeaderDLQOriginalTopic: kafka.TopicInbound, kafka.HeaderDLQOriginalPartition: "4", kafka.HeaderDLQOriginalOffset: "77",
		kafka.HeaderDLQFirstFailedAt: "2030-01-02T03:04:05.006Z", kafka.HeaderDLQTenantID: "t1",
	}
	for k, v := range want {
		if h[k] != v {
			t.Errorf("%s = %q, want %q", k, h[k], v)
		}
	}
	if len(keys) != 10 || d.Topic != kafka.TopicDLQ || string(d.Key) != "c1" {
		t.Errorf("headers %v, topic %s, key %s", keys, d.Topic, d.Key)
	}
	if e := h[kafka.HeaderDLQError]; len(e) > maxErrorHeader+len("…") || !strings.HasSuffix(e, "…") || strings.ContainsRune(e, '\uFFFD') {
		t.Errorf("dlq.error not clipped cleanly: %d bytes", len(e))
	}
}

func TestConsumerSettings(t *testing.T) {
	p, err := New(Config{}, []string{"127.0.0.1:1"}, nil, nil, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for opt, want := range map[string]any{
		"ConsumerGroup":          DefaultGroupID,
		"DisableAutoCommit":      true,
		"BlockRebalanceOnPoll":   true,
		"FetchMaxBytes":          int32(DefaultFetchMaxBytes),
		"FetchMaxPartitionBytes": int32(DefaultFetchMaxPartitionBytes),
		"MaxConcurrentFetches":   DefaultMaxConcurrentFetches,
	} {
		if got := p.client.OptValue(opt); got != want {
			t.Errorf("%s = %v (%T), want %v (%T)", opt, got, got, want, want)
		}
	}
	balancers, _ := p.client.OptValue("Balancers").([]kgo.GroupBalancer)
	if len(balancers) != 1 || balancers[0].ProtocolName() != "cooperative-sticky" {
		t.Errorf("balancers = %v, want cooperative-sticky", balancers)
	}
}

// FuzzDeserializeValidate: whatever the bytes and content type, deserialize+validate never panic, and a
// record either comes out valid or fails permanently with a well-formed DLQ record.
func FuzzDeserializeValidate(f *testing.F) {
	valid := validInbound()
	json, err := protojson.Marshal(valid)
	if err != nil {
		f.Fatal(err)
	}
	noSender := proto.Clone(valid).(*platformv1.InboundMessage)
	noSender.SenderId = ""
	for _, seed := range []struct {
		data []byte
		ct   string
	}{
		{mustMarshal(valid), "application/x-protobuf"},
		{mustMarshal(valid), ""},
		{json, "application/json"},
		{json, "Application/JSON; charset=utf-8"},
		{json, "application/x-protobuf"},
		{mustMarshal(noSender), "application/protobuf"},
		{[]byte{}, ""},
		{[]byte{0xff, 0xff, 0x01}, "application/x-protobuf"},
		{[]byte(`{"body": "\ud800"}`), "application/json"},
		{[]byte(`{"id": "01ARZ3NDEKTSV4RRFFQ69G5FAV", "unknownField": 1}`), "application/json"},
		{[]byte("\x2a\x03\xe2\x28\xa1"), ""}, // body with invalid UTF-8
		{mustMarshal(valid), "text/plain"},
		{mustMarshal(valid), "application/json; charset"},
	} {
		f.Add(seed.data, seed.ct)
	}
	f.Fuzz(func(t *testing.T, data []byte, contentType string) {
		rec := &kgo.Record{Topic: kafka.TopicInbound, Partition: 1, Offset: 2, Value: data,
			Headers: []kgo.RecordHeader{kgoHeader(HeaderContentType, contentType)}}
		items := []*Item{newItem(rec)}
		r := testRunner(t, Config{}, deserializeStage{}, validateStage{})
		if err := r.process(context.Background(), items); err != nil {
			t.Fatalf("process: %v", err)
		}
		it := items[0]
		if !it.Failed() {
			if it.Inbound == nil || validate(it.Inbound) != nil {
				t.Fatal("passed without a valid envelope")
			}
			transformStage{}.Process(context.Background(), items) // must not panic either
			return
		}
		if it.Class() != Permanent || (it.Stage() != StageDeserialize && it.Stage() != StageValidate) {
			t.Fatalf("failed with class %q in stage %q, want permanent in deserialize or validate", it.Class(), it.Stage())
		}
		d := deadLetterRecord(it)
		h, _ := headers(d)
		for _, k := range []string{kafka.HeaderDLQError, kafka.HeaderDLQErrorClass, kafka.HeaderDLQStage, kafka.HeaderDLQAttempts, kafka.HeaderDLQOriginalTopic,
			kafka.HeaderDLQOriginalPartition, kafka.HeaderDLQOriginalOffset, kafka.HeaderDLQFirstFailedAt, kafka.HeaderDLQTenantID} {
			if _, ok := h[k]; !ok {
				t.Fatalf("dead letter lacks %s", k)
			}
		}
		if h[kafka.HeaderDLQAttempts] != "1" || h[kafka.HeaderDLQOriginalOffset] != "2" || string(d.Value) != string(data) {
			t.Fatalf("dead letter headers %v", h)
		}
		if _, err := time.Parse(time.RFC3339, h[kafka.HeaderDLQFirstFailedAt]); err != nil {
			t.Fatalf("first_failed_at: %v", err)
		}
	})
}
