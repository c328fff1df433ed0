package ttlcache

import (
	"fmt"
	"testing"
	"time"
)

func TestCache(t *testing.T) {
	now := time.Unix(1000, 0)
	c := New[string, int](1000)

	c.Set("a", 1, now.Add(time.Second), now)
	if v, ok := c.Get("a", now); !ok || v != 1 {
		t.Fatalf("Get(a) = %v, %v", v, ok)
	}
	if _, ok := c.Get("a", now.Add(time.Second)); ok {
		t.Error("an entry is served at its deadline")
	}
	c.Set("past", 1, now, now)
	if c.Len() != 1 {
		t.Errorf("an entry already expired was stored (len %d)", c.Len())
	}

	tests := []struct {
		name    string
		between func() // what happens between Generation and Put
		stored  bool
	}{
		{"nothing in between", func() {}, true},
		{"Delete of the key", func() { c.Delete("k") }, false},
		{"Clear", func() { c.Clear() }, false},
		{"Delete of a key of another shard", func() {
			for i := 0; ; i++ {
				if o := fmt.Sprint("other-", i); c.shard(o) != c.shard("k") {
					c.Delete(o)
					return
				}
			}
		}, true},
	}
	puts := []struct {
		name string
		note func() func() bool // notes the generation(s), returns the Put
	}{
		{"Put", func() func() bool {
			gen := c.Generation("k")
			return func() bool { return c.Put("k", 7, now.Add(time.Second), gen, now) }
		}},
		{"PutNoted", func() func() bool {
			g := c.Note()
			return func() bool { return c.PutNoted("k", 7, now.Add(time.Second), g, now) }
		}},
	}
	for _, put := range puts {
		for _, tc := range tests {
			t.Run(put.name+"/"+tc.name, func(t *testing.T) {
				c.Delete("k")
				store := put.note()
				tc.between()
				if got := store(); got != tc.stored {
					t.Errorf("%s = %v, want %v", put.name, got, tc.stored)
				}
				if _, ok := c.Get("k", now); ok != tc.stored {
					t.Errorf("Get after %s: found = %v, want %v", put.name, ok, tc.stored)
				}
			})
		}
	}

	c.Set("x", 1, now.Add(time.Second), now)
	c.Clear()
	if _, ok := c.Get("x", now); ok || c.Len() != 0 {
		t.Errorf("Clear left %d entries", c.Len())
	}
}

func TestCacheIsBounded(t *testing.T) {
	now := time.Unix(1000, 0)
	c := New[int, int](Shards * 2)
	for i := range 10_000 {
		c.Set(i, i, now.Add(time.Minute), now)
	}
	if n := c.Len(); n > Shards*2 {
		t.Errorf("%d entries, want at most %d", n, Shards*2)
	}

	// When a shard is full, its expired entries make room before any live one is dropped (16 new keys
	// over 64 shards of 8 entries: no shard gets more than it holds).
	c = New[int, int](Shards * 8)
	for i := range 10_000 {
		c.Set(i, i, now.Add(time.Second), now)
	}
	later := now.Add(2 * time.Second)
	live := 0
	for i := 10_000; i < 10_016; i++ {
		c.Set(i, i, later.Add(time.Minute), later)
	}
	for i := 10_000; i < 10_016; i++ {
		if _, ok := c.Get(i, later); ok {
			live++
		}
	}
	if live != 16 {
		t.Errorf("%d of the 16 entries set after the others expired are served", live)
	}
}
