// Package ratelimit holds the quotas: a token bucket per principal (subject of a tenant) and one per
// tenant, kept in Redis so every gateway replica charges the same buckets. One Lua script checks both and
// charges both only when both have room, in one round trip, on Redis's clock (GCRA: one timestamp per
// bucket). When Redis does not answer in time the limiter fails open to an in-process limiter with the
// same parameters, says so in metrics and the log, and goes back to Redis once it answers again. The
// gRPC interceptors (interceptor.go) charge every authenticated call.
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/msgplatform/platform/internal/observability"
)

// Limit is one quota: a bucket of Burst cost units refilled at Rate units per second. Rate 0 disables it.
type Limit struct {
	Rate  float64
	Burst int
}

func (l Limit) enabled() bool { return l.Rate > 0 }

// Scope names a quota.
type Scope string

// The quotas; ScopeNone is the decisions metric's scope of an allowed call (and of a Result without quota).
const (
	ScopePrincipal Scope = "principal"
	ScopeTenant    Scope = "tenant"
	ScopeNone      Scope = "none"
)

// Config is what New needs. Zero durations and sizes take the defaults.
type Config struct {
	Principal, Tenant Limit
	// Timeout bounds one Redis check; past it the call is decided locally. Default 75 ms.
	Timeout time.Duration
	// ProbeEvery is how often, while Redis is unreachable, one call tries it again; the others are decided
	// locally at once rather than each waiting for a timeout. Default 1 s.
	ProbeEvery time.Duration
	// LocalBuckets bounds the in-process limiter's memory. Default 100 000 buckets.
	LocalBuckets int
	// Clock is the in-process limiter's and the probe's time (tests); default time.Now. Redis uses its own.
	Clock func() time.Time
}

// Result is a decision and the numbers of the quota it is about: the one that refused (the one with the
// longer wait when both did), else the tighter one, the one with the fewest units left.
type Result struct {
	Allowed    bool
	Scope      Scope // ScopeNone when no quota is enabled
	Limit      Limit
	Remaining  int           // cost units left now, after this call if it was charged
	Reset      time.Duration // until the bucket is full again
	RetryAfter time.Duration // until this call would fit; 0 when allowed
	Local      bool          // decided by the in-process limiter: Redis was unreachable
}

// Limiter charges calls to the quotas. Use New.
type Limiter struct {
	rdb       redis.Scripter
	principal Limit
	tenant    Limit
	timeout   time.Duration
	probe     time.Duration
	clock     func() time.Time
	local     *local
	logger    *slog.Logger
	metrics   *metrics

	redisDown atomic.Bool
	nextProbe atomic.Int64 // clock's UnixNano after which, while redisDown, one call tries Redis again

	owned *redis.Client // the client NewForClient made, closed by Close
}

// Enabled reports whether cfg sets any quota. A limiter without one charges nothing; callers may as well
// not install it.
func (c Config) Enabled() bool { return c.Principal.enabled() || c.Tenant.enabled() }

// NewForClient returns a limiter over a Redis client of its own to base's server: base's address,
// credentials and TLS, a pool of its own, but one that gives up when a check's context ends
// (ContextTimeoutEnabled: Timeout then bounds a hung server, not only an unreachable one) and never
// retries (a failed check is decided locally at once, and Redis probed again after ProbeEvery). Close
// closes that client.
func NewForClient(base *redis.Client, cfg Config, reg prometheus.Registerer, logger *slog.Logger) (*Limiter, error) {
	if base == nil {
		return nil, errors.New("ratelimit: no Redis client")
	}
	opts := *base.Options()
	opts.ContextTimeoutEnabled = true
	opts.MaxRetries = -1
	rdb := redis.NewClient(&opts)
	l, err := New(rdb, cfg, reg, logger)
	if err != nil {
		_ = rdb.Close()
		return nil, err
	}
	l.owned = rdb
	return l, nil
}

// Close releases the Redis client NewForClient made; a limiter from New owns nothing.
func (l *Limiter) Close() error {
	if l.owned == nil {
		return nil
	}
	return l.owned.Close()
}

