package envelope

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/msgplatform/platform/internal/kafka"
)

// testTime has milliseconds only, so it survives DLQTimeLayout unchanged.
var testTime = time.Date(2025, 3, 4, 5, 6, 7, 890e6, time.UTC)

// dlqHeaders are every header DeadLetterRecord adds to every dead letter.
var dlqHeaders = []string{HeaderDLQError, HeaderDLQErrorClass, HeaderDLQStage, HeaderDLQAttempts,
	HeaderDLQOriginalTopic, HeaderDLQOriginalPartition, HeaderDLQOriginalOffset, HeaderDLQFirstFailedAt,
	HeaderDLQTenantID}

func headerMap(t *testing.T, r *kgo.Record) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, h := range r.Headers {
		if _, dup := m[h.Key]; dup && strings.HasPrefix(h.Key, DLQHeaderPrefix) {
			t.Errorf("header %s repeated", h.Key)
		}
		m[h.Key] = string(h.Value)
	}
	return m
}

func testFailure() Failure {
	return Failure{
		Err:      errors.New("validate: body: must not be empty"),
		Class:    Permanent,
		Stage:    StageValidate,
		Attempts: 2,
		First:    testTime.In(time.FixedZone("CEST", 2*3600)),
		TenantID: "tenant-1",
	}
}

func TestDeadLetterRecordNormal(t *testing.T) {
	keys := mustKeys(t, "k1", secretOld)
	r := signedRecord(t, keys)
	r.Partition, r.Offset = 3, 42
	// Headers of an earlier dead-lettering, as a retried record carries them.
	r.Headers = append(r.Headers,
		kgo.RecordHeader{Key: HeaderDLQAttempts, Value: []byte("1")},
		kgo.RecordHeader{Key: HeaderDLQError, Value: []byte("old error")},
		kgo.RecordHeader{Key: HeaderDLQStage, Value: []byte(StagePersist)},
		kgo.RecordHeader{Key: "dlq.custom", Value: []byte("x")},
		kgo.RecordHeader{Key: "traceparent", Value: []byte("00-1-2-01")},
	)
	before := cloneRecord(r)

	dl := DeadLetterRecord(r, testFailure())

	if dl.Topic != kafka.TopicDLQ {
		t.Errorf("topic %q, want %q", dl.Topic, kafka.TopicDLQ)
	}
	if !bytes.Equal(dl.Key, r.Key) || !bytes.Equal(dl.Value, r.Value) {
		t.Errorf("key or value changed")
	}
	var kept []string
	for _, h := range dl.Headers {
		if !strings.HasPrefix(h.Key, DLQHeaderPrefix) {
			kept = append(kept, h.Key+"="+string(h.Value))
		}
	}
	var want []string
	for _, h := range before.Headers {
		if !strings.HasPrefix(h.Key, DLQHeaderPrefix) {
			want = append(want, h.Key+"="+string(h.Value))
		}
	}
	if !slices.Equal(kept, want) {
		t.Errorf("original headers %q, want %q", kept, want)
	}
	hm := headerMap(t, dl)
	for k, v := range map[string]string{
		HeaderDLQError:             "validate: body: must not be empty",
		HeaderDLQErrorClass:        "permanent",
		HeaderDLQStage:             "validate",
		HeaderDLQAttempts:          "2",
		HeaderDLQOriginalTopic:     kafka.TopicInbound,
		HeaderDLQOriginalPartition: "3",
		HeaderDLQOriginalOffset:    "42",
		HeaderDLQFirstFailedAt:     "2025-03-04T05:06:07.890Z",
		HeaderDLQTenantID:          "tenant-1",
	} {
		if got, ok := hm[k]; !ok || got != v {
			t.Errorf("%s = %q (present %v), want %q", k, got, ok, v)
		}
	}
	for _, k := range []string{"dlq.custom", HeaderDLQTruncated, HeaderDLQOriginalSize, HeaderDLQOriginalSHA256} {
		if _, ok := hm[k]; ok {
			t.Errorf("header %s present, want it gone", k)
		}
	}
	if n := len(dl.Headers); n != len(want)+len(dlqHeaders) {
		t.Errorf("%d headers, want %d", n, len(want)+len(dlqHeaders))
	}
	// The input is untouched.
	if r.Topic != before.Topic || !bytes.Equal(r.Key, before.Key) || !bytes.Equal(r.Value, before.Value) ||
		len(r.Headers) != len(before.Headers) {
		t.Errorf("DeadLetterRecord changed its input")
	}
	for i := range r.Headers {
		if r.Headers[i].Key != before.Headers[i].Key || !bytes.Equal(r.Headers[i].Value, before.Headers[i].Value) {
			t.Errorf("DeadLetterRecord changed input header %d", i)
		}
	}
	// A dead letter of a legal record fits in Kafka's default limit with room to spare.
	if n := RecordSize(dl); n > MaxRecordBytes+4<<10 {
		t.Errorf("dead letter is %d bytes", n)
	}
}

