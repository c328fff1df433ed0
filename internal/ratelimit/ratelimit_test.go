package ratelimit

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/msgplatform/platform/internal/embedded"
	"github.com/msgplatform/platform/internal/testenv"
)

// step is one call of a sequence: after advance, subject of tenant is charged cost; the Result must match.
type step struct {
	advance         time.Duration
	tenant, subject string
	cost            int
	allowed         bool
	scope           Scope
	remaining       int
	reset, retry    time.Duration
}

// sequences are GCRA's arithmetic as a caller sees it. Rate 5/s: one unit per 200 ms.
var sequences = []struct {
	name              string
	principal, tenant Limit
	steps             []step
}{
	{
		name: "burst, cost 2 against 1, refill", principal: Limit{Rate: 5, Burst: 4},
		steps: []step{
			{tenant: "t1", subject: "alice", cost: 1, allowed: true, scope: ScopePrincipal, remaining: 3, reset: 200 * time.Millisecond},
			{tenant: "t1", subject: "alice", cost: 2, allowed: true, scope: ScopePrincipal, remaining: 1, reset: 600 * time.Millisecond},
			// Refused: one unit left, the mutation needs two; nothing charged.
			{tenant: "t1", subject: "alice", cost: 2, allowed: false, scope: ScopePrincipal, remaining: 1, reset: 600 * time.Millisecond, retry: 200 * time.Millisecond},
			{tenant: "t1", subject: "alice", cost: 1, allowed: true, scope: ScopePrincipal, remaining: 0, reset: 800 * time.Millisecond},
			{tenant: "t1", subject: "alice", cost: 1, allowed: false, scope: ScopePrincipal, remaining: 0, reset: 800 * time.Millisecond, retry: 200 * time.Millisecond},
			// Another principal has its own bucket.
			{tenant: "t1", subject: "bob", cost: 2, allowed: true, scope: ScopePrincipal, remaining: 2, reset: 400 * time.Millisecond},
			{advance: 200 * time.Millisecond, tenant: "t1", subject: "alice", cost: 1, allowed: true, scope: ScopePrincipal, remaining: 0, reset: 800 * time.Millisecond},
			// 500 ms refill 2.5 units: a mutation fits, half a unit is left over.
			{advance: 500 * time.Millisecond, tenant: "t1", subject: "alice", cost: 2, allowed: true, scope: ScopePrincipal, remaining: 0, reset: 700 * time.Millisecond},
			{advance: time.Second, tenant: "t1", subject: "alice", cost: 1, allowed: true, scope: ScopePrincipal, remaining: 3, reset: 200 * time.Millisecond},
		},
	},
	{
		name:      "the tenant bounds the sum of its principals, charged only when both allow",
		principal: Limit{Rate: 5, Burst: 4}, tenant: Limit{Rate: 5, Burst: 6},
		steps: []step{
			{tenant: "t1", subject: "alice", cost: 2, allowed: true, scope: ScopePrincipal, remaining: 2, reset: 400 * time.Millisecond},
			// Headers report the tighter quota: principal 0 left against the tenant's 2.
			{tenant: "t1", subject: "alice", cost: 2, allowed: true, scope: ScopePrincipal, remaining: 0, reset: 800 * time.Millisecond},
			// Refused by the principal's quota; the tenant, which had room, is not charged.
			{tenant: "t1", subject: "alice", cost: 1, allowed: false, scope: ScopePrincipal, remaining: 0, reset: 800 * time.Millisecond, retry: 200 * time.Millisecond},
			// The tenant's 2 units go to bob: now the tenant is the tighter one.
			{tenant: "t1", subject: "bob", cost: 1, allowed: true, scope: ScopeTenant, remaining: 1, reset: 1000 * time.Millisecond},
			{tenant: "t1", subject: "bob", cost: 1, allowed: true, scope: ScopeTenant, remaining: 0, reset: 1200 * time.Millisecond},
			{tenant: "t1", subject: "carol", cost: 1, allowed: false, scope: ScopeTenant, remaining: 0, reset: 1200 * time.Millisecond, retry: 200 * time.Millisecond},
			// Another tenant, and the same subject name in it, are untouched.
			{tenant: "t2", subject: "alice", cost: 2, allowed: true, scope: ScopePrincipal, remaining: 2, reset: 400 * time.Millisecond},
		},
	},
	{
		name: "tenant quota alone", tenant: Limit{Rate: 5, Burst: 2},
		steps: []step{
			{tenant: "t1", subject: "alice", cost: 1, allowed: true, scope: ScopeTenant, remaining: 1, reset: 200 * time.Millisecond},
			{tenant: "t1", subject: "bob", cost: 2, allowed: false, scope: ScopeTenant, remaining: 1, reset: 200 * time.Millisecond, retry: 200 * time.Millisecond},
			{tenant: "t1", subject: "bob", cost: 1, allowed: true, scope: ScopeTenant, remaining: 0, reset: 400 * time.Millisecond},
		},
	},
	{
		name: "no quota enabled", steps: []step{{tenant: "t1", subject: "alice", cost: 2, allowed: true, scope: ScopeNone}},
	},
}

