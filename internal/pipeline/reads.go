package pipeline

import (
	"context"
	"sync"

	"github.com/msgplatform/platform/internal/authz"
	"github.com/msgplatform/platform/internal/store"
)

// batchReads reads, once per polled batch and for all its partitions, what the tenant and authorize
// stages would otherwise read per partition, tenant, conversation or sender: the batch's conversations
// (one query on _id, for the record keys, which are conversation ids) and, on the membership cache's
// first miss for a tenant, that tenant's memberships of those conversations (one query per tenant).
// On MongoDB that saves round trips; on FerretDB, where every query but {_id: value} scans and decodes
// the whole collection, it is most of the pipeline's share of the store's time. Answers are as fresh
// as the per-partition reads were: taken while the batch is processed, never reused by the next one.
//
// A failed read is not retried here: the stages then read for themselves, as without batchReads (and
// fail transiently if the store is down).
type batchReads struct {
	st  *store.Store
	ids []string // the batch's record keys, each once

	convOnce sync.Once
	convs    map[string]store.Conversation // by id, any tenant; nil if the read failed
	asked    map[string]bool               // ids read

	mu      sync.Mutex
	members map[string]*tenantMembers // by tenant
}

type tenantMembers struct {
	once  sync.Once
	ok    bool
	roles map[[2]string]store.Role // (conversation id, user id) → role
}

type batchReadsKey struct{}

func newBatchReads(st *store.Store, keys []string) *batchReads {
	return &batchReads{st: st, ids: keys, members: map[string]*tenantMembers{}}
}

// withBatchReads returns ctx carrying r (nil r: ctx unchanged).
func withBatchReads(ctx context.Context, r *batchReads) context.Context {
	if r == nil {
		return ctx
	}
	return context.WithValue(ctx, batchReadsKey{}, r)
}

func batchReadsFrom(ctx context.Context) *batchReads {
	r, _ := ctx.Value(batchReadsKey{}).(*batchReads)
	return r
}

// conversation answers whether conversation id exists in tenant, and returns it; known is false when the
// batch read failed or did not cover id (the caller reads it itself).
func (r *batchReads) conversation(ctx context.Context, tenantID, id string) (c store.Conversation, exists, known bool) {
	r.convOnce.Do(func() {
		convs, err := r.st.Conversations.GetByIDs(ctx, r.ids)
		if err != nil {
			return
		}
		r.asked = make(map[string]bool, len(r.ids))
		for _, id := range r.ids {
			r.asked[id] = true
		}
		r.convs = convs
	})
	if r.convs == nil || !r.asked[id] {
		return store.Conversation{}, false, false
	}
	c, ok := r.convs[id]
	if !ok || c.TenantID != tenantID {
		return store.Conversation{}, false, true
	}
	return c, true, true
}

// membership answers the membership cache's question; ok is false when the batch reads cannot.
func (r *batchReads) membership(ctx context.Context, tenantID, conversationID, userID string) (authz.Membership, bool) {
	_, exists, known := r.conversation(ctx, tenantID, conversationID)
	if !known {
		return authz.Membership{}, false
	}
	if !exists {
		return authz.Membership{}, true
	}
	r.mu.Lock()
	t, ok := r.members[tenantID]
	if !ok {
		t = &tenantMembers{}
		r.members[tenantID] = t
	}
	r.mu.Unlock()
	t.once.Do(func() {
		var ids []string
		for id, c := range r.convs {
			if c.TenantID == tenantID {
				ids = append(ids, id)
			}
		}
		members, err := r.st.Members.OfConversations(ctx, tenantID, ids)
		if err != nil {
			return
		}
		t.roles = make(map[[2]string]store.Role, len(members))
		for _, m := range members {
			t.roles[[2]string{m.ConversationID, m.UserID}] = m.Role
		}
		t.ok = true
	})
	if !t.ok {
		return authz.Membership{}, false
	}
	return authz.Membership{ConversationExists: true, Role: t.roles[[2]string{conversationID, userID}]}, true
}

// batchDirectory is the authz.Directory of the pipeline's membership cache (asked only on a cache miss):
// it answers from the batch's reads when it can, else as authz.StoreDirectory does.
type batchDirectory struct {
	authz.StoreDirectory
}

func (d batchDirectory) Membership(ctx context.Context, tenantID, conversationID, userID string) (authz.Membership, error) {
	if r := batchReadsFrom(ctx); r != nil {
		if m, ok := r.membership(ctx, tenantID, conversationID, userID); ok {
			return m, nil
		}
	}
	return d.StoreDirectory.Membership(ctx, tenantID, conversationID, userID)
}
