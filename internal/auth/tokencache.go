package auth

import (
	"hash/maphash"
	"sync"
	"time"
)

// Token cache defaults. A verified token is remembered for at most a minute (and never past its exp), so a
// client repeating its token skips parsing, HMAC/RSA/ECDSA and JSON decoding. Only successes are cached:
// a token that failed is verified again in full every time, so a failure can never turn into a pass.
const (
	defaultCacheTTL  = time.Minute
	defaultCacheSize = 10_000
	// maxCachedTokenLen keeps the cache's memory bounded (size × this) whatever tokens callers send;
	// longer tokens are valid but verified every time.
	maxCachedTokenLen = 2 << 10
	tokenCacheShards  = 16
)

// tokenCache maps a raw token string to the principal it verified as, until a deadline. Keys are the
// whole token, compared exactly: no hash of the token stands in for it, so no collision can hand one
// token another's principal.
type tokenCache struct {
	ttl      time.Duration
	perShard int
	seed     maphash.Seed
	shards   [tokenCacheShards]tokenShard
}

type tokenShard struct {
	mu sync.RWMutex
	m  map[string]cachedToken
}

type cachedToken struct {
	p     Principal
	until time.Time
}

// newTokenCache returns a cache of size entries holding each for at most ttl; nil when ttl < 0 (disabled).
func newTokenCache(ttl time.Duration, size int) *tokenCache {
	if ttl < 0 {
		return nil
	}
	if ttl == 0 {
		ttl = defaultCacheTTL
	}
	if size <= 0 {
		size = defaultCacheSize
	}
	c := &tokenCache{ttl: ttl, perShard: max(1, size/tokenCacheShards), seed: maphash.MakeSeed()}
	for i := range c.shards {
		c.shards[i].m = make(map[string]cachedToken)
	}
	return c
}

func (c *tokenCache) shard(token string) *tokenShard {
	return &c.shards[maphash.String(c.seed, token)%tokenCacheShards]
}

// get returns the principal of a token verified earlier, while its deadline has not passed.
func (c *tokenCache) get(token string, now time.Time) (Principal, bool) {
	if c == nil {
		return Principal{}, false
	}
	s := c.shard(token)
	s.mu.RLock()
	e, ok := s.m[token]
	s.mu.RUnlock()
	if !ok || !now.Before(e.until) {
		return Principal{}, false
	}
	return e.p, true
}

// put remembers a verified token until min(exp, now+ttl). A token already expired (accepted within the
// leeway) is not cached: each further use is checked against the clock again.
func (c *tokenCache) put(token string, p Principal, exp, now time.Time) {
	if c == nil || len(token) > maxCachedTokenLen {
		return
	}
	until := now.Add(c.ttl)
	if exp.Before(until) {
		until = exp
	}
	if !now.Before(until) {
		return
	}
	s := c.shard(token)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.m) >= c.perShard {
		for k, e := range s.m { // drop what expired; if nothing did, one arbitrary entry
			if !now.Before(e.until) {
				delete(s.m, k)
			}
		}
		for k := range s.m {
			if len(s.m) < c.perShard {
				break
			}
			delete(s.m, k)
		}
	}
	s.m[token] = cachedToken{p: p, until: until}
}

func (c *tokenCache) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.RLock()
		n += len(s.m)
		s.mu.RUnlock()
	}
	return n
}
