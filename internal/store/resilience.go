package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"

	"github.com/msgplatform/platform/internal/observability"
)

// countsAsFailure reports whether err says "MongoDB is not answering" (a breaker failure) rather than
// "MongoDB answered no" (not found, duplicate key, validation: a breaker success).
func countsAsFailure(err error) bool {
	return err != nil && !errors.Is(err, ErrUnavailable) && !errors.Is(err, context.Canceled) && IsTransient(err)
}

// Default retry policy: 50ms, 100ms, 200ms, ... capped at 1s, ±50% jitter, for at most 5s in all.
const (
	DefaultRetryInitial    = 50 * time.Millisecond
	DefaultRetryMax        = time.Second
	DefaultRetryMaxElapsed = 5 * time.Second
)

// RetryPolicy retries an idempotent operation on transient errors (see Retryable) with capped
// exponential backoff and jitter. Zero fields take the defaults above. It stops at the first success,
// the first non-retryable error, after MaxElapsed, or when ctx ends, whichever comes first.
type RetryPolicy struct {
	Initial    time.Duration // first delay
	Max        time.Duration // cap of one delay
	MaxElapsed time.Duration // no new attempt starts after this much time since the first
}

// Do calls op until it succeeds or must stop; op gets ctx. The error is op's last error, or, when ctx
// ended, ctx's error joined with op's last error (so both errors.Is checks hold).
func (p RetryPolicy) Do(ctx context.Context, op func(ctx context.Context) error) error {
	b := &backoff.ExponentialBackOff{
		InitialInterval:     orDefault(p.Initial, DefaultRetryInitial),
		RandomizationFactor: 0.5,
		Multiplier:          2,
		MaxInterval:         orDefault(p.Max, DefaultRetryMax),
	}
	b.Reset()
	maxElapsed := orDefault(p.MaxElapsed, DefaultRetryMaxElapsed)
	start := time.Now()
	for {
		err := op(ctx)
		if err == nil || !Retryable(err) {
			return err
		}
		if ctx.Err() != nil {
			return errors.Join(context.Cause(ctx), err)
		}
		next := b.NextBackOff()
		if time.Since(start)+next > maxElapsed {
			return err
		}
		t := time.NewTimer(next)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return errors.Join(context.Cause(ctx), err)
		}
	}
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// BreakerConfig shapes a Breaker. Zero fields take the defaults of NewBreaker.
type BreakerConfig struct {
	// Name labels the metrics and the health dependency ("mongodb" by default).
	Name string
	// FailureRatio of failed calls (transient errors only) over the current window that opens the
	// circuit, once at least MinRequests calls were counted. Default 0.5 and 10.
	FailureRatio float64
	MinRequests  uint32
	// Window is how long the closed circuit accumulates counts before starting over (default 10s).
	Window time.Duration
	// CoolDown is how long the circuit stays open before letting probe calls through (half-open),
	// default 5s.
	CoolDown time.Duration
	// HalfOpenProbes is how many calls the half-open circuit lets through; that many successes in a
	// row close it, one failure opens it again. Default 1.
	HalfOpenProbes uint32
}

// Breaker is a circuit breaker around MongoDB calls (sony/gobreaker). Only transient errors count as
// failures: a not-found or duplicate-key answer proves the server is there. A cancelled call counts as
// neither. While open, calls fail at once with an error wrapping ErrUnavailable, without touching the
// network. It is safe for concurrent use.
type Breaker struct {
	name        string
	cb          *gobreaker.CircuitBreaker[struct{}]
	state       prometheus.Gauge       // platform_store_circuit_state{name}
	transitions *prometheus.CounterVec // platform_store_circuit_transitions_total{name,to}
}

// Circuit states as State returns them and as platform_store_circuit_state encodes them (0, 1, 2).
const (
	CircuitClosed   = "closed"
	CircuitHalfOpen = "half-open"
	CircuitOpen     = "open"
)

