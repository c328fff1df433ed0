// Package convcache remembers for a short while which conversations were seen active, for the two
// places that ask on every message: SendMessage (internal/api) and the pipeline's tenant stage. On
// FerretDB each read of a conversation scans the collection: at thousands of messages per second those
// reads alone took most of the store's CPU.
package convcache

import (
	"context"
	"errors"
	"time"

	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/ttlcache"
)

// Cache remembers active conversations. Only "active" is remembered: archiving is one-way, so a
// conversation found archived or missing is read again each time and answers as before. Archiving through
// this process forgets the entry at once; elsewhere an entry lives at most its TTL. So an archive takes
// effect for new messages everywhere within DefaultTTL: a gateway may accept, and a pipeline store, a
// message for that long after the archive was written (the message was sent while the archive was in
// flight).
type Cache struct {
	ttl     time.Duration
	now     func() time.Time
	entries *ttlcache.Cache[activeKey, struct{}]
}

type activeKey struct{ tenant, id string }

// ErrArchived is Check's answer for an archived conversation.
var ErrArchived = errors.New("conversation is archived")

// DefaultTTL bounds how long another process may take messages for a conversation just archived.
const DefaultTTL = 2 * time.Second

// New returns an empty cache keeping entries for ttl (≤ 0: DefaultTTL) and about max of them (≤ 0:
// 100,000; beyond, expired then arbitrary entries make room, costing a read each).
func New(ttl time.Duration, max int) *Cache {
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	if max <= 0 {
		max = 100_000
	}
	return &Cache{ttl: ttl, now: time.Now, entries: ttlcache.New[activeKey, struct{}](max)}
}

// Check returns nil when the conversation exists in the tenant and is active, from memory when it was
// seen so within the TTL, and otherwise the store's answer: its error, or ErrArchived. A nil cache reads
// the store every time.
func (a *Cache) Check(ctx context.Context, st *store.Store, tenant, id string) error {
	if a == nil {
		return CheckActive(ctx, st, tenant, id)
	}
	known, gen := a.Active(tenant, id)
	if known {
		return nil
	}
	if err := CheckActive(ctx, st, tenant, id); err != nil {
		return err
	}
	a.Remember(tenant, id, gen)
	return nil
}

// Active reports whether the conversation was seen active within the TTL. When not, gen is the fence to
// hand Remember once the store says it is active: an archive through this process in between keeps the
// answer out.
func (a *Cache) Active(tenant, id string) (known bool, gen uint64) {
	if a == nil {
		return false, 0
	}
	k := activeKey{tenant, id}
	if _, ok := a.entries.Get(k, a.now()); ok {
		return true, 0
	}
	return false, a.entries.Generation(k)
}

// Remember records the conversation as active, as read after Active returned gen.
func (a *Cache) Remember(tenant, id string, gen uint64) {
	if a == nil {
		return
	}
	now := a.now()
	a.entries.Put(activeKey{tenant, id}, struct{}{}, now.Add(a.ttl), gen, now)
}

// CheckActive reads the conversation: nil when it exists in the tenant and is active, ErrArchived, or
// the store's error.
func CheckActive(ctx context.Context, st *store.Store, tenant, id string) error {
	c, err := st.Conversations.Get(ctx, tenant, id)
	if err != nil {
		return err
	}
	if c.State == store.ConversationArchived {
		return ErrArchived
	}
	return nil
}

// Forget drops the entry of a conversation archived through this process (nothing on a nil cache).
func (a *Cache) Forget(tenant, id string) {
	if a != nil {
		a.entries.Delete(activeKey{tenant, id})
	}
}
