package pipeline

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/observability"
	"github.com/msgplatform/platform/internal/tracing"
)

// Stage names, used in metrics and in the dlq.stage header (defined in internal/envelope).
const (
	StageAuthenticate = envelope.StageAuthenticate
	StageDeserialize  = envelope.StageDeserialize
	StageValidate     = envelope.StageValidate
	StageTenant       = envelope.StageTenant
	StageAuthorize    = envelope.StageAuthorize
	StageTransform    = envelope.StageTransform
	StagePersist      = envelope.StagePersist
	StageNotify       = envelope.StageNotify
	// StageMetrics only counts what went all the way through; it never fails a record.
	StageMetrics = "metrics"
)

// Stage is one step of the pipeline. Process gets a Batch: one partition's items still alive, in offset
// order, with what the poll's partitions share (its reads). It marks the items it cannot handle with
// Item.Fail and sets its outputs only on success, so a transient failure can be retried by calling
// Process again with a batch of the failed items.
type Stage interface {
	Name() string
	Process(ctx context.Context, b *Batch)
}

// runner runs batches through the stages, retrying transient failures, and records stage metrics.
type runner struct {
	stages       []Stage
	retryInitial time.Duration
	retryMax     time.Duration
	retryTimeout time.Duration
	stageTimeout time.Duration
	now          func() time.Time
	logger       *slog.Logger

	processed *prometheus.CounterVec
	failed    *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	retries   *prometheus.CounterVec
	// onRetry, when set, hears of every stage retry, with the partition of the batch retried.
	onRetry func(partition int32)
	// tracer traces each stage attempt (tracing.go); nil when tracing is off.
	tracer trace.Tracer
}

func newRunner(stages []Stage, cfg Config, reg prometheus.Registerer, logger *slog.Logger) (*runner, error) {
	r := &runner{
		stages: stages, retryInitial: cfg.RetryInitial, retryMax: cfg.RetryMax, retryTimeout: cfg.TransientRetryTimeout,
		stageTimeout: cfg.StageTimeout, now: time.Now, logger: logger, tracer: tracing.Tracer(cfg.TracerProvider),
		processed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: observability.Namespace, Subsystem: "pipeline", Name: "stage_processed_total",
			Help: "Records that passed a stage.",
		}, []string{"stage"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: observability.Namespace, Subsystem: "pipeline", Name: "stage_failed_total",
			Help: "Record failures in a stage by error class (each transient attempt counts).",
		}, []string{"stage", "class"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: observability.Namespace, Subsystem: "pipeline", Name: "stage_duration_seconds",
			Help:    "Duration of a stage over one partition's batch (one attempt).",
			Buckets: []float64{.0001, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"stage"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: observability.Namespace, Subsystem: "pipeline", Name: "stage_retries_total",
			Help: "Retries of a stage after transient failures (consumption is paused meanwhile).",
		}, []string{"stage"}),
	}
	for _, c := range []prometheus.Collector{r.processed, r.failed, r.duration, r.retries} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register pipeline stage metrics: %w", err)
		}
	}
	for _, s := range stages {
		r.processed.WithLabelValues(s.Name())
		r.retries.WithLabelValues(s.Name())
	}
	return r, nil
}

// process runs one partition's batch through every stage, in order. When it returns nil, every item has
// either passed all stages or failed for good (to be dead-lettered). It returns an error only when ctx
// ended while transient failures were still being retried: the batch is then abandoned, uncommitted.
func (r *runner) process(ctx context.Context, b *Batch) error {
	return r.processStages(ctx, b, r.stages)
}

// processStages is process over some of the stages (a phase of the pipelined loop).
func (r *runner) processStages(ctx context.Context, b *Batch, stages []Stage) error {
	items := b.Items
	live := make([]*Item, 0, len(items))
	for _, st := range stages {
		live = live[:0]
		for _, it := range items {
			if !it.Failed() {
				live = append(live, it)
			}
		}
		if len(live) == 0 {
			return nil
		}
		if err := r.runStage(ctx, st, &Batch{Partition: b.Partition, Items: live, Reads: b.Reads}); err != nil {
			return err
		}
	}
	return nil
}

// runStage runs st until none of b's items fails transiently, with capped exponential backoff and jitter
// between attempts over the items that failed.
func (r *runner) runStage(ctx context.Context, st Stage, b *Batch) error {
	name := st.Name()
	live := b.Items
	var bo *backoff.ExponentialBackOff
	for attempt := 1; ; attempt++ {
		start := time.Now()
		sctx, cancel := context.WithTimeout(ctx, r.stageTimeout)
		var spans *stageSpans
		if r.tracer != nil {
			sctx, spans = r.startSpans(sctx, name, b.Partition, live, attempt)
		}
		st.Process(sctx, &Batch{Partition: b.Partition, Items: live, Reads: b.Reads})
		spans.end(live)
		cancel()
		r.duration.WithLabelValues(name).Observe(time.Since(start).Seconds())

		now := r.now()
		var retry []*Item
		passed := 0
		for _, it := range live {
			if !it.Failed() {
				passed++
				continue
			}
			it.stage = name
			it.attempts++
			if it.firstFailedAt.IsZero() {
				it.firstFailedAt = now
			}
			r.failed.WithLabelValues(name, string(it.class)).Inc()
			if it.class != Transient {
				continue
			}
			if r.retryTimeout > 0 && now.Sub(it.firstFailedAt) >= r.retryTimeout {
				continue // given up on: dead-lettered with class transient
			}
			retry = append(retry, it)
		}
		r.processed.WithLabelValues(name).Add(float64(passed)) // once per attempt: not a label lookup per record
		if len(retry) == 0 {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("stage %s: %d records still failing at shutdown: %w", name, len(retry), err)
		}
		if bo == nil {
			bo = &backoff.ExponentialBackOff{InitialInterval: r.retryInitial, RandomizationFactor: 0.5, Multiplier: 2, MaxInterval: r.retryMax}
			bo.Reset()
		}
		delay := bo.NextBackOff()
		r.retries.WithLabelValues(name).Inc()
		first := retry[0]
		if r.onRetry != nil {
			r.onRetry(b.Partition)
		}
		r.logger.WarnContext(ctx, "transient failure; retrying the stage (consumption paused)",
			"stage", name, "attempt", attempt, "records", len(retry), "retry_in", delay.Round(time.Millisecond).String(),
			"partition", first.Record.Partition, "offset", first.Record.Offset, "error", first.err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("stage %s: %d records still failing at shutdown: %w", name, len(retry), ctx.Err())
		case <-time.After(delay):
		}
		for _, it := range retry {
			it.err, it.class, it.stage = nil, "", ""
		}
		live = retry
	}
}