func TestDeadLetterRecordFailureFields(t *testing.T) {
	r := signedRecord(t, mustKeys(t, "k1", secretOld))
	for _, tc := range []struct {
		name  string
		f     Failure
		check func(t *testing.T, hm map[string]string)
	}{
		{"zero failure", Failure{}, func(t *testing.T, hm map[string]string) {
			if hm[HeaderDLQError] != "unknown error" {
				t.Errorf("dlq.error = %q, want unknown error", hm[HeaderDLQError])
			}
			if hm[HeaderDLQAttempts] != "1" {
				t.Errorf("dlq.attempts = %q, want 1", hm[HeaderDLQAttempts])
			}
			if hm[HeaderDLQTenantID] != "" || hm[HeaderDLQStage] != "" || hm[HeaderDLQErrorClass] != "" {
				t.Errorf("unexpected tenant, stage or class: %q", hm)
			}
			if _, err := time.Parse(DLQTimeLayout, hm[HeaderDLQFirstFailedAt]); err != nil {
				t.Errorf("dlq.first_failed_at %q: %v", hm[HeaderDLQFirstFailedAt], err)
			}
		}},
		{"negative attempts", Failure{Attempts: -5}, func(t *testing.T, hm map[string]string) {
			if hm[HeaderDLQAttempts] != "1" {
				t.Errorf("dlq.attempts = %q, want 1", hm[HeaderDLQAttempts])
			}
		}},
		{"transient at persist", Failure{Err: errors.New("store down"), Class: Transient, Stage: StagePersist, Attempts: 7},
			func(t *testing.T, hm map[string]string) {
				if hm[HeaderDLQErrorClass] != "transient" || hm[HeaderDLQStage] != "persist" || hm[HeaderDLQAttempts] != "7" {
					t.Errorf("headers %q", hm)
				}
			}},
		{"long error clipped", Failure{Err: errors.New(strings.Repeat("e", 5000))}, func(t *testing.T, hm map[string]string) {
			v := hm[HeaderDLQError]
			if len(v) > maxErrorHeader+len("…") || !strings.HasSuffix(v, "…") || !strings.HasPrefix(v, "eeee") {
				t.Errorf("dlq.error is %d bytes (%q…)", len(v), v[:min(len(v), 16)])
			}
		}},
		{"long multi-byte error clipped on a rune boundary", Failure{Err: errors.New(strings.Repeat("日", 2000))}, func(t *testing.T, hm map[string]string) {
			v := hm[HeaderDLQError]
			if len(v) > maxErrorHeader+len("…") || !utf8.ValidString(v) || !strings.HasSuffix(v, "…") {
				t.Errorf("dlq.error is %d bytes, valid UTF-8 %v", len(v), utf8.ValidString(v))
			}
		}},
		{"error of invalid UTF-8 made valid", Failure{Err: errors.New("bad \xff byte")}, func(t *testing.T, hm map[string]string) {
			if v := hm[HeaderDLQError]; v != "bad \uFFFD byte" {
				t.Errorf("dlq.error = %q", v)
			}
		}},
		{"long tenant clipped", Failure{TenantID: strings.Repeat("t", 1000)}, func(t *testing.T, hm map[string]string) {
			if v := hm[HeaderDLQTenantID]; len(v) > MaxIDBytes+len("…") {
				t.Errorf("dlq.tenant_id is %d bytes", len(v))
			}
		}},
		{"first failure converted to UTC", Failure{First: time.Date(2025, 1, 1, 1, 0, 0, 123456789, time.FixedZone("X", 3*3600))},
			func(t *testing.T, hm map[string]string) {
				if v := hm[HeaderDLQFirstFailedAt]; v != "2024-12-31T22:00:00.123Z" {
					t.Errorf("dlq.first_failed_at = %q", v)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.check(t, headerMap(t, DeadLetterRecord(r, tc.f)))
		})
	}
}

func TestDeadLetterRecordOversized(t *testing.T) {
	big := func(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }
	for _, tc := range []struct {
		name string
		r    *kgo.Record
	}{
		{"value of 999,900 bytes", &kgo.Record{Topic: kafka.TopicInbound, Key: []byte("conv-1"), Value: big(999_900, 'v'),
			Headers: []kgo.RecordHeader{{Key: HeaderContentType, Value: []byte(ContentTypeProtobuf)}, {Key: HeaderKeyID, Value: []byte("k1")}}}},
		{"value just over the limit", &kgo.Record{Topic: kafka.TopicInbound, Key: []byte("k"), Value: big(MaxRecordBytes, 'v')}},
		{"huge header", &kgo.Record{Topic: kafka.TopicInbound, Key: []byte("conv-1"), Value: []byte("small"),
			Headers: []kgo.RecordHeader{{Key: "x-big", Value: big(900_000, 'h')}, {Key: HeaderRequestID, Value: []byte("r")}}}},
		{"huge header key", &kgo.Record{Topic: kafka.TopicInbound, Value: []byte("small"),
			Headers: []kgo.RecordHeader{{Key: strings.Repeat("k", 300_000)}}}},
		{"many headers", &kgo.Record{Topic: kafka.TopicInbound, Value: []byte("small"),
			Headers: slices.Repeat([]kgo.RecordHeader{{Key: "x-h", Value: big(1000, 'h')}}, 500)}},
		{"huge key", &kgo.Record{Topic: kafka.TopicInbound, Key: big(900_000, 'k'), Value: big(5000, 'v')}},
		{"huge key and value and header", &kgo.Record{Topic: kafka.TopicInbound, Key: big(400_000, 'k'), Value: big(400_000, 'v'),
			Headers: []kgo.RecordHeader{{Key: "dlq.error", Value: big(400_000, 'e')}}}},
		{"oversized with empty value", &kgo.Record{Topic: kafka.TopicInbound, Key: big(MaxRecordBytes+1, 'k')}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if RecordSize(tc.r) <= MaxRecordBytes {
				t.Fatalf("test record is only %d bytes", RecordSize(tc.r))
			}
			if err := CheckSize(tc.r); !errors.Is(err, ErrTooLarge) {
				t.Errorf("CheckSize = %v, want ErrTooLarge", err)
			}
			f := testFailure()
			f.Err, f.Stage = CheckSize(tc.r), StageAuthenticate
			dl := DeadLetterRecord(tc.r, f)

			if dl.Topic != kafka.TopicDLQ {
				t.Errorf("topic %q", dl.Topic)
			}
			if len(dl.Value) > TruncatedPayloadBytes {
				t.Errorf("value of %d bytes, want at most %d", len(dl.Value), TruncatedPayloadBytes)
			}
			if want := tc.r.Value[:min(len(tc.r.Value), TruncatedPayloadBytes)]; !bytes.Equal(dl.Value, want) {
				t.Errorf("value is not the first %d bytes of the original", len(want))
			}
			if len(dl.Key) > MaxIDBytes || !bytes.HasPrefix(tc.r.Key, dl.Key) {
				t.Errorf("key of %d bytes, want a prefix of at most %d", len(dl.Key), MaxIDBytes)
			}
			if len(tc.r.Key) >= MaxIDBytes && len(dl.Key) != MaxIDBytes {
				t.Errorf("key of %d bytes, want the first %d", len(dl.Key), MaxIDBytes)
			}
			for _, h := range dl.Headers {
				if !strings.HasPrefix(h.Key, DLQHeaderPrefix) {
					t.Errorf("original header %.40q kept", h.Key)
				}
			}
			hm := headerMap(t, dl)
			if hm[HeaderDLQTruncated] != "true" {
				t.Errorf("dlq.truncated = %q, want true", hm[HeaderDLQTruncated])
			}
			if got, want := hm[HeaderDLQOriginalSize], strconv.Itoa(len(tc.r.Value)); got != want {
				t.Errorf("dlq.original_size = %q, want %q", got, want)
			}
			sum := sha256.Sum256(tc.r.Value)
			if got, want := hm[HeaderDLQOriginalSHA256], hex.EncodeToString(sum[:]); got != want {
				t.Errorf("dlq.original_sha256 = %q, want %q", got, want)
			}
			for _, k := range dlqHeaders {
				if _, ok := hm[k]; !ok {
					t.Errorf("header %s missing", k)
				}
			}
			if !strings.Contains(hm[HeaderDLQError], ErrTooLarge.Error()) {
				t.Errorf("dlq.error = %q", hm[HeaderDLQError])
			}
			if hm[HeaderDLQStage] != StageAuthenticate || hm[HeaderDLQOriginalTopic] != kafka.TopicInbound {
				t.Errorf("dlq.stage %q, dlq.original_topic %q", hm[HeaderDLQStage], hm[HeaderDLQOriginalTopic])
			}
			if n := RecordSize(dl); n > 8<<10 {
				t.Errorf("truncated dead letter is %d bytes, want well under 1,000,000", n)
			}
			if err := CheckSize(dl); err != nil {
				t.Errorf("CheckSize of the dead letter: %v", err)
			}
		})
	}
}

