package api

import (
	"context"
	"errors"
	"time"

	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/ttlcache"
)

// ActiveConversations remembers for a short while which conversations were seen active, so SendMessage
// does not read its conversation from MongoDB on every call (on FerretDB each read scans the collection;
// at 2,000 messages/s those reads alone took most of the CPU). Only "active" is remembered: archiving is
// one-way, so a conversation found archived or missing is read again each time and answers as before.
// Archiving through this process forgets the entry at once; in another gateway the entry lives at most
// TTL, and a message it accepts meanwhile is dead-lettered by the pipeline, which checks the state again.
type ActiveConversations struct {
	ttl     time.Duration
	now     func() time.Time
	entries *ttlcache.Cache[activeKey, struct{}]
}

type activeKey struct{ tenant, id string }

// errArchived is Check's answer for an archived conversation.
var errArchived = errors.New("conversation is archived")

// DefaultActiveTTL bounds how long another gateway may accept messages for a conversation just archived.
const DefaultActiveTTL = 2 * time.Second

// NewActiveConversations returns an empty cache keeping entries for ttl (≤ 0: DefaultActiveTTL) and about
// max of them (≤ 0: 100,000; beyond, expired then arbitrary entries make room, costing a read each).
func NewActiveConversations(ttl time.Duration, max int) *ActiveConversations {
	if ttl <= 0 {
		ttl = DefaultActiveTTL
	}
	if max <= 0 {
		max = 100_000
	}
	return &ActiveConversations{ttl: ttl, now: time.Now, entries: ttlcache.New[activeKey, struct{}](max)}
}

// Check returns nil when the conversation exists in the tenant and is active, from memory when it was
// seen so within the TTL, and otherwise the store's answer: its error, or errArchived. A nil cache reads
// the store every time.
func (a *ActiveConversations) Check(ctx context.Context, st *store.Store, tenant, id string) error {
	if a == nil {
		return checkActive(ctx, st, tenant, id)
	}
	k := activeKey{tenant, id}
	now := a.now()
	if _, ok := a.entries.Get(k, now); ok {
		return nil
	}
	gen := a.entries.Generation(k) // an archive through this process from here on keeps the answer out
	if err := checkActive(ctx, st, tenant, id); err != nil {
		return err
	}
	a.entries.Put(k, struct{}{}, now.Add(a.ttl), gen, now)
	return nil
}

func checkActive(ctx context.Context, st *store.Store, tenant, id string) error {
	c, err := st.Conversations.Get(ctx, tenant, id)
	if err != nil {
		return err
	}
	if c.State == store.ConversationArchived {
		return errArchived
	}
	return nil
}

// Forget drops the entry of a conversation archived through this process (nothing on a nil cache).
func (a *ActiveConversations) Forget(tenant, id string) {
	if a != nil {
		a.entries.Delete(activeKey{tenant, id})
	}
}
