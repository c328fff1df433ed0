package pipeline

import (
	"context"
	"sync"

	"github.com/msgplatform/platform/internal/authz"
	"github.com/msgplatform/platform/internal/store"
)

// Reads reads, once per polled batch and for all its partitions, what the tenant and authorize
// stages would otherwise read per partition, tenant, conversation or sender: the batch's conversations
// (one query on _id, for the record keys, which are conversation ids) and, on the membership cache's
// first miss for a tenant, that tenant's memberships of those conversations (one query per tenant).
// On MongoDB that saves round trips; on FerretDB, where every query but {_id: value} scans and decodes
// the whole collection, it is most of the pipeline's share of the store's time. Answers are as fresh
// as the per-partition reads were: taken while the batch is processed, never reused by the next one.
//
// A failed read is not retried here: the stages then read for themselves, as without Reads (and fail
// transiently if the store is down).
//
// Reads is also the authz.Directory the authorize stage hands the Authorizer (authz.Request.Directory):
// on a membership-cache miss the decision reads from the batch instead of MongoDB, and falls back to the
// store (authz.StoreDirectory) for what the batch did not read.
type Reads struct {
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

// NewReads returns the reads of a batch whose record keys (conversation ids) are keys, each once.
func NewReads(st *store.Store, keys []string) *Reads {
	return &Reads{st: st, ids: keys, members: map[string]*tenantMembers{}}
}

// conversation answers whether conversation id exists in tenant, and returns it; known is false when the
// batch read failed or did not cover id (the caller reads it itself).
func (r *Reads) conversation(ctx context.Context, tenantID, id string) (c store.Conversation, exists, known bool) {
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
func (r *Reads) membership(ctx context.Context, tenantID, conversationID, userID string) (authz.Membership, bool) {
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

// Membership implements authz.Directory: from the batch's reads when they cover the question, else from
// the store.
func (r *Reads) Membership(ctx context.Context, tenantID, conversationID, userID string) (authz.Membership, error) {
	if m, ok := r.membership(ctx, tenantID, conversationID, userID); ok {
		return m, nil
	}
	return authz.StoreDirectory{Store: r.st}.Membership(ctx, tenantID, conversationID, userID)
}

// MessageAuthor implements authz.Directory (from the store: the batch reads no messages).
func (r *Reads) MessageAuthor(ctx context.Context, tenantID, conversationID, messageID string) (string, error) {
	return authz.StoreDirectory{Store: r.st}.MessageAuthor(ctx, tenantID, conversationID, messageID)
}
