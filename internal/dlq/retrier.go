package dlq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/store"
)

// Producer is the part of a franz-go client a retry uses.
type Producer interface {
	ProduceSync(ctx context.Context, rs ...*kgo.Record) kgo.ProduceResults
}

// Errors of retries.
var (
	// ErrNotRetryable: the entry has nothing to republish (no original topic besides the DLQ itself, or
	// its payload was purged).
	ErrNotRetryable = errors.New("dead letter cannot be retried")
	// ErrRepublish: Kafka did not acknowledge the republished record; the entry was left as it was.
	ErrRepublish = errors.New("republish failed")
)

// Retrier republishes dead letters under a claim: claim, produce to the original topic, mark retried
// (or release the claim if the produce failed). The scheduler and the DeadLetterService share it.
type Retrier struct {
	store    *store.DeadLetters
	producer Producer
	metrics  *Metrics
	logger   *slog.Logger
	owner    string
	lease    time.Duration
}

// NewRetrier returns a retrier claiming as cfg.Owner with cfg.Lease (defaults as in Config). m and
// logger may be nil.
func NewRetrier(st *store.DeadLetters, producer Producer, m *Metrics, logger *slog.Logger, cfg Config) *Retrier {
	cfg = cfg.withDefaults()
	if m == nil {
		m = discardMetrics()
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Retrier{store: st, producer: producer, metrics: m, logger: logger, owner: cfg.Owner, lease: cfg.Lease}
}

// Owner returns the name this retrier claims under.
func (r *Retrier) Owner() string { return r.owner }

// retryable says why d cannot be republished, nil when it can: only to a topic of
// envelope.RetryTargets (a dead letter naming any other topic, forged or not, is never sent there), never
// a truncated payload (it would only fail again), never a purged entry.
func retryable(d store.DeadLetter) error {
	switch {
	case d.Status == store.DeadLetterPurged:
		return fmt.Errorf("retry %s: %w", d.ID, store.ErrDeadLetterPurged)
	case !envelope.RetryTarget(d.OriginalTopic):
		return fmt.Errorf("%w: %s: original topic %q is not a retry target (only %v)", ErrNotRetryable, d.ID,
			envelope.Clip(d.OriginalTopic, 64), envelope.RetryTargets)
	case d.PayloadTruncated:
		return fmt.Errorf("%w: %s: only the first bytes of its oversized payload were kept", ErrNotRetryable, d.ID)
	}
	return nil
}

// RetryNow republishes one entry now, whatever its schedule, and returns it as stored afterwards (status
// retried). Errors: store.ErrNotFound; store.ErrDeadLetterPurged; store.ErrDeadLetterBusy (another retrier
// is republishing it right now); ErrNotRetryable; ErrRepublish (Kafka failed; the entry is unchanged).
func (r *Retrier) RetryNow(ctx context.Context, id, actor string) (store.DeadLetter, error) {
	var claimed store.DeadLetter
	for attempt := 0; ; attempt++ {
		d, err := r.store.Get(ctx, id)
		if err != nil {
			return store.DeadLetter{}, err
		}
		if err := retryable(d); err != nil {
			return store.DeadLetter{}, err
		}
		claimed, err = r.store.Claim(ctx, d, store.Claim{Owner: r.owner, Lease: r.lease, Actor: actor})
		if errors.Is(err, store.ErrConflict) && attempt < 3 {
			continue // changed between our read and the claim: read it again
		}
		if err != nil {
			return store.DeadLetter{}, err
		}
		break
	}
	done, failed := r.republish(ctx, []store.DeadLetter{claimed}, actor, nil)
	if len(failed) > 0 {
		return store.DeadLetter{}, failed[0]
	}
	return done[0], nil
}

// DefaultRetryStatuses are the statuses RetryMatching takes when the filter names none: what waits (pending
// retries, parked entries). Retried entries went back already (a new failure is a new entry) and purged
// ones are never retried; name the retried status explicitly to republish retried entries again.
var DefaultRetryStatuses = []store.DeadLetterStatus{store.DeadLetterPendingRetry, store.DeadLetterRetrying, store.DeadLetterParked}

// RetryMatching republishes every entry matching f now (purged ones never; see DefaultRetryStatuses when
// f names no status) and returns how many it republished. Entries another retrier holds, or that cannot
// be retried, are skipped. err is non-nil if some could not be republished (Kafka failed); those are left
// as they were and the count covers the others.
func (r *Retrier) RetryMatching(ctx context.Context, f store.DeadLetterFilter, actor string) (int64, error) {
	if len(f.Statuses) == 0 {
		f.Statuses = DefaultRetryStatuses
	}
	var count int64
	var failures []error
	err := r.store.Each(ctx, f, DefaultBatchSize, func(page []store.DeadLetter) error {
		var claimed []store.DeadLetter
		for _, d := range page {
			if d.Status == store.DeadLetterPurged || retryable(d) != nil {
				continue
			}
			c, err := r.store.Claim(ctx, d, store.Claim{Owner: r.owner, Lease: r.lease, Actor: actor})
			switch {
			case err == nil:
				claimed = append(claimed, c)
			case errors.Is(err, store.ErrConflict), errors.Is(err, store.ErrDeadLetterBusy),
				errors.Is(err, store.ErrDeadLetterPurged), errors.Is(err, store.ErrNotFound):
				// Someone else is on it, or it changed meanwhile: not ours to count.
			default:
				return err
			}
		}
		done, failed := r.republish(ctx, claimed, actor, nil)
		count += int64(len(done))
		failures = append(failures, failed...)
		return ctx.Err()
	})
	if err != nil {
		return count, err
	}
	if len(failures) > 0 {
		return count, fmt.Errorf("%d dead letters not republished: %w", len(failures), failures[0])
	}
	return count, nil
}

// onFailure decides where a claimed entry goes when its republish failed: status and next retry time.
// nil: back to the status it was claimed from, with its earlier retry time.
type onFailure func(d store.DeadLetter) (store.DeadLetterStatus, *time.Time)

// republish produces the claimed entries to their original topics in one call, then marks each retried or
// releases it (onFail decides how). It returns the entries marked retried and one error per failure.
// The produce and the bookkeeping run even if ctx is cancelled meanwhile (bounded by half the lease), so a
// caller that goes away does not leave a claim to expire.
func (r *Retrier) republish(ctx context.Context, claimed []store.DeadLetter, actor string, onFail onFailure) ([]store.DeadLetter, []error) {
	if len(claimed) == 0 {
		return nil, nil
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.lease/2)
	defer cancel()
	recs := make([]*kgo.Record, len(claimed))
	for i, d := range claimed {
		recs[i] = RetryRecord(d)
	}
	results := r.producer.ProduceSync(wctx, recs...)
	var done []store.DeadLetter
	var failed []error
	for i, d := range claimed {
		if err := results[i].Err; err != nil {
			r.metrics.Retries.WithLabelValues(ResultFailed).Inc()
			status, next := d.ClaimedFrom, (*time.Time)(nil)
			if onFail != nil {
				status, next = onFail(d)
			}
			if status != store.DeadLetterParked && status != store.DeadLetterRetried {
				status = store.DeadLetterPendingRetry
			}
			if _, rerr := r.store.Release(wctx, d, status, next, "republish failed: "+err.Error(), actor); rerr != nil {
				r.logger.WarnContext(ctx, "releasing a dead letter after a failed republish; its lease will expire instead",
					"id", d.ID, "error", rerr)
			}
			r.logger.WarnContext(ctx, "republish of a dead letter failed", "id", d.ID, "topic", d.OriginalTopic, "actor", actor, "error", err)
			failed = append(failed, fmt.Errorf("%w: %s to %s: %w", ErrRepublish, d.ID, d.OriginalTopic, err))
			continue
		}
		r.metrics.Retries.WithLabelValues(ResultRepublished).Inc()
		stored, err := r.store.MarkRetried(wctx, d, actor)
		if err != nil {
			// Republished, but the claim was lost (lease expired): whoever took it over republishes again,
			// and the pipeline drops the duplicate. Report what we did.
			r.logger.WarnContext(ctx, "dead letter republished but not marked retried", "id", d.ID, "error", err)
			stored = d
			stored.Status = store.DeadLetterRetried
		}
		rec := results[i].Record
		r.logger.InfoContext(ctx, "dead letter republished", "id", d.ID, "topic", rec.Topic, "partition", rec.Partition,
			"offset", rec.Offset, "attempts", d.Attempts, "tenant_id", d.TenantID, "actor", actor)
		done = append(done, stored)
	}
	return done, failed
}