func TestDeadLetterRecordSizeBoundary(t *testing.T) {
	r := &kgo.Record{Topic: kafka.TopicInbound, Key: []byte("kk"), Headers: []kgo.RecordHeader{{Key: "h", Value: []byte("vv")}}}
	overhead := RecordSize(r)
	r.Value = bytes.Repeat([]byte("v"), MaxRecordBytes-overhead)
	if RecordSize(r) != MaxRecordBytes {
		t.Fatalf("RecordSize = %d", RecordSize(r))
	}
	if err := CheckSize(r); err != nil {
		t.Errorf("CheckSize at exactly MaxRecordBytes: %v", err)
	}
	dl := DeadLetterRecord(r, testFailure())
	if _, ok := Header(dl, HeaderDLQTruncated); ok || !bytes.Equal(dl.Value, r.Value) {
		t.Errorf("a record of exactly MaxRecordBytes was truncated")
	}
	r.Value = append(r.Value, 'v')
	if err := CheckSize(r); !errors.Is(err, ErrTooLarge) {
		t.Errorf("CheckSize one byte over = %v, want ErrTooLarge", err)
	}
	dl = DeadLetterRecord(r, testFailure())
	if v, _ := Header(dl, HeaderDLQTruncated); v != "true" || len(dl.Value) != TruncatedPayloadBytes {
		t.Errorf("a record one byte over MaxRecordBytes: dlq.truncated %q, value %d bytes", v, len(dl.Value))
	}
}

