package envelope

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/msgplatform/platform/internal/kafka"
)

// Headers of a dead-letter record, added beside the original record's own headers. The pipeline writes
// them; the DLQ processor reads them; a republished record keeps dlq.attempts and dlq.first_failed_at.
const (
	HeaderDLQError             = "dlq.error"
	HeaderDLQErrorClass        = "dlq.error_class"
	HeaderDLQStage             = "dlq.stage"
	HeaderDLQAttempts          = "dlq.attempts"
	HeaderDLQOriginalTopic     = "dlq.original_topic"
	HeaderDLQOriginalPartition = "dlq.original_partition"
	HeaderDLQOriginalOffset    = "dlq.original_offset"
	HeaderDLQFirstFailedAt     = "dlq.first_failed_at"
	HeaderDLQTenantID          = "dlq.tenant_id"
	// HeaderDLQTruncated is "true" when the dead letter keeps only the first TruncatedPayloadBytes of an
	// oversized record's value (and of its headers only a well-formed traceparent); HeaderDLQOriginalSize and
	// HeaderDLQOriginalSHA256 then describe the whole original value. Such an entry cannot be retried.
	HeaderDLQTruncated      = "dlq.truncated"
	HeaderDLQOriginalSize   = "dlq.original_size"
	HeaderDLQOriginalSHA256 = "dlq.original_sha256"

	// DLQHeaderPrefix marks the headers of a dead-lettering: a new dead-lettering replaces them.
	DLQHeaderPrefix = "dlq."
	// DLQTimeLayout is dlq.first_failed_at's format: RFC 3339 with milliseconds, in UTC.
	DLQTimeLayout = "2006-01-02T15:04:05.000Z07:00"
)

// Size limits of records.
const (
	// MaxRecordBytes bounds an inbound record (key, value and headers): well above the largest legal
	// message (ids, a 16 KiB body and 16 metadata entries, even as protojson with every character
	// escaped), well below Kafka's default 1 MB, so its dead-letter copy (the same bytes plus the dlq.*
	// headers) always fits. A larger record is dead-lettered truncated at stage authenticate.
	MaxRecordBytes = 256 << 10
	// TruncatedPayloadBytes of an oversized value are kept in its dead letter, for diagnosis.
	TruncatedPayloadBytes = 1 << 10
	// maxErrorHeader bounds the dlq.error header.
	maxErrorHeader = 1024
)

// ErrTooLarge is the failure of a record over MaxRecordBytes.
var ErrTooLarge = errors.New("record too large")

// RecordSize is the size of a record as Kafka counts it, near enough: key, value, header keys and values.
func RecordSize(r *kgo.Record) int {
	n := len(r.Key) + len(r.Value)
	for _, h := range r.Headers {
		n += len(h.Key) + len(h.Value)
	}
	return n
}

// CheckSize returns an error wrapping ErrTooLarge when the record is over MaxRecordBytes.
func CheckSize(r *kgo.Record) error {
	if n := RecordSize(r); n > MaxRecordBytes {
		return fmt.Errorf("%w: %d bytes (key, value and headers), at most %d", ErrTooLarge, n, MaxRecordBytes)
	}
	return nil
}

// RetryTargets are the only topics a dead letter may be republished to. A dead letter naming any other
// dlq.original_topic (say, a forged one pointing at messages.events, which stream subscribers read) is
// parked and never republished.
var RetryTargets = []string{kafka.TopicInbound}

// RetryTarget reports whether topic is in RetryTargets.
func RetryTarget(topic string) bool { return slices.Contains(RetryTargets, topic) }

// Failure describes why a record is dead-lettered.
type Failure struct {
	Err      error
	Class    Class
	Stage    string
	Attempts int       // every failed try of the record, earlier lives included (at least 1)
	First    time.Time // first failure of the record
	TenantID string    // "" when unknown (the envelope could not be trusted or decoded)
}

