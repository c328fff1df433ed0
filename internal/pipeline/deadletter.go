package pipeline

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/observability"
)

// maxErrorHeader bounds the dlq.error header (bytes).
const maxErrorHeader = 1024

// newItem wraps a polled record. A record that comes back from the DLQ (retried) carries dlq.attempts and
// dlq.first_failed_at: counting goes on from them.
func newItem(r *kgo.Record) *Item {
	it := &Item{Record: r}
	if v, ok := header(r, kafka.HeaderDLQAttempts); ok {
		if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n > 0 {
			it.attempts = n
		}
	}
	if v, ok := header(r, kafka.HeaderDLQFirstFailedAt); ok {
		if t, err := time.Parse(time.RFC3339Nano, strings.TrimSpace(v)); err == nil {
			it.firstFailedAt = t
		}
	}
	return it
}

// deadLetterRecord is the DLQ record of a failed item: the original key and value, the original headers
// (but for earlier dlq.* ones), and the dlq.* headers describing this failure. dlq.attempts counts every
// failed try of the record, earlier lives included; dlq.tenant_id is empty when the envelope could not be
// decoded.
func deadLetterRecord(it *Item) *kgo.Record {
	r := it.Record
	headers := make([]kgo.RecordHeader, 0, len(r.Headers)+9)
	for _, h := range r.Headers {
		if !strings.HasPrefix(h.Key, kafka.DLQHeaderPrefix) {
			headers = append(headers, h)
		}
	}
	add := func(k, v string) { headers = append(headers, kgo.RecordHeader{Key: k, Value: []byte(v)}) }
	add(kafka.HeaderDLQError, clip(it.err.Error(), maxErrorHeader))
	add(kafka.HeaderDLQErrorClass, string(it.class))
	add(kafka.HeaderDLQStage, it.stage)
	add(kafka.HeaderDLQAttempts, strconv.Itoa(max(it.attempts, 1)))
	add(kafka.HeaderDLQOriginalTopic, r.Topic)
	add(kafka.HeaderDLQOriginalPartition, strconv.FormatInt(int64(r.Partition), 10))
	add(kafka.HeaderDLQOriginalOffset, strconv.FormatInt(r.Offset, 10))
	add(kafka.HeaderDLQFirstFailedAt, it.firstFailedAt.UTC().Format(kafka.DLQTimeLayout))
	add(kafka.HeaderDLQTenantID, it.TenantID())
	return &kgo.Record{Topic: kafka.TopicDLQ, Key: r.Key, Value: r.Value, Headers: headers}
}

// deadLetterer produces failed items to messages.dlq.
type deadLetterer struct {
	producer     Producer
	retryInitial time.Duration
	retryMax     time.Duration
	logger       *slog.Logger

	produced *prometheus.CounterVec
	errors   prometheus.Counter
}

func newDeadLetterer(p Producer, cfg Config, reg prometheus.Registerer, logger *slog.Logger) (*deadLetterer, error) {
	d := &deadLetterer{
		producer: p, retryInitial: cfg.RetryInitial, retryMax: cfg.RetryMax, logger: logger,
		produced: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: observability.Namespace, Subsystem: "pipeline", Name: "dead_letters_total",
			Help: "Records sent to messages.dlq by stage and error class.",
		}, []string{"stage", "class"}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: observability.Namespace, Subsystem: "pipeline", Name: "dead_letter_produce_errors_total",
			Help: "Failed attempts to produce to messages.dlq (retried; the batch is not committed until they succeed).",
		}),
	}
	for _, c := range []prometheus.Collector{d.produced, d.errors} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register dead letter metrics: %w", err)
		}
	}
	return d, nil
}

// send produces the items' DLQ records, retrying those that fail with backoff until all are acknowledged
// or ctx ends (then the caller must not commit). One attempt is bounded by the producer's delivery
// timeout (KAFKA_PRODUCE_TIMEOUT).
func (d *deadLetterer) send(ctx context.Context, items []*Item) error {
	pending := items
	b := &backoff.ExponentialBackOff{InitialInterval: d.retryInitial, RandomizationFactor: 0.5, Multiplier: 2, MaxInterval: d.retryMax}
	b.Reset()
	for len(pending) > 0 {
		recs := make([]*kgo.Record, len(pending))
		for i, it := range pending {
			recs[i] = deadLetterRecord(it)
		}
		results := d.producer.ProduceSync(ctx, recs...)
		var failed []*Item
		var firstErr error
		for i, res := range results {
			it := pending[i]
			if res.Err != nil {
				failed = append(failed, it)
				firstErr = res.Err
				continue
			}
			it.deadLettered = true
			d.produced.WithLabelValues(it.stage, string(it.class)).Inc()
			d.logger.WarnContext(ctx, "record dead-lettered", "stage", it.stage, "class", string(it.class),
				"topic", it.Record.Topic, "partition", it.Record.Partition, "offset", it.Record.Offset,
				"tenant_id", it.TenantID(), "attempts", max(it.attempts, 1), "error", it.err)
		}
		if len(failed) == 0 {
			return nil
		}
		d.errors.Inc()
		if ctx.Err() != nil {
			return fmt.Errorf("produce %d dead letters: %w", len(failed), firstErr)
		}
		delay := b.NextBackOff()
		d.logger.ErrorContext(ctx, "cannot produce to the DLQ; retrying before committing", "records", len(failed),
			"retry_in", delay.Round(time.Millisecond).String(), "error", firstErr)
		select {
		case <-ctx.Done():
			return fmt.Errorf("produce %d dead letters: %w", len(failed), ctx.Err())
		case <-time.After(delay):
		}
		pending = failed
	}
	return nil
}