func TestRecordSize(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    *kgo.Record
		want int
	}{
		{"empty", &kgo.Record{}, 0},
		{"topic is not counted", &kgo.Record{Topic: "messages.inbound"}, 0},
		{"key and value", &kgo.Record{Key: []byte("abc"), Value: []byte("defg")}, 7},
		{"headers", &kgo.Record{Headers: []kgo.RecordHeader{{Key: "ab", Value: []byte("c")}, {Key: "d"}}}, 4},
		{"everything", &kgo.Record{Key: []byte("k"), Value: []byte("vv"), Headers: []kgo.RecordHeader{{Key: "hh", Value: []byte("hhh")}}}, 8},
	} {
		if got := RecordSize(tc.r); got != tc.want {
			t.Errorf("%s: RecordSize = %d, want %d", tc.name, got, tc.want)
		}
	}
	err := CheckSize(&kgo.Record{Value: make([]byte, MaxRecordBytes+10)})
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), strconv.Itoa(MaxRecordBytes+10)) {
		t.Errorf("CheckSize = %v, want ErrTooLarge naming the size", err)
	}
}

func TestRetryHeaders(t *testing.T) {
	original := []kgo.RecordHeader{
		{Key: HeaderContentType, Value: []byte(ContentTypeProtobuf)},
		{Key: HeaderDLQError, Value: []byte("boom")},
		{Key: HeaderRequestID, Value: []byte("req-1")},
		{Key: HeaderDLQAttempts, Value: []byte("4")},
		{Key: HeaderDLQFirstFailedAt, Value: []byte("2020-01-01T00:00:00.000Z")},
		{Key: HeaderKeyID, Value: []byte("k1")},
		{Key: HeaderSignature, Value: []byte("sig")},
		{Key: HeaderDLQTruncated, Value: []byte("true")},
		{Key: "dlqx", Value: []byte("not a dlq. header")},
	}
	origCopy := cloneRecord(&kgo.Record{Headers: original}).Headers
	first := testTime.In(time.FixedZone("EST", -5*3600))
	got := RetryHeaders(original, 5, first)
	var keys []string
	for _, h := range got {
		keys = append(keys, h.Key)
	}
	want := []string{HeaderContentType, HeaderRequestID, HeaderKeyID, HeaderSignature, "dlqx", HeaderDLQAttempts, HeaderDLQFirstFailedAt}
	if !slices.Equal(keys, want) {
		t.Errorf("RetryHeaders keys %q, want %q", keys, want)
	}
	r := &kgo.Record{Headers: got}
	if v, _ := Header(r, HeaderDLQAttempts); v != "5" {
		t.Errorf("dlq.attempts = %q, want 5", v)
	}
	if v, _ := Header(r, HeaderDLQFirstFailedAt); v != "2025-03-04T05:06:07.890Z" {
		t.Errorf("dlq.first_failed_at = %q", v)
	}
	for i := range original {
		if original[i].Key != origCopy[i].Key || !bytes.Equal(original[i].Value, origCopy[i].Value) {
			t.Errorf("RetryHeaders changed its input at %d", i)
		}
	}
	if v, _ := Header(&kgo.Record{Headers: RetryHeaders(nil, 0, first)}, HeaderDLQAttempts); v != "1" {
		t.Errorf("dlq.attempts of 0 attempts = %q, want 1", v)
	}
}

func TestRetryHeadersPriorFailuresRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		attempts  int
		first     time.Time
		wantN     int
		wantFirst time.Time
	}{
		{1, testTime, 1, testTime},
		{3, testTime.In(time.FixedZone("X", 5*3600+1800)), 3, testTime},
		{1000, testTime, 1000, testTime},
		{0, testTime, 1, testTime},
		{-1, testTime, 1, testTime},
		{2, time.Date(2025, 1, 1, 0, 0, 0, 123456789, time.UTC), 2, time.Date(2025, 1, 1, 0, 0, 0, 123e6, time.UTC)},
	} {
		r := &kgo.Record{Headers: RetryHeaders([]kgo.RecordHeader{{Key: "a", Value: []byte("b")}}, tc.attempts, tc.first)}
		n, first := PriorFailures(r)
		if n != tc.wantN || !first.Equal(tc.wantFirst) {
			t.Errorf("RetryHeaders(%d, %v) → PriorFailures = %d, %v; want %d, %v", tc.attempts, tc.first, n, first, tc.wantN, tc.wantFirst)
		}
	}
}

func TestPriorFailures(t *testing.T) {
	hdr := func(kv ...string) *kgo.Record {
		r := &kgo.Record{}
		for i := 0; i < len(kv); i += 2 {
			r.Headers = append(r.Headers, kgo.RecordHeader{Key: kv[i], Value: []byte(kv[i+1])})
		}
		return r
	}
	for _, tc := range []struct {
		name      string
		r         *kgo.Record
		wantN     int
		wantFirst time.Time
	}{
		{"first delivery", hdr(), 0, time.Time{}},
		{"unrelated headers", hdr("x-request-id", "r", "dlq.error", "e"), 0, time.Time{}},
		{"attempts", hdr(HeaderDLQAttempts, "3"), 3, time.Time{}},
		{"attempts with space", hdr(HeaderDLQAttempts, " 7 "), 7, time.Time{}},
		{"attempts zero", hdr(HeaderDLQAttempts, "0"), 0, time.Time{}},
		{"attempts negative", hdr(HeaderDLQAttempts, "-2"), 0, time.Time{}},
		{"attempts not a number", hdr(HeaderDLQAttempts, "three"), 0, time.Time{}},
		{"attempts overflowing", hdr(HeaderDLQAttempts, "99999999999999999999999"), 0, time.Time{}},
		{"attempts empty", hdr(HeaderDLQAttempts, ""), 0, time.Time{}},
		{"attempts repeated: the first counts", hdr(HeaderDLQAttempts, "2", HeaderDLQAttempts, "9"), 2, time.Time{}},
		{"first failed at", hdr(HeaderDLQFirstFailedAt, "2025-03-04T05:06:07.890Z"), 0, testTime},
		{"first failed at without fraction", hdr(HeaderDLQFirstFailedAt, "2025-03-04T05:06:07Z"), 0, testTime.Truncate(time.Second)},
		{"first failed at with offset", hdr(HeaderDLQFirstFailedAt, "2025-03-04T07:06:07.890+02:00"), 0, testTime},
		{"first failed at with space", hdr(HeaderDLQFirstFailedAt, " 2025-03-04T05:06:07.890Z\n"), 0, testTime},
		{"first failed at garbage", hdr(HeaderDLQFirstFailedAt, "yesterday"), 0, time.Time{}},
		{"first failed at unix seconds", hdr(HeaderDLQFirstFailedAt, "1741064767"), 0, time.Time{}},
		{"both", hdr(HeaderDLQAttempts, "4", HeaderDLQFirstFailedAt, "2025-03-04T05:06:07.890Z"), 4, testTime},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, first := PriorFailures(tc.r)
			if n != tc.wantN || !first.Equal(tc.wantFirst) {
				t.Errorf("PriorFailures = %d, %v; want %d, %v", n, first, tc.wantN, tc.wantFirst)
			}
		})
	}
}

