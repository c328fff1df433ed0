package pipeline

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/observability"
)

// newItem wraps a polled record. A record that comes back from the DLQ (retried) carries dlq.attempts and
// dlq.first_failed_at: counting goes on from them.
func newItem(r *kgo.Record) *Item {
	it := &Item{Record: r}
	it.attempts, it.firstFailedAt = envelope.PriorFailures(r)
	return it
}

// deadLetterRecord is the DLQ record of a failed item (envelope.DeadLetterRecord: truncated when the
// record is oversized). dlq.tenant_id is empty when the envelope was not decoded.
func deadLetterRecord(it *Item) *kgo.Record {
	return envelope.DeadLetterRecord(it.Record, envelope.Failure{
		Err: it.err, Class: it.class, Stage: it.stage, Attempts: it.attempts, First: it.firstFailedAt, TenantID: it.TenantID(),
	})
}

// DeadLetterStore stores dead-letter records straight into the dead-letter store, as the DLQ processor
// would have stored them from messages.dlq (*dlq.DirectWriter). It is the fallback for dead letters Kafka
// refuses for good, so such a record never blocks the batch. An error means the store failed (retried).
type DeadLetterStore interface {
	StoreRecords(ctx context.Context, recs []*kgo.Record) error
}

// deadLetterer produces failed items to messages.dlq.
type deadLetterer struct {
	producer     Producer
	fallback     DeadLetterStore
	retryInitial time.Duration
	retryMax     time.Duration
	logger       *slog.Logger

	produced  *prometheus.CounterVec
	errors    prometheus.Counter
	fallbacks prometheus.Counter
}

func newDeadLetterer(p Producer, fallback DeadLetterStore, cfg Config, reg prometheus.Registerer, logger *slog.Logger) (*deadLetterer, error) {
	d := &deadLetterer{
		producer: p, fallback: fallback, retryInitial: cfg.RetryInitial, retryMax: cfg.RetryMax, logger: logger,
		produced: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: observability.Namespace, Subsystem: "pipeline", Name: "dead_letters_total",
			Help: "Records dead-lettered (to messages.dlq, or straight to the store when Kafka refused them) by stage and error class.",
		}, []string{"stage", "class"}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: observability.Namespace, Subsystem: "pipeline", Name: "dead_letter_produce_errors_total",
			Help: "Failed attempts to produce to messages.dlq (transient ones are retried; the batch is not committed until they succeed).",
		}),
		fallbacks: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: observability.Namespace, Subsystem: "pipeline", Name: "dead_letter_fallbacks_total",
			Help: "Dead letters Kafka refused for good (too large, invalid) and that were stored straight in the dead-letter store instead.",
		}),
	}
	for _, c := range []prometheus.Collector{d.produced, d.errors, d.fallbacks} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register dead letter metrics: %w", err)
		}
	}
	for _, st := range envelope.Stages {
		for _, cl := range []Class{Permanent, Transient} {
			d.produced.WithLabelValues(st, string(cl))
		}
	}
	return d, nil
}

// send dead-letters the items: it produces their DLQ records and, for those Kafka refuses for good
// (kafka.IsPermanentProduceError), stores them straight in the dead-letter store. Transient failures of
// either are retried with backoff until done or ctx ends (then the caller must not commit). One produce
// attempt is bounded by the producer's delivery timeout (KAFKA_PRODUCE_TIMEOUT).
func (d *deadLetterer) send(ctx context.Context, items []*Item) error {
	toKafka, toStore := items, []*Item(nil)
	b := &backoff.ExponentialBackOff{InitialInterval: d.retryInitial, RandomizationFactor: 0.5, Multiplier: 2, MaxInterval: d.retryMax}
	b.Reset()
	for {
		var retryKafka, retryStore []*Item
		var lastErr error
		if len(toKafka) > 0 {
			recs := make([]*kgo.Record, len(toKafka))
			for i, it := range toKafka {
				recs[i] = deadLetterRecord(it)
			}
			for i, res := range d.producer.ProduceSync(ctx, recs...) {
				it := toKafka[i]
				switch {
				case res.Err == nil:
					d.done(ctx, it, kafka.TopicDLQ)
				case kafka.IsPermanentProduceError(res.Err) && d.fallback != nil:
					d.errors.Inc()
					d.logger.ErrorContext(ctx, "messages.dlq refused a dead letter for good; storing it directly",
						"partition", it.Record.Partition, "offset", it.Record.Offset, "error", res.Err)
					toStore = append(toStore, it)
				default:
					d.errors.Inc()
					retryKafka, lastErr = append(retryKafka, it), res.Err
				}
			}
		}
		if len(toStore) > 0 {
			recs := make([]*kgo.Record, len(toStore))
			for i, it := range toStore {
				recs[i] = deadLetterRecord(it)
			}
			if err := d.fallback.StoreRecords(ctx, recs); err != nil {
				retryStore, lastErr = toStore, err
			} else {
				for _, it := range toStore {
					d.fallbacks.Inc()
					d.done(ctx, it, "dead-letter store")
				}
			}
		}
		n := len(retryKafka) + len(retryStore)
		if n == 0 {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("dead-letter %d records: %w", n, lastErr)
		}
		delay := b.NextBackOff()
		d.logger.ErrorContext(ctx, "cannot dead-letter records; retrying before committing", "records", n,
			"retry_in", delay.Round(time.Millisecond).String(), "error", lastErr)
		select {
		case <-ctx.Done():
			return fmt.Errorf("dead-letter %d records: %w", n, ctx.Err())
		case <-time.After(delay):
		}
		toKafka, toStore = retryKafka, retryStore
	}
}

// done records that it was dead-lettered (to where).
func (d *deadLetterer) done(ctx context.Context, it *Item, where string) {
	it.deadLettered = true
	d.produced.WithLabelValues(it.stage, string(it.class)).Inc()
	d.logger.WarnContext(ctx, "record dead-lettered", "to", where, "stage", it.stage, "class", string(it.class),
		"topic", it.Record.Topic, "partition", it.Record.Partition, "offset", it.Record.Offset,
		"tenant_id", it.TenantID(), "attempts", max(it.attempts, 1), "error", it.err)
}
