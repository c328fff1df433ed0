package auth

import (
	"time"

	"github.com/msgplatform/platform/internal/ttlcache"
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
)

// tokenCache maps a raw token string to the principal it verified as, until a deadline. Keys are the
// whole token, compared exactly: no hash of the token stands in for it, so no collision can hand one
// token another's principal.
type tokenCache struct {
	ttl     time.Duration
	entries *ttlcache.Cache[string, Principal]
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
	return &tokenCache{ttl: ttl, entries: ttlcache.New[string, Principal](size)}
}

// get returns the principal of a token verified earlier, while its deadline has not passed.
func (c *tokenCache) get(token string, now time.Time) (Principal, bool) {
	if c == nil {
		return Principal{}, false
	}
	return c.entries.Get(token, now)
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
	// Nothing invalidates a verified token before its deadline, so no fence is needed. Set stores nothing
	// when until is not after now.
	c.entries.Set(token, p, until, now)
}

func (c *tokenCache) len() int { return c.entries.Len() }
