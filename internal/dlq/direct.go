package dlq

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/store"
)

// DirectWriter stores dead-letter records straight into the dead-letter store, exactly as the Processor
// stores what it reads from messages.dlq (FromRecord): the pipeline's fallback for dead letters Kafka
// refuses for good (too large, invalid), so one such record never stalls a partition.
type DirectWriter struct {
	store   *store.DeadLetters
	keys    *envelope.Keys
	policy  Policy
	metrics *Metrics
	logger  *slog.Logger
}

// NewDirectWriter returns a writer into st; keys verify original payloads as the processor does. m and
// logger may be nil.
func NewDirectWriter(st *store.DeadLetters, keys *envelope.Keys, pol Policy, m *Metrics, logger *slog.Logger) *DirectWriter {
	if m == nil {
		m = discardMetrics()
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &DirectWriter{store: st, keys: keys, policy: pol, metrics: m, logger: logger.With("component", "dlq-direct")}
}

// StoreRecords stores the dead-letter records. It returns an error only when the store failed as a whole
// (worth retrying); an entry the store refuses by itself is logged and counted (StoreErrors), never
// retried, so it cannot block the batch. A redelivered record is a duplicate, stored once.
func (w *DirectWriter) StoreRecords(ctx context.Context, recs []*kgo.Record) error {
	now := w.store.Now()
	dls := make([]store.DeadLetter, len(recs))
	for i, r := range recs {
		dls[i] = FromRecord(r, w.keys, w.policy, now)
		dls[i].LastActor = "pipeline (messages.dlq refused it)"
	}
	results, err := w.store.InsertMany(ctx, dls)
	if err != nil {
		return fmt.Errorf("store dead letters directly: %w", err)
	}
	for i, d := range dls {
		switch res := results[i]; {
		case res.Duplicate:
			w.metrics.Duplicates.Inc()
		case res.Err != nil:
			w.metrics.StoreErrors.Inc()
			w.logger.ErrorContext(ctx, "dead letter refused by the store; it is lost", "id", d.ID,
				"original_topic", d.OriginalTopic, "original_partition", d.OriginalPartition,
				"original_offset", d.OriginalOffset, "error", res.Err)
		default:
			w.metrics.RecordsIn.WithLabelValues(envelope.StageLabel(d.Stage), envelope.ClassLabel(d.ErrorClass)).Inc()
			if d.Status == store.DeadLetterParked {
				w.metrics.Parked.Inc()
			}
		}
	}
	return nil
}
