package authz

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"
)

const l1Shards = 64

// memberKey names one membership in the in-process cache (no escaping or allocation needed).
type memberKey struct{ tenant, conversation, user string }

// l1 is the in-process membership cache in front of Redis. It is used only while the invalidation
// subscription is up (active); it is emptied whenever the subscription is established or lost, so an
// entry never outlives an invalidation it could have missed by more than its TTL.
//
// Every shard has a generation, bumped by each invalidation of a key of the shard and by every reset. A
// lookup notes the generation before it reads Redis and stores its answer only if the generation is
// unchanged, so an answer read before an invalidation cannot be written back after it.
type l1 struct {
	active   atomic.Bool
	ttl      time.Duration
	perShard int
	seed     maphash.Seed
	shards   [l1Shards]l1Shard
}

type l1Shard struct {
	mu  sync.RWMutex
	gen uint64
	m   map[memberKey]l1Entry
}

type l1Entry struct {
	m       Membership
	expires time.Time
}

func newL1(ttl time.Duration, size int) *l1 {
	c := &l1{ttl: ttl, perShard: max(1, size/l1Shards), seed: maphash.MakeSeed()}
	for i := range c.shards {
		c.shards[i].m = make(map[memberKey]l1Entry)
	}
	return c
}

func (c *l1) shard(k memberKey) *l1Shard {
	return &c.shards[maphash.Comparable(c.seed, k)%l1Shards]
}

// get returns a live entry; never while inactive.
func (c *l1) get(k memberKey, now time.Time) (Membership, bool) {
	if !c.active.Load() {
		return Membership{}, false
	}
	s := c.shard(k)
	s.mu.RLock()
	e, ok := s.m[k]
	s.mu.RUnlock()
	if !ok || !now.Before(e.expires) {
		return Membership{}, false
	}
	return e.m, true
}

// generation is noted before reading Redis and handed to put.
func (c *l1) generation(k memberKey) uint64 {
	s := c.shard(k)
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.gen
}

// put stores m for at most ttl, unless the cache is inactive or k's shard saw an invalidation or a
// reset since gen was noted.
func (c *l1) put(k memberKey, m Membership, gen uint64, ttl time.Duration, now time.Time) {
	if !c.active.Load() {
		return
	}
	ttl = min(ttl, c.ttl)
	s := c.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gen != gen || !c.active.Load() {
		return
	}
	if len(s.m) >= c.perShard {
		for key, e := range s.m { // drop what expired; if nothing did, one arbitrary entry
			if !now.Before(e.expires) {
				delete(s.m, key)
			}
		}
		for key := range s.m {
			if len(s.m) < c.perShard {
				break
			}
			delete(s.m, key)
		}
	}
	s.m[k] = l1Entry{m: m, expires: now.Add(ttl)}
}

// invalidate drops k and fences lookups in flight.
func (c *l1) invalidate(k memberKey) {
	s := c.shard(k)
	s.mu.Lock()
	s.gen++
	delete(s.m, k)
	s.mu.Unlock()
}

// reset empties the cache, fences every lookup in flight, and sets whether it may be used.
func (c *l1) reset(active bool) {
	if !active {
		c.active.Store(false) // stop reads first
	}
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		s.gen++
		clear(s.m)
		s.mu.Unlock()
	}
	if active {
		c.active.Store(true)
	}
}

func (c *l1) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return n
}
