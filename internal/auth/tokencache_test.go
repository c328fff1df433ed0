package auth

import (
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

var cacheSecret = []byte("token-cache-secret-0123456789abcdef-0123")

// clock is a settable time source for the verifier and its cache.
type clock struct{ ns atomic.Int64 }

func newClock(t time.Time) *clock        { c := &clock{}; c.ns.Store(t.UnixNano()); return c }
func (c *clock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) advance(d time.Duration) { c.ns.Add(int64(d)) }

func mintAt(t *testing.T, now time.Time, p Principal, ttl time.Duration) string {
	t.Helper()
	tok, err := mintHS256At(cacheSecret, p, now, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// mintHS256At is MintHS256 at a chosen time (its iat and exp follow now).
func mintHS256At(secret []byte, p Principal, now time.Time, ttl time.Duration) (string, error) {
	roles := p.Roles
	if roles == nil {
		roles = []string{}
	}
	c := mintClaims{TenantID: p.TenantID, Roles: roles}
	c.Subject = p.Subject
	c.IssuedAt, c.ExpiresAt = jwt.NewNumericDate(now), jwt.NewNumericDate(now.Add(ttl))
	return jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(secret)
}

func cachingVerifier(t *testing.T, clk *clock, ttl time.Duration, size int) *Verifier {
	t.Helper()
	v, err := NewVerifier(Config{HMACSecret: cacheSecret, Now: clk.now, CacheTTL: ttl, CacheSize: size})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestTokenCacheRemembersSuccessesUntilMinOfExpAndTTL(t *testing.T) {
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	alice := Principal{Subject: "alice", TenantID: "t1", Roles: []string{"user"}}
	cases := []struct {
		name      string
		tokenTTL  time.Duration // exp - iat
		wantUntil time.Duration // the cache deadline, from start
	}{
		{"long-lived token: the cache bound", 2 * time.Hour, time.Minute},
		{"short-lived token: its exp", 20 * time.Second, 20 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clk := newClock(start)
			v := cachingVerifier(t, clk, 0, 0)
			tok := mintAt(t, start, alice, tc.tokenTTL)
			for range 2 {
				p, err := v.Verify(tok)
				if err != nil || p.Subject != "alice" || p.TenantID != "t1" {
					t.Fatalf("Verify = %+v, %v", p, err)
				}
			}
			if v.cache.len() != 1 {
				t.Fatalf("cache holds %d entries, want the token", v.cache.len())
			}
			if _, ok := v.cache.get(tok, start.Add(tc.wantUntil-time.Nanosecond)); !ok {
				t.Errorf("cache does not answer just before start+%v", tc.wantUntil)
			}
			clk.advance(tc.wantUntil)
			if _, ok := v.cache.get(tok, clk.now()); ok {
				t.Error("cache still answers at its deadline")
			}
		})
	}
}

// Past exp the cached entry is gone and full verification decides (here: expired beyond the leeway).
func TestTokenCacheNeverOutlivesExp(t *testing.T) {
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := newClock(start)
	v := cachingVerifier(t, clk, time.Hour, 0)
	tok := mintAt(t, start, Principal{Subject: "bob", TenantID: "t1"}, 10*time.Second)
	if _, err := v.Verify(tok); err != nil {
		t.Fatal(err)
	}
	clk.advance(10*time.Second + defaultLeeway + time.Second)
	_, err := v.Verify(tok)
	if !errors.Is(err, ErrUnauthenticated) || !strings.Contains(err.Error(), "token expired") {
		t.Fatalf("expired token = %v, want token expired", err)
	}
}

// Failures are never cached: a bad token stays bad, and it leaves no entry a later call could match.
func TestTokenCacheIgnoresFailures(t *testing.T) {
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := newClock(start)
	v := cachingVerifier(t, clk, 0, 0)
	good := mintAt(t, start, Principal{Subject: "carol", TenantID: "t1"}, time.Hour)
	tampered := good[:len(good)-2] + "AA"
	other, err := mintHS256At([]byte("some-other-secret-0123456789abcdef-012"), Principal{Subject: "carol", TenantID: "t1"}, start, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{tampered, other, "not.a.token", ""} {
		for range 2 {
			if _, err := v.Verify(bad); !errors.Is(err, ErrUnauthenticated) {
				t.Fatalf("bad token verified: %v", err)
			}
		}
	}
	if n := v.cache.len(); n != 0 {
		t.Fatalf("cache holds %d entries after failures only", n)
	}
	if _, err := v.Verify(good); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(tampered); err == nil {
		t.Fatal("tampered token verified once its original was cached")
	}
}

func TestTokenCacheBounds(t *testing.T) {
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	t.Run("size", func(t *testing.T) {
		clk := newClock(start)
		v := cachingVerifier(t, clk, 0, 128)
		for i := range 500 {
			tok := mintAt(t, start, Principal{Subject: "user-" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + time.Duration(i).String(), TenantID: "t1"}, time.Hour)
			if _, err := v.Verify(tok); err != nil {
				t.Fatal(err)
			}
		}
		if n := v.cache.len(); n == 0 || n > 128 {
			t.Fatalf("cache holds %d entries, want 1..128", n)
		}
	})
	t.Run("long tokens are not cached", func(t *testing.T) {
		clk := newClock(start)
		v := cachingVerifier(t, clk, 0, 0)
		// A long jti: the platform's own claims are bounded well below the cache's limit.
		c := mintClaims{TenantID: "t1", Roles: []string{}}
		c.Subject, c.ID = "dave", strings.Repeat("j", maxCachedTokenLen)
		c.IssuedAt, c.ExpiresAt = jwt.NewNumericDate(start), jwt.NewNumericDate(start.Add(time.Hour))
		tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(cacheSecret)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(tok); err != nil {
			t.Fatal(err)
		}
		if n := v.cache.len(); n != 0 {
			t.Fatalf("a %d-byte token was cached", len(tok))
		}
	})
	t.Run("disabled", func(t *testing.T) {
		clk := newClock(start)
		v := cachingVerifier(t, clk, -1, 0)
		tok := mintAt(t, start, Principal{Subject: "erin", TenantID: "t1"}, time.Hour)
		for range 2 {
			if _, err := v.Verify(tok); err != nil {
				t.Fatal(err)
			}
		}
		if v.cache != nil {
			t.Fatal("CacheTTL < 0 must disable the cache")
		}
	})
}
