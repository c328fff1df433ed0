// Package health runs the dependency checks in the background and serves their latest results: the
// platform.v1 HealthService, the standard grpc.health.v1 statuses, and /healthz and /readyz.
// Probes read the cached results, so a probe storm never turns into a storm on MongoDB, Redis or Kafka.
package health

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// Status is the result of one dependency check.
type Status int

// The statuses a check can report.
const (
	StatusUnknown     Status = iota // not checked yet
	StatusUp                        // answered within the timeout
	StatusDown                      // failed or timed out
	StatusUnsupported               // the server lacks the capability; not an outage
	StatusDegraded                  // reachable and working, but not keeping up (e.g. a stalled consumer)
)

func (s Status) String() string {
	switch s {
	case StatusUp:
		return "up"
	case StatusDown:
		return "down"
	case StatusUnsupported:
		return "unsupported"
	case StatusDegraded:
		return "degraded"
	default:
		return "unknown"
	}
}

// Dependency names, as reported by /v1/health, /readyz and the grpc.health.v1 service needs.
const (
	MongoDB       = "mongodb"
	Redis         = "redis"
	Kafka         = "kafka"
	ChangeStreams = "change_streams"
	// MongoDBCircuit is the store's circuit breaker: not required (an open circuit is MongoDB's outage,
	// which the mongodb check already reports), DOWN while open.
	MongoDBCircuit = "mongodb_circuit"
	// Pipeline is the ingest pipeline's progress on messages.inbound, read from the group's commits: not
	// required (messages accepted meanwhile wait safely in Kafka), DEGRADED while a partition stalls.
	Pipeline = "pipeline"
)

// ErrUnsupported, returned (wrapped) by a check, reports a capability the server does not offer.
var ErrUnsupported = errors.New("unsupported")

// ErrDegraded, returned (wrapped) by a check, reports a dependency that works but does not keep up; the
// error's text says why.
var ErrDegraded = errors.New("degraded")

// Dependency is something the service needs, with the check that probes it.
type Dependency struct {
	Name string
	// Required dependencies make the server NOT_SERVING while they are down.
	Required bool
	// Check returns nil when the dependency is usable, an error wrapping ErrUnsupported when it is
	// reachable but lacks the capability, one wrapping ErrDegraded when it works but does not keep up, or
	// another error when it is down. It must honour ctx.
	Check func(ctx context.Context) error
}

// Result is the latest check of one dependency.
type Result struct {
	Name      string
	Required  bool
	Status    Status
	Latency   time.Duration
	LastError string // kept until a check succeeds
	Detail    string // why a capability is unsupported
	CheckedAt time.Time
}

// Checker runs every dependency's check periodically and keeps the latest results.
type Checker struct {
	deps     []Dependency
	interval time.Duration
	timeout  time.Duration
	logger   *slog.Logger
	now      func() time.Time

	mu       sync.RWMutex
	results  []Result
	draining bool
	watchers []func(Snapshot)
}

// Snapshot is a consistent view of the checker's state.
type Snapshot struct {
	Results  []Result
	Draining bool
}

// Ready reports whether every required dependency is up and the server is not draining.
func (s Snapshot) Ready() bool {
	if s.Draining {
		return false
	}
	for _, r := range s.Results {
		if r.Required && r.Status != StatusUp {
			return false
		}
	}
	return true
}

// Failing names the required dependencies that are not up.
func (s Snapshot) Failing() []string {
	var names []string
	for _, r := range s.Results {
		if r.Required && r.Status != StatusUp {
			names = append(names, r.Name)
		}
	}
	return names
}

// Degraded reports whether an optional dependency is down or unsupported.
func (s Snapshot) Degraded() bool {
	for _, r := range s.Results {
		if !r.Required && r.Status != StatusUp {
			return true
		}
	}
	return false
}

// Up reports whether every named dependency is up; unknown names count as down.
func (s Snapshot) Up(names ...string) bool {
	for _, n := range names {
		ok := false
		for _, r := range s.Results {
			if r.Name == n && r.Status == StatusUp {
				ok = true
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// NewChecker returns a checker over deps; nothing runs until Run or CheckNow.
func NewChecker(deps []Dependency, interval, timeout time.Duration, logger *slog.Logger) *Checker {
	results := make([]Result, len(deps))
	for i, d := range deps {
		results[i] = Result{Name: d.Name, Required: d.Required}
	}
	return &Checker{deps: deps, interval: interval, timeout: timeout, logger: logger, now: time.Now, results: results}
}

// Watch registers fn to be called with every new snapshot (after each round of checks and on drain).
func (c *Checker) Watch(fn func(Snapshot)) {
	c.mu.Lock()
	c.watchers = append(c.watchers, fn)
	c.mu.Unlock()
	fn(c.Snapshot())
}

// Snapshot returns the latest results.
func (c *Checker) Snapshot() Snapshot {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return Snapshot{Results: slices.Clone(c.results), Draining: c.draining}
}

// SetDraining marks the server as shutting down: readiness fails from now on, whatever the checks say.
func (c *Checker) SetDraining() {
	c.mu.Lock()
	c.draining = true
	c.mu.Unlock()
	c.notify()
}

// Run checks at once, then every interval, until ctx is done.
func (c *Checker) Run(ctx context.Context) {
	t := time.NewTicker(c.interval)
	defer t.Stop()
	for {
		c.CheckNow(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// CheckNow runs every check once, concurrently, each bounded by the check timeout.
func (c *Checker) CheckNow(ctx context.Context) {
	fresh := make([]Result, len(c.deps))
	var wg sync.WaitGroup
	for i, d := range c.deps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fresh[i] = c.check(ctx, d)
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return // a cancelled round says nothing about the dependencies
	}

	c.mu.Lock()
	for i, r := range fresh {
		prev := c.results[i]
		if r.Status != StatusDown && r.Status != StatusDegraded {
			r.LastError = ""
		} else if r.LastError == "" {
			r.LastError = prev.LastError
		}
		if prev.Status != r.Status && prev.Status != StatusUnknown {
			c.logger.Warn("dependency status changed", "dependency", r.Name, "from", prev.Status.String(),
				"to", r.Status.String(), "error", r.LastError)
		}
		c.results[i] = r
	}
	c.mu.Unlock()
	c.notify()
}

func (c *Checker) check(ctx context.Context, d Dependency) Result {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	start := c.now()
	err := d.Check(ctx)
	r := Result{Name: d.Name, Required: d.Required, Latency: c.now().Sub(start), CheckedAt: c.now(), Status: StatusUp}
	switch {
	case errors.Is(err, ErrUnsupported):
		r.Status, r.Detail = StatusUnsupported, err.Error()
	case errors.Is(err, ErrDegraded):
		r.Status, r.LastError = StatusDegraded, err.Error()
	case err != nil:
		r.Status, r.LastError = StatusDown, err.Error()
	}
	return r
}

func (c *Checker) notify() {
	snap := c.Snapshot()
	c.mu.RLock()
	watchers := slices.Clone(c.watchers)
	c.mu.RUnlock()
	for _, fn := range watchers {
		fn(snap)
	}
}
