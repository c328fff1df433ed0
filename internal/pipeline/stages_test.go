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
	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/kafka"
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
	transformStage{}.Process(context.Background(), &Batch{Items: items})
	m := items[0].Message
	if items[0].Failed() || m.Body != "Caf\u00e9 @bob" || !slices.Equal(m.Mentions, []string{"bob"}) || m.ID != in.GetId() ||
		!m.CreateTime.Equal(in.GetSendTime().AsTime()) || m.Metadata["k"] != "v" || m.RequestID != in.GetRequestId() {
		t.Fatalf("transformed = %+v (err %v)", m, items[0].Err())
	}
}

func validInbound() *platformv1.InboundMessage {
	in := inbound("t1", "c1", "alice", "hello @bob")
	in.Metadata = map[string]string{"k": "v"}
	return in
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

func (s *scriptStage) Process(_ context.Context, b *Batch) {
	batch := b.Items
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
	if err := r.process(context.Background(), &Batch{Items: items}); err != nil {
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
	if err := r.process(context.Background(), &Batch{Items: items}); err != nil {
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
	if err := r.process(ctx, &Batch{Items: items}); !errors.Is(err, context.Canceled) {
		t.Fatalf("process = %v, want abandoned with context.Canceled", err)
	}
}

func TestDeadLetterRecord(t *testing.T) {
	in := validInbound()
	rec := &kgo.Record{Topic: kafka.TopicInbound, Partition: 4, Offset: 77, Key: []byte("c1"), Value: mustMarshal(in), Headers: []kgo.RecordHeader{
		kgoHeader("x-request-id", "r1"), kgoHeader(envelope.HeaderDLQAttempts, "4"), kgoHeader(envelope.HeaderDLQError, "old"),
		kgoHeader(envelope.HeaderDLQFirstFailedAt, "2030-01-02T03:04:05.006Z"),
	}}
	it := newItem(rec)
	it.Inbound = in
	it.Fail(Permanent, errors.New(strings.Repeat("é", 1024)))
	it.stage, it.attempts = StageAuthorize, it.attempts+1
	d := deadLetterRecord(it)
	h, keys := headers(d)
	want := map[string]string{
		"x-request-id": "r1", envelope.HeaderDLQAttempts: "5", envelope.HeaderDLQStage: StageAuthorize, envelope.HeaderDLQErrorClass: "permanent",
		envelope.HeaderDLQOriginalTopic: kafka.TopicInbound, envelope.HeaderDLQOriginalPartition: "4", envelope.HeaderDLQOriginalOffset: "77",
		envelope.HeaderDLQFirstFailedAt: "2030-01-02T03:04:05.006Z", envelope.HeaderDLQTenantID: "t1",
	}
	for k, v := range want {
		if h[k] != v {
			t.Errorf("%s = %q, want %q", k, h[k], v)
		}
	}
	if len(keys) != 10 || d.Topic != kafka.TopicDLQ || string(d.Key) != "c1" {
		t.Errorf("headers %v, topic %s, key %s", keys, d.Topic, d.Key)
	}
	if e := h[envelope.HeaderDLQError]; len(e) > 1024+len("…") || !strings.HasSuffix(e, "…") || strings.ContainsRune(e, '\uFFFD') {
		t.Errorf("dlq.error not clipped cleanly: %d bytes", len(e))
	}
}

func TestConsumerSettings(t *testing.T) {
	p, err := New(Config{}, Deps{Kafka: []kgo.Opt{kgo.SeedBrokers("127.0.0.1:1")}, Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for opt, want := range map[string]any{
		"ConsumerGroup":          DefaultGroupID,
		"DisableAutoCommit":      true,
		"BlockRebalanceOnPoll":   false, // revocations wait for the polls in hand instead (tracker)
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

// FuzzAuthenticateDecode: whatever the bytes, content type and signature, authenticate+deserialize+validate
// never panic; a record passes only when it is signed with the platform's key and holds a valid envelope;
// one that fails, fails permanently with a well-formed DLQ record.
func FuzzAuthenticateDecode(f *testing.F) {
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
		for _, sign := range []byte{0, 1, 2} {
			f.Add(seed.data, seed.ct, sign)
		}
	}
	keys := testKeys(f)
	other, err := envelope.NewKeys("other", "another-secret-nobody-shares-0123456789")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte, contentType string, sign byte) {
		rec := &kgo.Record{Topic: kafka.TopicInbound, Partition: 1, Offset: 2, Key: []byte("c1"), Value: data,
			Headers: []kgo.RecordHeader{kgoHeader(envelope.HeaderContentType, contentType)}}
		switch sign % 3 {
		case 1:
			if err := keys.Sign(rec); err != nil {
				t.Fatal(err)
			}
		case 2:
			if err := other.Sign(rec); err != nil {
				t.Fatal(err)
			}
		}
		items := []*Item{newItem(rec)}
		r := testRunner(t, Config{}, authenticateStage{keys: keys}, deserializeStage{}, validateStage{})
		if err := r.process(context.Background(), &Batch{Items: items}); err != nil {
			t.Fatalf("process: %v", err)
		}
		it := items[0]
		if !it.Failed() {
			if sign%3 != 1 {
				t.Fatal("a record not signed with the platform's key passed authenticate")
			}
			if it.Inbound == nil || envelope.Validate(it.Inbound) != nil {
				t.Fatal("passed without a valid envelope")
			}
			transformStage{}.Process(context.Background(), &Batch{Items: items}) // must not panic either
			return
		}
		if sign%3 != 1 && it.Stage() != StageAuthenticate {
			t.Fatalf("unsigned or foreign-signed record failed in stage %q, want authenticate", it.Stage())
		}
		if it.Class() != Permanent || !slices.Contains([]string{StageAuthenticate, StageDeserialize, StageValidate}, it.Stage()) {
			t.Fatalf("failed with class %q in stage %q, want permanent in authenticate, deserialize or validate", it.Class(), it.Stage())
		}
		d := deadLetterRecord(it)
		h, _ := headers(d)
		for _, k := range []string{envelope.HeaderDLQError, envelope.HeaderDLQErrorClass, envelope.HeaderDLQStage, envelope.HeaderDLQAttempts, envelope.HeaderDLQOriginalTopic,
			envelope.HeaderDLQOriginalPartition, envelope.HeaderDLQOriginalOffset, envelope.HeaderDLQFirstFailedAt, envelope.HeaderDLQTenantID} {
			if _, ok := h[k]; !ok {
				t.Fatalf("dead letter lacks %s", k)
			}
		}
		if h[envelope.HeaderDLQAttempts] != "1" || h[envelope.HeaderDLQOriginalOffset] != "2" || string(d.Value) != string(data) {
			t.Fatalf("dead letter headers %v", h)
		}
		if _, err := time.Parse(time.RFC3339, h[envelope.HeaderDLQFirstFailedAt]); err != nil {
			t.Fatalf("first_failed_at: %v", err)
		}
	})
}
