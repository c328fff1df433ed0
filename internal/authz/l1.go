package authz

import (
	"sync/atomic"
	"time"

	"github.com/msgplatform/platform/internal/ttlcache"
)

// memberKey names one membership in the in-process cache (no escaping or allocation needed).
type memberKey struct{ tenant, conversation, user string }

// l1 is the in-process membership cache in front of Redis. It is used only while the invalidation
// subscription is up (active); it is emptied whenever the subscription is established or lost, so an
// entry never outlives an invalidation it could have missed by more than its TTL.
//
// A lookup notes its key's generation before it reads Redis and stores its answer only if no invalidation
// or reset happened since (ttlcache's fence), so an answer read before an invalidation cannot be written
// back after it.
type l1 struct {
	active  atomic.Bool
	ttl     time.Duration
	entries *ttlcache.Cache[memberKey, Membership]
}

func newL1(ttl time.Duration, size int) *l1 {
	return &l1{ttl: ttl, entries: ttlcache.New[memberKey, Membership](size)}
}

// get returns a live entry; never while inactive.
func (c *l1) get(k memberKey, now time.Time) (Membership, bool) {
	if !c.active.Load() {
		return Membership{}, false
	}
	return c.entries.Get(k, now)
}

// generation is noted before reading Redis and handed to put.
func (c *l1) generation(k memberKey) uint64 { return c.entries.Generation(k) }

// put stores m for at most ttl, unless the cache is inactive or k saw an invalidation or a reset since
// gen was noted. (A reset that begins after the active check either fences this put out or clears it.)
func (c *l1) put(k memberKey, m Membership, gen uint64, ttl time.Duration, now time.Time) {
	if !c.active.Load() {
		return
	}
	c.entries.Put(k, m, now.Add(min(ttl, c.ttl)), gen, now)
}

// putNoted is put for answers read after Note: k is fenced by its shard's generation in g.
func (c *l1) putNoted(k memberKey, m Membership, g *ttlcache.Generations, ttl time.Duration, now time.Time) {
	if !c.active.Load() {
		return
	}
	c.entries.PutNoted(k, m, now.Add(min(ttl, c.ttl)), g, now)
}

// invalidate drops k and fences lookups in flight.
func (c *l1) invalidate(k memberKey) { c.entries.Delete(k) }

// reset empties the cache, fences every lookup in flight, and sets whether it may be used.
func (c *l1) reset(active bool) {
	if !active {
		c.active.Store(false) // stop reads first
	}
	c.entries.Clear()
	if active {
		c.active.Store(true)
	}
}

func (c *l1) len() int { return c.entries.Len() }