func newTestLimiter(t testing.TB, rdb redis.Scripter, cfg Config) (*Limiter, *prometheus.Registry, *bytes.Buffer) {
	t.Helper()
	reg := prometheus.NewRegistry()
	logs := &bytes.Buffer{}
	l, err := New(rdb, cfg, reg, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return l, reg, logs
}

func redisClient(t testing.TB, addr string) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// unreachable is a Redis client that never connects.
func unreachable(t testing.TB) *redis.Client {
	return redisClient(t, testenv.FreeAddr(t))
}

// check compares a Result with a step; a Result from Redis may show up to slop less time left, since
// Redis's clock ran on while the test slept and called.
func check(t *testing.T, i int, s step, got Result, slop time.Duration) {
	t.Helper()
	// On a real clock (slop > 0) a delayed step may find one more unit refilled than the sequence says.
	extra := 0
	if slop > 0 && got.Remaining == s.remaining+1 {
		extra = 1
	}
	if got.Allowed != s.allowed || got.Scope != s.scope || got.Remaining != s.remaining+extra {
		t.Fatalf("step %d (%s/%s cost %d): allowed %v scope %s remaining %d, want %v %s %d",
			i, s.tenant, s.subject, s.cost, got.Allowed, got.Scope, got.Remaining, s.allowed, s.scope, s.remaining)
	}
	for _, d := range []struct {
		name      string
		got, want time.Duration
	}{{"reset", got.Reset, s.reset}, {"retry", got.RetryAfter, s.retry}} {
		if d.got > d.want+time.Microsecond || d.got < d.want-slop {
			t.Errorf("step %d: %s %v, want %v (−%v)", i, d.name, d.got, d.want, slop)
		}
	}
}

// The in-process limiter, on a fake clock, gives exactly the numbers of the sequences.
func TestLocalGCRA(t *testing.T) {
	for _, seq := range sequences {
		t.Run(seq.name, func(t *testing.T) {
			clock := testenv.NewClock(time.Unix(1_800_000_000, 0))
			// Redis unreachable: every call is decided locally; the probes fail fast.
			l, _, _ := newTestLimiter(t, unreachable(t), Config{Principal: seq.principal, Tenant: seq.tenant, Clock: clock.Now, ProbeEvery: time.Hour})
			for i, s := range seq.steps {
				clock.Advance(s.advance)
				got, err := l.Allow(context.Background(), s.tenant, s.subject, s.cost)
				if err != nil {
					t.Fatal(err)
				}
				if !got.Local && got.Scope != ScopeNone {
					t.Fatalf("step %d decided by Redis, want locally", i)
				}
				check(t, i, s, got, 0)
			}
		})
	}
}

// The Lua script gives the same numbers on Redis's clock, on redis-server and on miniredis (the devstack's).
func TestRedisGCRA(t *testing.T) {
	mini, err := embedded.StartRedis("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(mini.Close)
	for _, backend := range []struct{ name, addr string }{
		{"redis-server", testenv.StartRedisServer(t).Addr()},
		{"miniredis", mini.Addr()},
	} {
		for _, seq := range sequences {
			t.Run(backend.name+"/"+seq.name, func(t *testing.T) {
				rdb := redisClient(t, backend.addr)
				if err := rdb.FlushAll(context.Background()).Err(); err != nil {
					t.Fatal(err)
				}
				l, _, _ := newTestLimiter(t, rdb, Config{Principal: seq.principal, Tenant: seq.tenant, Timeout: time.Second})
				for i, s := range seq.steps {
					time.Sleep(s.advance)
					got, err := l.Allow(context.Background(), s.tenant, s.subject, s.cost)
					if err != nil {
						t.Fatal(err)
					}
					if got.Local {
						t.Fatalf("step %d decided locally, want by Redis", i)
					}
					// Redis's clock runs on while this test waits for a busy machine: time only shrinks what is
					// left to wait, by at most this much.
					check(t, i, s, got, 250*time.Millisecond)
				}
			})
		}
	}
}

// Keys are short, carry no raw id, share a Cluster slot per tenant, and expire when the bucket is full.
func TestRedisKeys(t *testing.T) {
	rdb := redisClient(t, testenv.StartRedisServer(t).Addr())
	ctx := context.Background()
	l, _, _ := newTestLimiter(t, rdb, Config{Principal: Limit{Rate: 10, Burst: 4}, Tenant: Limit{Rate: 20, Burst: 40}})
	subject := strings.Repeat("{evil}:", 18) // 126 bytes of what would break a key's structure
	if _, err := l.Allow(ctx, "tenant:{x}", subject, 2); err != nil {
		t.Fatal(err)
	}
	keys, err := rdb.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 {
		t.Fatalf("keys %v, want the principal's and the tenant's", keys)
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, keyPrefix+"{") || strings.Contains(k, "evil") || len(k) > 50 {
			t.Errorf("key %q: want %s{<tenant tag>}… of at most 50 bytes without the raw ids", k, keyPrefix)
		}
		pttl, err := rdb.PTTL(ctx, k).Result()
		if err != nil || pttl <= 0 || pttl > 200*time.Millisecond {
			t.Errorf("key %q: PTTL %v (%v), want (0, 200ms]: the time until its bucket is full", k, pttl, err)
		}
	}
	hashTag := func(k string) string { return k[strings.Index(k, "{"):strings.Index(k, "}")] }
	if hashTag(keys[0]) != hashTag(keys[1]) {
		t.Errorf("keys %v: want one hash tag, so that they share a Cluster slot", keys)
	}
	testenv.Eventually(t, "idle keys expired", 5*time.Second, func() bool {
		n, err := rdb.DBSize(ctx).Result()
		return err == nil && n == 0
	})
}

// Two replicas over one Redis charge one bucket: together they get the burst once, not twice.
func TestReplicasShareQuota(t *testing.T) {
	addr := testenv.StartRedisServer(t).Addr()
	cfg := Config{Principal: Limit{Rate: 0.01, Burst: 10}, Tenant: Limit{Rate: 0.01, Burst: 100}, Timeout: time.Second}
	a, _, _ := newTestLimiter(t, redisClient(t, addr), cfg)
	b, _, _ := newTestLimiter(t, redisClient(t, addr), cfg)
	allowed := 0
	for i := range 20 {
		l := []*Limiter{a, b}[i%2]
		r, err := l.Allow(context.Background(), "t1", "alice", 1)
		if err != nil {
			t.Fatal(err)
		}
		if r.Allowed {
			allowed++
		}
	}
	if allowed != 10 {
		t.Errorf("two replicas allowed %d reads, want 10 (one shared burst)", allowed)
	}
}

// Redis down: calls are decided by the in-process limiter at once (one probe per ProbeEvery), which
// enforces the same quota per replica; the metrics say so and the log says it once. Redis back: shared again.
func TestFailOpenAndBack(t *testing.T) {
	srv := testenv.StartRedisServer(t)
	cfg := Config{Principal: Limit{Rate: 0.01, Burst: 4}, Timeout: 100 * time.Millisecond, ProbeEvery: 50 * time.Millisecond}
	a, reg, logs := newTestLimiter(t, redisClient(t, srv.Addr()), cfg)
	b, _, _ := newTestLimiter(t, redisClient(t, srv.Addr()), cfg)
	ctx := context.Background()
	allow := func(l *Limiter, cost int) Result {
		t.Helper()
		r, err := l.Allow(ctx, "t1", "alice", cost)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	metric := func(c prometheus.Collector) float64 { return testutil.ToFloat64(c) }

	if r := allow(a, 2); !r.Allowed || r.Local || metric(a.metrics.redisUp) != 1 {
		t.Fatalf("with Redis up: %+v, redis_up %v", r, metric(a.metrics.redisUp))
	}
	srv.Stop()
	start := time.Now()
	r := allow(a, 2)
	if !r.Allowed || !r.Local || r.Remaining != 2 {
		t.Fatalf("Redis down: %+v, want allowed by a fresh local bucket with 2 left", r)
	}
	if metric(a.metrics.redisUp) != 0 || metric(a.metrics.fallback) != 1 {
		t.Errorf("redis_up %v fallback_total %v, want 0 and 1", metric(a.metrics.redisUp), metric(a.metrics.fallback))
	}
	// The local limiter enforces the quota; calls do not wait for Redis's timeout meanwhile.
	allow(a, 2)
	if r := allow(a, 1); r.Allowed || !r.Local || r.Scope != ScopePrincipal || r.RetryAfter < 99*time.Second {
		t.Errorf("local bucket spent: %+v, want refused for ~100s", r)
	}
	for range 50 {
		allow(a, 1)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("53 calls with Redis down took %v: they should not each wait for it", d)
	}
	if n := strings.Count(logs.String(), "Redis unreachable"); n != 1 {
		t.Errorf("logged the switch %d times, want once:\n%s", n, logs)
	}
	if got := testutil.ToFloat64(a.metrics.decisions.WithLabelValues("principal", "limited")); got < 50 {
		t.Errorf("decisions{principal,limited} = %v, want ≥ 50", got)
	}

	srv.Start() // empty: nothing persisted
	testenv.Eventually(t, "decisions by Redis again", 10*time.Second, func() bool { return !allow(a, 1).Local })
	if metric(a.metrics.redisUp) != 1 || !strings.Contains(logs.String(), "Redis answers again") {
		t.Errorf("Redis back: redis_up %v, log:\n%s", metric(a.metrics.redisUp), logs)
	}
	// Shared again: a (which just spent one unit in Redis) and b together get the burst once.
	n := 0
	for i := range 10 {
		if allow([]*Limiter{b, a}[i%2], 1).Allowed {
			n++
		}
	}
	if n != 3 {
		t.Errorf("after Redis came back the replicas allowed %d more reads, want 3 (4 shared, 1 spent)", n)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP platform_ratelimit_redis_up 1 while the quotas are kept in Redis (shared by the replicas), 0 while the in-process limiter decides.
# TYPE platform_ratelimit_redis_up gauge
platform_ratelimit_redis_up 1
`), "platform_ratelimit_redis_up"); err != nil {
		t.Error(err)
	}
}

// gatedScripter is a Redis whose answers the test controls: a call with a gate waits for it; a call with
// fail set fails as a timeout would.
type gatedScripter struct {
	redis.Scripter
	mu    sync.Mutex
	gate  chan struct{} // taken by the next call
	fail  bool
	calls chan struct{} // a call arrived
}

func (g *gatedScripter) EvalSha(ctx context.Context, sha string, keys []string, args ...any) *redis.Cmd {
	g.mu.Lock()
	gate, fail := g.gate, g.fail
	g.gate = nil
	g.mu.Unlock()
	g.calls <- struct{}{}
	if gate != nil {
		<-gate
	}
	if fail {
		cmd := redis.NewCmd(ctx)
		cmd.SetErr(errors.New("i/o timeout"))
		return cmd
	}
	return g.Scripter.EvalSha(ctx, sha, keys, args...)
}

// A call answered after Redis was marked down (it was sent before) does not mark it up again: only a
// probe does, so a Redis that answers some calls and times out others does not flap (nor log) per call.
func TestNoFlapping(t *testing.T) {
	clock := testenv.NewClock(time.Now())
	g := &gatedScripter{Scripter: redisClient(t, testenv.StartRedisServer(t).Addr()), calls: make(chan struct{}, 10)}
	l, _, logs := newTestLimiter(t, g, Config{Principal: Limit{Rate: 1, Burst: 100}, Timeout: time.Second, ProbeEvery: time.Second, Clock: clock.Now})
	allow := func() Result {
		r, err := l.Allow(context.Background(), "t1", "alice", 1)
		if err != nil {
			t.Error(err)
		}
		return r
	}
	allow() // loads the script
	<-g.calls

	// A is sent while Redis is up and answered late; B, sent meanwhile, fails.
	release := make(chan struct{})
	g.mu.Lock()
	g.gate = release
	g.mu.Unlock()
	late := make(chan Result)
	go func() { late <- allow() }()
	<-g.calls
	g.mu.Lock()
	g.fail = true
	g.mu.Unlock()
	if r := allow(); !r.Local {
		t.Fatalf("failed call: %+v, want decided locally", r)
	}
	<-g.calls
	g.mu.Lock()
	g.fail = false
	g.mu.Unlock()
	close(release)
	if r := <-late; r.Local {
		t.Errorf("late answer: %+v, want Redis's", r)
	}
	if !l.redisDown.Load() || testutil.ToFloat64(l.metrics.redisUp) != 0 {
		t.Error("a late answer to a call sent before the failure marked Redis up")
	}
	if r := allow(); !r.Local {
		t.Errorf("before the probe is due: %+v, want decided locally", r)
	}
	clock.Advance(time.Second)
	if r := allow(); r.Local { // the probe
		t.Errorf("probe: %+v, want Redis's answer", r)
	}
	<-g.calls
	if l.redisDown.Load() || testutil.ToFloat64(l.metrics.redisUp) != 1 {
		t.Error("the probe's answer did not mark Redis up")
	}
	if n := strings.Count(logs.String(), "Redis unreachable"); n != 1 {
		t.Errorf("logged the switch down %d times, want once:\n%s", n, logs)
	}
}

// A slow Redis is a failed one: the call waits Timeout at most, then is decided locally.
func TestRedisTimeout(t *testing.T) {
	mini, err := embedded.StartRedis("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(mini.Close)
	rdb := redisClient(t, mini.Addr())
	l, _, _ := newTestLimiter(t, rdb, Config{Principal: Limit{Rate: 1, Burst: 2}, Timeout: 50 * time.Millisecond, ProbeEvery: time.Hour})
	// CLIENT PAUSE is not in miniredis; a blocked connection pool is: one connection, held by a BLPOP.
	slow := redis.NewClient(&redis.Options{Addr: mini.Addr(), PoolSize: 1, MaxRetries: -1})
	t.Cleanup(func() { _ = slow.Close() })
	l.rdb = slow
	go slow.BLPop(context.Background(), 2*time.Second, "never")
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	r, err := l.Allow(context.Background(), "t1", "alice", 1)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); !r.Allowed || !r.Local || d > 500*time.Millisecond {
		t.Errorf("Redis busy: %+v after %v, want decided locally after about 50ms", r, d)
	}
}

// A caller who leaves is not a Redis failure.
func TestCallerGone(t *testing.T) {
	l, _, _ := newTestLimiter(t, redisClient(t, testenv.StartRedisServer(t).Addr()), Config{Principal: Limit{Rate: 1, Burst: 2}})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := l.Allow(ctx, "t1", "alice", 1); err == nil {
		t.Error("Allow with a cancelled context succeeded")
	}
	if testutil.ToFloat64(l.metrics.redisUp) != 1 || testutil.ToFloat64(l.metrics.fallback) != 0 {
		t.Error("a cancelled caller counted as Redis down")
	}
}

func TestNewRejects(t *testing.T) {
	rdb := unreachable(t)
	for _, cfg := range []Config{
		{Principal: Limit{Rate: -1, Burst: 10}},
		{Principal: Limit{Rate: 1, Burst: 1}}, // a mutation could never pass
		{Tenant: Limit{Rate: 1, Burst: 0}},
	} {
		if _, err := New(rdb, cfg, prometheus.NewRegistry(), slog.Default()); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
}

// BenchmarkAllow is the cost of one check (principal and tenant, charged together): by the Lua script
// against a real Redis on loopback (miniredis without redis-server, unless CI=true), and by the
// in-process limiter that decides while Redis is unreachable; one caller at a time, and many callers of
// many tenants in parallel.
func BenchmarkAllow(b *testing.B) {
	quotas := Config{Principal: Limit{Rate: 1e9, Burst: 1e9}, Tenant: Limit{Rate: 1e9, Burst: 1e9}}
	for _, bc := range []struct {
		name  string
		local bool
	}{{"redis", false}, {"local", true}} {
		newLimiter := func(b *testing.B) *Limiter {
			cfg := quotas
			if bc.local {
				cfg.ProbeEvery = time.Hour
				l, _, _ := newTestLimiter(b, unreachable(b), cfg)
				if r, _ := l.Allow(context.Background(), "warm", "up", 1); !r.Local { // marks Redis down
					b.Fatal("decided by Redis")
				}
				return l
			}
			cfg.Timeout = time.Second
			l, _, _ := newTestLimiter(b, redisClient(b, testenv.StartRedisServer(b).Addr()), cfg)
			return l
		}
		allow := func(b *testing.B, l *Limiter, tenant, subject string) {
			r, err := l.Allow(context.Background(), tenant, subject, 1)
			if err != nil || !r.Allowed || r.Local != bc.local {
				b.Fatalf("%+v %v", r, err)
			}
		}
		if !bc.local {
			// The floor of any Redis check: one round trip on the same loopback.
			b.Run("redis/ping", func(b *testing.B) {
				rdb := redisClient(b, testenv.StartRedisServer(b).Addr())
				for b.Loop() {
					if err := rdb.Ping(context.Background()).Err(); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
		b.Run(bc.name+"/serial", func(b *testing.B) {
			l := newLimiter(b)
			for b.Loop() {
				allow(b, l, "t1", "alice")
			}
		})
		b.Run(bc.name+"/parallel", func(b *testing.B) {
			l := newLimiter(b)
			var n atomic.Int64
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				id := strconv.FormatInt(n.Add(1), 10)
				for pb.Next() {
					allow(b, l, "tenant-"+id, "user-"+id)
				}
			})
		})
	}
}