// TestDeadLetterRetryCycle follows a record through dead-lettering, a republish and a second failure:
// the republished record verifies again and counts its attempts on.
func TestDeadLetterRetryCycle(t *testing.T) {
	keys := mustKeys(t, "k1", secretOld)
	r := signedRecord(t, keys)

	f := testFailure()
	f.Attempts = 1
	dl := DeadLetterRecord(r, f)

	// The DLQ processor republishes it to its original topic.
	topic, _ := Header(dl, HeaderDLQOriginalTopic)
	if !RetryTarget(topic) {
		t.Fatalf("original topic %q is not a retry target", topic)
	}
	attempts, _ := strconv.Atoi(mustHeader(Header(dl, HeaderDLQAttempts)))
	first, err := time.Parse(DLQTimeLayout, mustHeader(Header(dl, HeaderDLQFirstFailedAt)))
	if err != nil {
		t.Fatal(err)
	}
	retry := &kgo.Record{Topic: topic, Key: dl.Key, Value: dl.Value, Headers: RetryHeaders(dl.Headers, attempts, first)}
	if err := keys.Verify(retry); err != nil {
		t.Fatalf("a republished dead letter does not verify: %v", err)
	}
	n, firstAgain := PriorFailures(retry)
	if n != 1 || !firstAgain.Equal(testTime) {
		t.Errorf("PriorFailures = %d, %v; want 1, %v", n, firstAgain, testTime)
	}
	msg, err := DecodeInbound(retry)
	if err != nil || msg.GetConversationId() != "conv-1" {
		t.Errorf("DecodeInbound of the republished record = %v, %v", msg, err)
	}

	// It fails again: the pipeline counts on from PriorFailures.
	f2 := Failure{Err: errors.New("again"), Class: Transient, Stage: StagePersist, Attempts: n + 1, First: firstAgain}
	dl2 := DeadLetterRecord(retry, f2)
	hm := headerMap(t, dl2)
	if hm[HeaderDLQAttempts] != "2" || hm[HeaderDLQFirstFailedAt] != "2025-03-04T05:06:07.890Z" || hm[HeaderDLQError] != "again" {
		t.Errorf("second dead letter headers %q", hm)
	}
	if headerCount(dl2, HeaderDLQAttempts) != 1 || headerCount(dl2, HeaderKeyID) != 1 || headerCount(dl2, HeaderSignature) != 1 {
		t.Errorf("second dead letter repeats headers: %v", dl2.Headers)
	}
	if err := keys.Verify(dl2); err != nil {
		// The dead letter is on messages.dlq, so its topic no longer matches the signature.
		if !errors.Is(err, ErrBadSignature) {
			t.Errorf("Verify of a dead letter = %v, want ErrBadSignature (signed for another topic)", err)
		}
	} else {
		t.Error("a dead letter verifies under its messages.dlq topic")
	}
}

func mustHeader(v string, ok bool) string {
	if !ok {
		panic("header missing")
	}
	return v
}