// New returns a limiter over rdb, registering its metrics on reg.
func New(rdb redis.Scripter, cfg Config, reg prometheus.Registerer, logger *slog.Logger) (*Limiter, error) {
	for _, q := range []struct {
		scope Scope
		l     Limit
	}{{ScopePrincipal, cfg.Principal}, {ScopeTenant, cfg.Tenant}} {
		if q.l.Rate < 0 || (q.l.enabled() && q.l.Burst < MutationCost) {
			return nil, fmt.Errorf("ratelimit: %s quota %g/s burst %d: want a rate ≥ 0 and, when set, a burst ≥ %d (a mutation's cost)",
				q.scope, q.l.Rate, q.l.Burst, MutationCost)
		}
	}
	if rdb == nil {
		return nil, errors.New("ratelimit: no Redis client")
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	l := &Limiter{rdb: rdb, principal: cfg.Principal, tenant: cfg.Tenant, timeout: cfg.Timeout, probe: cfg.ProbeEvery,
		clock: cfg.Clock, logger: logger, metrics: m}
	if l.timeout <= 0 {
		l.timeout = 75 * time.Millisecond
	}
	if l.probe <= 0 {
		l.probe = time.Second
	}
	if l.clock == nil {
		l.clock = time.Now
	}
	if cfg.LocalBuckets <= 0 {
		cfg.LocalBuckets = 100_000
	}
	l.local = newLocal(cfg.LocalBuckets, l.clock)
	m.redisUp.Set(1)
	return l, nil
}

// Allow charges cost units to the quotas of subject in tenant, or to neither when one has no room.
// It fails only when ctx ends; a Redis failure makes the in-process limiter decide instead.
func (l *Limiter) Allow(ctx context.Context, tenant, subject string, cost int) (Result, error) {
	tenantTag := tag(tenant)
	buckets := make([]bucket, 0, 2)
	if l.principal.enabled() {
		buckets = append(buckets, newBucket(ScopePrincipal, principalKey(tenantTag, subject), l.principal))
	}
	if l.tenant.enabled() {
		buckets = append(buckets, newBucket(ScopeTenant, tenantKey(tenantTag), l.tenant))
	}
	if len(buckets) == 0 {
		return Result{Allowed: true, Scope: ScopeNone}, nil
	}
	if probe, ok := l.tryRedis(); ok {
		rctx, cancel := context.WithTimeout(ctx, l.timeout)
		allowed, outs, err := redisAllow(rctx, l.rdb, cost, buckets)
		cancel()
		if err == nil {
			if probe {
				l.redisAnswered()
			}
			return l.record(result(allowed, buckets, outs)), nil
		}
		if ctx.Err() != nil { // the caller left: not Redis's failure
			return Result{}, ctx.Err()
		}
		l.redisFailed(err)
	}
	l.metrics.fallback.Inc()
	allowed, outs := l.local.allow(tenantTag, cost, buckets)
	r := result(allowed, buckets, outs)
	r.Local = true
	return l.record(r), nil
}

// tryRedis reports whether this call should ask Redis (ok): always while it answers; while it does not,
// one call per ProbeEvery, the probe. Only a probe's answer marks Redis up again: a call that was sent
// before Redis was marked down and answered after does not, so a Redis that answers some calls and
// times out others switches (and logs) at most twice per ProbeEvery rather than at every call.
func (l *Limiter) tryRedis() (probe, ok bool) {
	if !l.redisDown.Load() {
		return false, true
	}
	next, now := l.nextProbe.Load(), l.clock().UnixNano()
	ok = now >= next && l.nextProbe.CompareAndSwap(next, now+l.probe.Nanoseconds())
	return ok, ok
}

func (l *Limiter) redisFailed(err error) {
	l.nextProbe.Store(l.clock().Add(l.probe).UnixNano())
	if l.redisDown.CompareAndSwap(false, true) {
		l.metrics.redisUp.Set(0)
		l.logger.Warn("rate limiter: Redis unreachable; quotas are enforced per replica by the in-process limiter until it answers again",
			"error", err, "probe_every", l.probe)
	}
}

func (l *Limiter) redisAnswered() {
	if l.redisDown.CompareAndSwap(true, false) {
		l.metrics.redisUp.Set(1)
		l.logger.Info("rate limiter: Redis answers again; quotas are shared by the replicas again")
	}
}

func (l *Limiter) record(r Result) Result {
	scope := ScopeNone
	if !r.Allowed {
		scope = r.Scope
	}
	l.metrics.decisions.WithLabelValues(string(scope), resultLabel(r.Allowed)).Inc()
	return r
}

func resultLabel(allowed bool) string {
	if allowed {
		return "allowed"
	}
	return "limited"
}

// result picks the quota a decision is reported by (see Result).
func result(allowed bool, buckets []bucket, outs []outcome) Result {
	pick := 0
	for i := 1; i < len(outs); i++ {
		if allowed && outs[i].remaining < outs[pick].remaining ||
			!allowed && (!outs[i].ok && (outs[pick].ok || outs[i].retry > outs[pick].retry)) {
			pick = i
		}
	}
	o, b := outs[pick], buckets[pick]
	// At rates near 1e6/s the slack is worth units: never report more than the burst.
	return Result{Allowed: allowed, Scope: b.scope, Limit: b.limit, Remaining: min(o.remaining, b.limit.Burst),
		Reset: time.Duration(o.reset) * time.Microsecond, RetryAfter: time.Duration(o.retry) * time.Microsecond}
}

type metrics struct {
	decisions *prometheus.CounterVec
	fallback  prometheus.Counter
	redisUp   prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	decisions, err := observability.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: observability.Namespace, Subsystem: "ratelimit", Name: "decisions_total",
		Help: "Quota decisions: allowed calls (scope none), and refused ones by the quota that refused them.",
	}, []string{"scope", "result"}))
	if err != nil {
		return nil, fmt.Errorf("register rate limit metrics: %w", err)
	}
	decisions.WithLabelValues(string(ScopeNone), "allowed")
	decisions.WithLabelValues(string(ScopePrincipal), "limited")
	decisions.WithLabelValues(string(ScopeTenant), "limited")
	fallback, err := observability.Register(reg, prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: observability.Namespace, Subsystem: "ratelimit", Name: "fallback_total",
		Help: "Calls decided by the in-process limiter (quotas per replica, not shared) because Redis was unreachable.",
	}))
	if err != nil {
		return nil, fmt.Errorf("register rate limit metrics: %w", err)
	}
	redisUp, err := observability.Register(reg, prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: observability.Namespace, Subsystem: "ratelimit", Name: "redis_up",
		Help: "1 while the quotas are kept in Redis (shared by the replicas), 0 while the in-process limiter decides.",
	}))
	if err != nil {
		return nil, fmt.Errorf("register rate limit metrics: %w", err)
	}
	return &metrics{decisions: decisions, fallback: fallback, redisUp: redisUp}, nil
}