// NewBreaker returns a closed breaker. Its metrics are registered with reg unless reg is nil; a Breaker
// is a prometheus.Collector, so it may be registered later instead. Breakers sharing a registry need
// distinct names.
//
//	platform_store_circuit_state{name}                0 closed, 1 half-open, 2 open
//	platform_store_circuit_transitions_total{name,to}  to: closed, half-open, open
func NewBreaker(cfg BreakerConfig, reg prometheus.Registerer) (*Breaker, error) {
	cfg.Name = orDefault(cfg.Name, "mongodb")
	cfg.FailureRatio = orDefault(cfg.FailureRatio, 0.5)
	cfg.MinRequests = orDefault(cfg.MinRequests, 10)
	cfg.Window = orDefault(cfg.Window, 10*time.Second)
	cfg.CoolDown = orDefault(cfg.CoolDown, 5*time.Second)
	cfg.HalfOpenProbes = orDefault(cfg.HalfOpenProbes, 1)
	if cfg.FailureRatio < 0 || cfg.FailureRatio > 1 {
		return nil, fmt.Errorf("circuit breaker %s: failure ratio %v is not in (0, 1]", cfg.Name, cfg.FailureRatio)
	}
	name := prometheus.Labels{"name": cfg.Name}
	b := &Breaker{
		name: cfg.Name,
		state: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: observability.Namespace, Subsystem: "store", Name: "circuit_state", ConstLabels: name,
			Help: "State of the store's circuit breaker: 0 closed, 1 half-open, 2 open.",
		}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: observability.Namespace, Subsystem: "store", Name: "circuit_transitions_total", ConstLabels: name,
			Help: "State changes of the store's circuit breaker, by the state entered.",
		}, []string{"to"}),
	}
	for _, to := range []string{CircuitClosed, CircuitHalfOpen, CircuitOpen} {
		b.transitions.WithLabelValues(to) // zero series from the start
	}
	ratio, minReq := cfg.FailureRatio, cfg.MinRequests
	b.cb = gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        cfg.Name,
		MaxRequests: cfg.HalfOpenProbes,
		Interval:    cfg.Window,
		Timeout:     cfg.CoolDown,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			return c.Requests >= minReq && float64(c.TotalFailures) >= ratio*float64(c.Requests)
		},
		// Called with the breaker's lock held: only touch the metrics here.
		OnStateChange: func(_ string, _, to gobreaker.State) {
			b.state.Set(float64(to))
			b.transitions.WithLabelValues(to.String()).Inc()
		},
		IsSuccessful: func(err error) bool { return !countsAsFailure(err) },
		IsExcluded:   func(err error) bool { return errors.Is(err, context.Canceled) },
	})
	if reg != nil {
		if err := reg.Register(b); err != nil {
			return nil, fmt.Errorf("register circuit breaker %s metrics: %w", cfg.Name, err)
		}
	}
	return b, nil
}

// Describe implements prometheus.Collector.
func (b *Breaker) Describe(ch chan<- *prometheus.Desc) {
	b.state.Describe(ch)
	b.transitions.Describe(ch)
}

// Collect implements prometheus.Collector. It reads the state first, so a cool-down that has passed
// shows as half-open.
func (b *Breaker) Collect(ch chan<- prometheus.Metric) {
	_ = b.cb.State()
	b.state.Collect(ch)
	b.transitions.Collect(ch)
}

// Name returns the breaker's name.
func (b *Breaker) Name() string { return b.name }

// Do runs op through the breaker: at once with an error wrapping ErrUnavailable when the circuit is
// open, else op(ctx), whose outcome the breaker counts. op's own error is returned unchanged.
func (b *Breaker) Do(ctx context.Context, op func(ctx context.Context) error) error {
	_, err := b.cb.Execute(func() (struct{}, error) { return struct{}{}, op(ctx) })
	if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
		return fmt.Errorf("%w: circuit %s: %w", ErrUnavailable, b.name, err)
	}
	return err
}

// State returns "closed", "half-open" or "open". Reading it also moves an open circuit whose cool-down
// has passed to half-open.
func (b *Breaker) State() string { return b.cb.State().String() }

// Check is a health check: nil unless the circuit is open.
func (b *Breaker) Check(context.Context) error {
	if s := b.cb.State(); s == gobreaker.StateOpen {
		return fmt.Errorf("circuit %s is open: MongoDB calls fail fast (%w)", b.name, ErrUnavailable)
	}
	return nil
}

// Guard combines the retry policy and the circuit breaker for the repositories. A nil *Guard (or nil
// Breaker) runs operations directly, so code paths work the same without one.
type Guard struct {
	Retry   RetryPolicy
	Breaker *Breaker
}

// Read runs an idempotent operation (a read, or a write that is safe to repeat, such as an upsert by _id
// or an insert whose duplicate key is treated as success): retried on transient errors per Retry, each
// attempt through the breaker. An open circuit stops the retries at once with ErrUnavailable.
func (g *Guard) Read(ctx context.Context, op func(ctx context.Context) error) error {
	if g == nil {
		return op(ctx)
	}
	return g.Retry.Do(ctx, func(ctx context.Context) error { return g.once(ctx, op) })
}

// Write runs a non-idempotent operation once, through the breaker: it is never retried here, because a
// write whose reply was lost may have been applied (an $inc, a version bump, a new ULID).
func (g *Guard) Write(ctx context.Context, op func(ctx context.Context) error) error {
	if g == nil {
		return op(ctx)
	}
	return g.once(ctx, op)
}

func (g *Guard) once(ctx context.Context, op func(ctx context.Context) error) error {
	if g.Breaker == nil {
		return op(ctx)
	}
	return g.Breaker.Do(ctx, op)
}
