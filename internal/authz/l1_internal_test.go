package authz

import (
	"fmt"
	"testing"
	"time"

	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/ttlcache"
)

func TestL1Fences(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	k := memberKey{"t", "c", "u"}
	member := Membership{ConversationExists: true, Role: store.RoleMember}
	cases := []struct {
		name    string
		between func(c *l1) // runs after the generation is noted and before put
		want    bool        // whether get then finds the entry
	}{
		{"nothing happened", func(*l1) {}, true},
		{"the key was invalidated", func(c *l1) { c.invalidate(k) }, false},
		{"the subscription was re-established", func(c *l1) { c.reset(true) }, false},
		{"the subscription was lost", func(c *l1) { c.reset(false) }, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newL1(time.Minute, 1024)
			c.reset(true)
			gen := c.generation(k)
			tc.between(c)
			c.put(k, member, gen, time.Hour, now)
			if _, ok := c.get(k, now); ok != tc.want {
				t.Errorf("entry present = %v, want %v", ok, tc.want)
			}
		})
	}
}

func TestL1InactiveExpiryAndSize(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	k := memberKey{"t", "c", "u"}
	m := Membership{ConversationExists: true}

	c := newL1(time.Minute, 1024)
	c.put(k, m, c.generation(k), time.Hour, now)
	if c.len() != 0 {
		t.Fatal("stored while inactive (before the first subscription)")
	}
	c.reset(true)
	c.put(k, m, c.generation(k), 10*time.Second, now) // the shorter of the entry's TTL and the cache's
	if _, ok := c.get(k, now.Add(9*time.Second)); !ok {
		t.Error("entry missing within its TTL")
	}
	if _, ok := c.get(k, now.Add(10*time.Second)); ok {
		t.Error("entry served at its TTL")
	}
	c.put(k, m, c.generation(k), time.Hour, now)
	if _, ok := c.get(k, now.Add(time.Minute)); ok {
		t.Error("entry served past the cache's own TTL")
	}
	c.reset(false)
	if _, ok := c.get(k, now); ok || c.len() != 0 {
		t.Error("inactive cache answered or kept entries")
	}

	small := newL1(time.Minute, ttlcache.Shards*2) // two entries per shard
	small.reset(true)
	for i := range 1000 {
		o := memberKey{"t", fmt.Sprint("c", i), "u"}
		small.put(o, m, small.generation(o), time.Hour, now)
	}
	if n := small.len(); n > ttlcache.Shards*2 || n == 0 {
		t.Errorf("cache holds %d entries, bound %d", n, ttlcache.Shards*2)
	}
}

func TestParseKeyInvertsKey(t *testing.T) {
	for _, k := range []memberKey{{"t1", "01CONV", "mia"}, {"t:1", "c 1", "u/1"}, {"ä", "%", ":"}} {
		got, ok := parseKey(Key(k.tenant, k.conversation, k.user))
		if !ok || got != k {
			t.Errorf("parseKey(Key(%q)) = %q, %v", k, got, ok)
		}
	}
	for _, bad := range []string{"", "authz:v1:member:a:b", "other:v1:member:a:b:c", "authz:v1:member:a:b:c:d", "authz:v1:member:%zz:b:c"} {
		if _, ok := parseKey(bad); ok {
			t.Errorf("parseKey(%q) accepted", bad)
		}
	}
}