func TestRetryTarget(t *testing.T) {
	for _, tc := range []struct {
		topic string
		want  bool
	}{
		{kafka.TopicInbound, true},
		{"messages.inbound", true},
		{kafka.TopicEvents, false},
		{"messages.events", false},
		{kafka.TopicDLQ, false},
		{"", false},
		{"MESSAGES.INBOUND", false},
		{"messages.inbound ", false},
		{" messages.inbound", false},
		{"messages.inbound\x00", false},
		{"messages", false},
		{"other.topic", false},
	} {
		if got := RetryTarget(tc.topic); got != tc.want {
			t.Errorf("RetryTarget(%q) = %v, want %v", tc.topic, got, tc.want)
		}
	}
	if !slices.Equal(RetryTargets, []string{kafka.TopicInbound}) {
		t.Errorf("RetryTargets = %q, want only %q", RetryTargets, kafka.TopicInbound)
	}
}

func TestStageLabel(t *testing.T) {
	want := []string{"authenticate", "deserialize", "validate", "tenant", "authorize", "transform", "persist", "notify"}
	if !slices.Equal(Stages, want) {
		t.Errorf("Stages = %q, want %q", Stages, want)
	}
	for _, s := range Stages {
		if got := StageLabel(s); got != s {
			t.Errorf("StageLabel(%q) = %q, want it unchanged", s, got)
		}
	}
	for _, s := range []string{"", "Validate", "VALIDATE", " validate", "validate ", "valid", "validates", "other",
		"evil\nlabel", strings.Repeat("x", 10000), "persist\x00", "dlq"} {
		if got := StageLabel(s); got != LabelOther {
			t.Errorf("StageLabel(%q) = %q, want %q", s, got, LabelOther)
		}
	}
}

func TestClassLabel(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"permanent", "permanent"},
		{string(Permanent), "permanent"},
		{"transient", "transient"},
		{string(Transient), "transient"},
		{"", LabelOther},
		{"Permanent", LabelOther},
		{"TRANSIENT", LabelOther},
		{" transient", LabelOther},
		{"fatal", LabelOther},
		{"other", LabelOther},
		{strings.Repeat("p", 1000), LabelOther},
	} {
		if got := ClassLabel(tc.in); got != tc.want {
			t.Errorf("ClassLabel(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if LabelOther != "other" {
		t.Errorf("LabelOther = %q", LabelOther)
	}
}

// A truncated dead letter keeps the record's trace context when it is one well-formed traceparent, and
// nothing an attacker could inflate or forge into something else.
func TestDeadLetterRecordOversizedKeepsTraceparent(t *testing.T) {
	const valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	tp := func(v string) kgo.RecordHeader { return kgo.RecordHeader{Key: HeaderTraceparent, Value: []byte(v)} }
	for _, tc := range []struct {
		name    string
		headers []kgo.RecordHeader
		want    string // "" : no traceparent on the dead letter
	}{
		{"valid", []kgo.RecordHeader{tp(valid)}, valid},
		{"none", nil, ""},
		{"all-zero trace id", []kgo.RecordHeader{tp("00-00000000000000000000000000000000-00f067aa0ba902b7-01")}, ""},
		{"not hex", []kgo.RecordHeader{tp("00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01")}, ""},
		{"huge", []kgo.RecordHeader{tp(valid + strings.Repeat("0", 900_000))}, ""},
		{"twice", []kgo.RecordHeader{tp(valid), tp(valid)}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &kgo.Record{Topic: kafka.TopicInbound, Key: []byte("conv-1"), Value: bytes.Repeat([]byte{'v'}, MaxRecordBytes), Headers: tc.headers}
			dl := DeadLetterRecord(r, testFailure())
			var got []string
			for _, h := range dl.Headers {
				if h.Key == HeaderTraceparent {
					got = append(got, string(h.Value))
				}
			}
			switch {
			case tc.want == "" && len(got) > 0:
				t.Errorf("traceparent %.60q kept", got[0])
			case tc.want != "" && !slices.Equal(got, []string{tc.want}):
				t.Errorf("traceparent headers %q, want [%q]", got, tc.want)
			}
			if err := CheckSize(dl); err != nil {
				t.Errorf("CheckSize of the dead letter: %v", err)
			}
		})
	}
}