// DeadLetterRecord returns the messages.dlq record of r failing with f: r's key, value and headers (but
// for earlier dlq.* ones) plus the dlq.* headers describing f. A record over MaxRecordBytes keeps only
// the first TruncatedPayloadBytes of its value, a key clipped to MaxIDBytes and, of its headers, only a
// well-formed traceparent (55 bytes: the dead letter stays in the record's trace), with dlq.truncated,
// dlq.original_size and dlq.original_sha256 added: its dead letter always fits in the DLQ, so one
// oversized record can never block the others.
func DeadLetterRecord(r *kgo.Record, f Failure) *kgo.Record {
	truncated := RecordSize(r) > MaxRecordBytes
	key, value := r.Key, r.Value
	headers := make([]kgo.RecordHeader, 0, len(r.Headers)+12)
	add := func(k, v string) { headers = append(headers, kgo.RecordHeader{Key: k, Value: []byte(v)}) }
	if truncated {
		if len(key) > MaxIDBytes {
			key = key[:MaxIDBytes]
		}
		if len(value) > TruncatedPayloadBytes {
			value = value[:TruncatedPayloadBytes]
		}
		sum := sha256.Sum256(r.Value)
		add(HeaderDLQTruncated, "true")
		add(HeaderDLQOriginalSize, strconv.Itoa(len(r.Value)))
		add(HeaderDLQOriginalSHA256, hex.EncodeToString(sum[:]))
		if tp, ok := traceparent(r); ok {
			add(HeaderTraceparent, tp)
		}
	} else {
		for _, h := range r.Headers {
			if !strings.HasPrefix(h.Key, DLQHeaderPrefix) {
				headers = append(headers, h)
			}
		}
	}
	errText := "unknown error"
	if f.Err != nil {
		errText = f.Err.Error()
	}
	add(HeaderDLQError, Clip(errText, maxErrorHeader))
	add(HeaderDLQErrorClass, string(f.Class))
	add(HeaderDLQStage, f.Stage)
	add(HeaderDLQAttempts, strconv.Itoa(max(f.Attempts, 1)))
	add(HeaderDLQOriginalTopic, r.Topic)
	add(HeaderDLQOriginalPartition, strconv.FormatInt(int64(r.Partition), 10))
	add(HeaderDLQOriginalOffset, strconv.FormatInt(r.Offset, 10))
	add(HeaderDLQFirstFailedAt, f.First.UTC().Format(DLQTimeLayout))
	add(HeaderDLQTenantID, Clip(f.TenantID, MaxIDBytes))
	return &kgo.Record{Topic: kafka.TopicDLQ, Key: key, Value: value, Headers: headers}
}

// RetryHeaders returns the headers of a republished dead letter: the original ones without dlq.*, plus
// dlq.attempts (from which the pipeline counts on) and dlq.first_failed_at (so the first failure time
// survives the next failure). The signature headers are among the originals: the record verifies again.
func RetryHeaders(original []kgo.RecordHeader, attempts int, first time.Time) []kgo.RecordHeader {
	headers := make([]kgo.RecordHeader, 0, len(original)+2)
	for _, h := range original {
		if !strings.HasPrefix(h.Key, DLQHeaderPrefix) {
			headers = append(headers, h)
		}
	}
	return append(headers,
		kgo.RecordHeader{Key: HeaderDLQAttempts, Value: []byte(strconv.Itoa(max(attempts, 1)))},
		kgo.RecordHeader{Key: HeaderDLQFirstFailedAt, Value: []byte(first.UTC().Format(DLQTimeLayout))},
	)
}

// PriorFailures reads what a republished record says of its earlier lives: how many times it failed and
// when first (zero values when it is a first delivery or the headers are unusable).
func PriorFailures(r *kgo.Record) (attempts int, first time.Time) {
	if v, ok := Header(r, HeaderDLQAttempts); ok {
		if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n > 0 {
			attempts = n
		}
	}
	if v, ok := Header(r, HeaderDLQFirstFailedAt); ok {
		if t, err := time.Parse(time.RFC3339Nano, strings.TrimSpace(v)); err == nil {
			first = t
		}
	}
	return attempts, first
}

// traceparent returns r's traceparent header when r has exactly one and it is a valid W3C trace context
// (parsed by OpenTelemetry's own propagator, which refuses anything else).
func traceparent(r *kgo.Record) (string, bool) {
	var value []byte
	n := 0
	for _, h := range r.Headers {
		if h.Key == HeaderTraceparent {
			value, n = h.Value, n+1
		}
	}
	if n != 1 || len(value) != traceparentLen {
		return "", false
	}
	ctx := propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier{HeaderTraceparent: string(value)})
	return string(value), trace.SpanContextFromContext(ctx).IsValid()
}

// traceparentLen is the length of a version-00 W3C traceparent: 00-<32 hex>-<16 hex>-<2 hex>.
const traceparentLen = 55
