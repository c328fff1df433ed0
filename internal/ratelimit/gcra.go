package ratelimit

import (
	"hash/maphash"
	"math"
	"sync"
	"time"

	"github.com/msgplatform/platform/internal/ttlcache"
)

// The generic cell rate algorithm (GCRA) keeps one number per bucket: its theoretical arrival time (TAT),
// the instant at which the bucket would be full again if nothing more were charged. A call of cost c fits
// when TAT + c×interval − tolerance ≤ now, and charging it moves TAT by c×interval. It is a token bucket
// (burst = tolerance / interval, refilled one unit per interval) stored as one timestamp. The Lua script in
// redis.go runs the same arithmetic on the same units; keep the two in step.

// epoch is the origin of the microsecond timestamps: recent, so now fits a float64 to a fraction of a µs.
// The script uses the same one (1700000000).
var epoch = time.Unix(1_700_000_000, 0)

// slack (µs) absorbs float64 rounding so a unit due exactly now counts as there; the script uses the same.
const slack = 0.5

// bucket is one quota of one caller in GCRA's units.
type bucket struct {
	scope     Scope
	key       string
	limit     Limit
	interval  float64 // µs per cost unit
	tolerance float64 // µs: burst × interval
}

func newBucket(scope Scope, key string, l Limit) bucket {
	return bucket{scope: scope, key: key, limit: l, interval: 1e6 / l.Rate, tolerance: float64(l.Burst) * 1e6 / l.Rate}
}

// outcome is one bucket's view of one call.
type outcome struct {
	ok        bool    // the bucket had room for the cost
	remaining int     // units left after the call (charged only when every bucket had room)
	reset     float64 // µs until the bucket is full again
	retry     float64 // µs until it has room for the cost; 0 when ok
}

// gcra decides a call of cost against buckets whose TATs are tats (µs since epoch; anything before now
// means full) at now. When every bucket has room it charges all of them, updating tats in place.
func gcra(now float64, cost int, buckets []bucket, tats []float64) (bool, []outcome) {
	allowed := true
	for i, b := range buckets {
		tats[i] = math.Max(tats[i], now)
		if tats[i]+float64(cost)*b.interval-b.tolerance > now+slack {
			allowed = false
		}
	}
	outs := make([]outcome, len(buckets))
	for i, b := range buckets {
		need := tats[i] + float64(cost)*b.interval - b.tolerance - now
		if allowed {
			tats[i] += float64(cost) * b.interval
		}
		o := outcome{ok: need <= slack, reset: math.Ceil(tats[i] - now)}
		o.remaining = int(math.Max(0, math.Floor((b.tolerance-(tats[i]-now)+slack)/b.interval)))
		if !o.ok {
			o.retry = math.Ceil(need)
		}
		outs[i] = o
	}
	return allowed, outs
}

// micros is t in µs since epoch.
func micros(t time.Time) float64 { return float64(t.Sub(epoch).Nanoseconds()) / 1e3 }

// local is the in-process limiter used while Redis is unreachable: the same buckets and arithmetic, kept
// per replica, in a bounded cache whose entries expire when their bucket is full again (an evicted
// bucket starts full: failing open is the point).
type local struct {
	clock func() time.Time
	tats  *ttlcache.Cache[string, float64]
	seed  maphash.Seed
	// A caller's buckets are checked and charged together under one lock; the buckets of one tenant share
	// a stripe (every bucket key starts with its tenant's tag), so callers of different tenants rarely wait.
	stripes [64]sync.Mutex
}

func newLocal(size int, clock func() time.Time) *local {
	return &local{clock: clock, tats: ttlcache.New[string, float64](size), seed: maphash.MakeSeed()}
}

func (l *local) allow(tenantTag string, cost int, buckets []bucket) (bool, []outcome) {
	mu := &l.stripes[maphash.String(l.seed, tenantTag)%uint64(len(l.stripes))]
	mu.Lock()
	defer mu.Unlock()
	t := l.clock()
	now := micros(t)
	tats := make([]float64, len(buckets))
	for i, b := range buckets {
		tats[i], _ = l.tats.Get(b.key, t)
	}
	allowed, outs := gcra(now, cost, buckets, tats)
	if allowed {
		for i, b := range buckets {
			l.tats.Set(b.key, tats[i], epoch.Add(time.Duration(tats[i]*1e3)), t)
		}
	}
	return allowed, outs
}
