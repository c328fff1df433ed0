// Package ttlcache is a bounded in-process map whose entries expire, sharded so concurrent readers rarely
// meet, with a generation per shard: a caller notes Generation before reading the source of truth and
// stores the answer only if no Delete or Clear of that shard happened meanwhile, so an answer read before
// an invalidation cannot be written back after it.
package ttlcache

import (
	"hash/maphash"
	"sync"
	"time"
)

// Shards is the number of shards; a cache holds at least one entry per shard whatever its size.
const Shards = 64

// Cache maps K to V until each entry's deadline. The zero value is not usable; call New.
type Cache[K comparable, V any] struct {
	perShard int
	seed     maphash.Seed
	shards   [Shards]shard[K, V]
}

type shard[K comparable, V any] struct {
	mu  sync.RWMutex
	gen uint64
	m   map[K]entry[V]
}

type entry[V any] struct {
	v     V
	until time.Time
}

// New returns a cache holding at most about size entries (at least one per shard). When a shard is full,
// Put drops its expired entries, then arbitrary ones.
func New[K comparable, V any](size int) *Cache[K, V] {
	c := &Cache[K, V]{perShard: max(1, size/Shards), seed: maphash.MakeSeed()}
	for i := range c.shards {
		c.shards[i].m = make(map[K]entry[V])
	}
	return c
}

func (c *Cache[K, V]) shard(k K) *shard[K, V] { return &c.shards[c.index(k)] }

func (c *Cache[K, V]) index(k K) uint64 { return maphash.Comparable(c.seed, k) % Shards }

// Get returns k's value while now is before its deadline.
func (c *Cache[K, V]) Get(k K, now time.Time) (V, bool) {
	s := c.shard(k)
	s.mu.RLock()
	e, ok := s.m[k]
	s.mu.RUnlock()
	if !ok || !now.Before(e.until) {
		var zero V
		return zero, false
	}
	return e.v, true
}

// Generation is k's shard's generation, to note before reading what Put will store.
func (c *Cache[K, V]) Generation(k K) uint64 {
	s := c.shard(k)
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.gen
}

// Generations is every shard's generation, noted (Note) before a read whose keys are not known until it
// returns (all the members of some conversations, say); PutNoted then fences each key by its shard's.
type Generations [Shards]uint64

// Note returns every shard's generation.
func (c *Cache[K, V]) Note() *Generations {
	var g Generations
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		g[i] = s.gen
		s.mu.RUnlock()
	}
	return &g
}

// PutNoted is Put with k's generation taken from g (Note).
func (c *Cache[K, V]) PutNoted(k K, v V, until time.Time, g *Generations, now time.Time) bool {
	return c.put(k, v, until, now, true, g[c.index(k)])
}

// Put stores v for k until until, unless k's shard saw a Delete or Clear since gen was noted (then it
// reports false and stores nothing) or until is not after now.
func (c *Cache[K, V]) Put(k K, v V, until time.Time, gen uint64, now time.Time) bool {
	return c.put(k, v, until, now, true, gen)
}

// Set stores v for k until until, whatever happened meanwhile: for values no invalidation can make stale.
func (c *Cache[K, V]) Set(k K, v V, until, now time.Time) {
	c.put(k, v, until, now, false, 0)
}

func (c *Cache[K, V]) put(k K, v V, until, now time.Time, fenced bool, gen uint64) bool {
	if !now.Before(until) {
		return false
	}
	s := c.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if fenced && s.gen != gen {
		return false
	}
	if len(s.m) >= c.perShard {
		for key, e := range s.m { // drop what expired; if nothing did, arbitrary entries
			if !now.Before(e.until) {
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
	s.m[k] = entry[V]{v: v, until: until}
	return true
}

// Delete drops k and fences the Puts of its shard in flight.
func (c *Cache[K, V]) Delete(k K) {
	s := c.shard(k)
	s.mu.Lock()
	s.gen++
	delete(s.m, k)
	s.mu.Unlock()
}

// Clear empties the cache and fences every Put in flight.
func (c *Cache[K, V]) Clear() {
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		s.gen++
		clear(s.m)
		s.mu.Unlock()
	}
}

// Len counts the entries, expired ones included.
func (c *Cache[K, V]) Len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return n
}
