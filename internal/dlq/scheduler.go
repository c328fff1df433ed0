package dlq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/msgplatform/platform/internal/store"
)

// Scheduler republishes due transient dead letters to their original topic and parks the exhausted ones.
// Run one per pipeline replica: claims keep replicas from republishing an entry twice.
type Scheduler struct {
	cfg     Config
	store   *store.DeadLetters
	retrier *Retrier
	metrics *Metrics
	logger  *slog.Logger
	actor   string
}

// NewScheduler returns a scheduler over st republishing through producer, claiming as cfg.Owner; it
// registers the DLQ gauges on m's registry. m and logger may be nil.
func NewScheduler(cfg Config, st *store.DeadLetters, producer Producer, m *Metrics, logger *slog.Logger) (*Scheduler, error) {
	cfg = cfg.withDefaults()
	if m == nil {
		m = discardMetrics()
	}
	if err := m.registerGauges(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "dlq-scheduler")
	return &Scheduler{
		cfg: cfg, store: st, metrics: m, logger: logger, actor: "scheduler " + cfg.Owner,
		retrier: NewRetrier(st, producer, m, logger, cfg),
	}, nil
}

// Run makes a pass every Interval and refreshes the gauges every StatsInterval until ctx ends. A failing
// pass is logged and tried again at the next tick. It returns nil when ctx ends.
func (s *Scheduler) Run(ctx context.Context) error {
	s.logger.Info("dlq retry scheduler running", "owner", s.cfg.Owner, "interval", s.cfg.Interval.String(),
		"max_attempts", s.cfg.Policy.MaxAttempts, "initial_delay", s.cfg.Policy.InitialDelay.String(),
		"max_delay", s.cfg.Policy.MaxDelay.String(), "lease", s.cfg.Lease.String())
	tick := time.NewTicker(s.cfg.Interval)
	defer tick.Stop()
	var lastStats time.Time
	for {
		if _, _, err := s.RunOnce(ctx); err != nil && ctx.Err() == nil {
			s.logger.WarnContext(ctx, "dlq retry pass failed; trying again at the next tick", "error", err)
		}
		if time.Since(lastStats) >= s.cfg.StatsInterval && ctx.Err() == nil {
			if err := s.RefreshGauges(ctx); err != nil && ctx.Err() == nil {
				s.logger.WarnContext(ctx, "refreshing dlq gauges", "error", err)
			}
			lastStats = time.Now()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// RunOnce handles every entry due now: claims it, parks it if its attempts are exhausted, else republishes
// it (a failed republish goes back to pending_retry with the next delay). It returns how many it
// republished and parked. Entries another replica holds are left to it.
func (s *Scheduler) RunOnce(ctx context.Context) (republished, parked int, err error) {
	for ctx.Err() == nil {
		due, err := s.store.Due(ctx, s.cfg.BatchSize)
		if err != nil {
			return republished, parked, err
		}
		if len(due) == 0 {
			return republished, parked, nil
		}
		var claimed []store.DeadLetter
		parkedBefore := parked
		for _, d := range due {
			c, err := s.store.Claim(ctx, d, store.Claim{Owner: s.cfg.Owner, Lease: s.cfg.Lease, OnlyDue: true, Actor: s.actor})
			switch {
			case err == nil:
			case errors.Is(err, store.ErrConflict), errors.Is(err, store.ErrDeadLetterBusy), errors.Is(err, store.ErrDeadLetterNotDue),
				errors.Is(err, store.ErrDeadLetterPurged), errors.Is(err, store.ErrNotFound):
				continue // another replica or an operator got there first
			default:
				return republished, parked, err
			}
			// The policy applies to automatic retries; a claim taken over from an operator's retry finishes it.
			if c.ClaimedFrom == store.DeadLetterPendingRetry && s.cfg.Policy.Exhausted(c.Attempts) {
				if _, err := s.store.Release(ctx, c, store.DeadLetterParked, nil, exhaustedNote(c.Attempts, s.cfg.Policy.MaxAttempts), s.actor); err != nil {
					return republished, parked, err
				}
				s.metrics.Parked.Inc()
				parked++
				s.logger.WarnContext(ctx, "dead letter parked: attempts exhausted", "id", c.ID, "attempts", c.Attempts,
					"stage", c.Stage, "tenant_id", c.TenantID)
				continue
			}
			if err := retryable(c); err != nil {
				if _, err := s.store.Release(ctx, c, store.DeadLetterParked, nil, err.Error(), s.actor); err != nil {
					return republished, parked, err
				}
				s.metrics.Parked.Inc()
				parked++
				continue
			}
			claimed = append(claimed, c)
		}
		done, failed := s.retrier.republish(ctx, claimed, s.actor, func(d store.DeadLetter) (store.DeadLetterStatus, *time.Time) {
			if d.ClaimedFrom != store.DeadLetterPendingRetry {
				return d.ClaimedFrom, nil
			}
			next := s.store.Now().Add(s.cfg.Policy.Delay(d.Attempts))
			return store.DeadLetterPendingRetry, &next
		})
		republished += len(done)
		if len(failed) > 0 {
			return republished, parked, fmt.Errorf("%d dead letters not republished: %w", len(failed), failed[0])
		}
		if len(due) < s.cfg.BatchSize || len(claimed)+parked-parkedBefore == 0 {
			return republished, parked, nil
		}
	}
	return republished, parked, ctx.Err()
}

func exhaustedNote(attempts, maxAttempts int) string {
	return fmt.Sprintf("attempts exhausted (%d of at most %d)", attempts, maxAttempts)
}

// RefreshGauges sets the entries and oldest-pending-age gauges from the store.
func (s *Scheduler) RefreshGauges(ctx context.Context) error {
	st, err := s.store.Stats(ctx, "")
	if err != nil {
		return err
	}
	for _, status := range store.DeadLetterStatuses {
		s.metrics.Entries.WithLabelValues(string(status)).Set(float64(st.ByStatus[status]))
	}
	age := 0.0
	if st.OldestPending != nil {
		age = max(s.store.Now().Sub(*st.OldestPending).Seconds(), 0)
	}
	s.metrics.OldestPendingAge.Set(age)
	return nil
}
