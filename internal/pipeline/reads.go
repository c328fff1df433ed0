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
// first miss, the memberships of all those conversations (one query, a tenant-scoped clause per tenant).
// On MongoDB that saves round trips; on FerretDB, where every query but {_id: value} scans and decodes
// the whole collection, it is most of the pipeline's share of the store's time. Answers are as fresh
// as the per-partition reads were: taken while the batch is processed, never reused by the next one
// (what the membership cache is primed with is, like any cache entry, dropped by an invalidation).
//
// A failed read is not retried here: the stages then read for themselves, as without Reads (and fail
// transiently if the store is down).
//
// Reads is also the authz.Directory the authorize stage hands the Authorizer (authz.Request.Directory):
// on a membership-cache miss the decision reads from the batch instead of MongoDB, and falls back to the
// store (authz.StoreDirectory) for what the batch did not read.
type Reads struct {
	st     *store.Store
	ids    []string     // the batch's record keys, each once
	primer MemberPrimer // nil: nothing primed

	convOnce sync.Once
	convs    map[string]store.Conversation // by id, any tenant; nil if the read failed
	asked    map[string]bool               // ids read

	membersOnce sync.Once
	roles       map[[3]string]store.Role // (tenant, conversation id, user id) → role; nil if the read failed
}

// MemberPrimer is the membership cache (*authz.MembershipCache): the memberships a batch reads are
// handed to it, so the next batches find the members they have not met yet without a read each. Until
// the cache is warm, polls meet new senders; without priming each such poll would read again.
type MemberPrimer interface {
	Note() authz.Noted
	Prime(ctx context.Context, n authz.Noted, tenantID string, members []authz.Member)
}

// NewReads returns the reads of a batch whose record keys (conversation ids) are keys, each once; the
// memberships it reads go to primer (nil: nowhere).
func NewReads(st *store.Store, keys []string, primer MemberPrimer) *Reads {
	return &Reads{st: st, ids: keys, primer: primer}
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
	r.membersOnce.Do(func() { r.readMembers(ctx) })
	if r.roles == nil {
		return authz.Membership{}, false
	}
	return authz.Membership{ConversationExists: true, Role: r.roles[[3]string{tenantID, conversationID, userID}]}, true
}

// readMembers reads the memberships of the batch's conversations, each in its own tenant, and primes the
// membership cache with them.
func (r *Reads) readMembers(ctx context.Context) {
	byTenant := map[string][]string{}
	for id, c := range r.convs {
		byTenant[c.TenantID] = append(byTenant[c.TenantID], id)
	}
	var noted authz.Noted
	if r.primer != nil {
		noted = r.primer.Note()
	}
	members, err := r.st.Members.OfTenantsConversations(ctx, byTenant)
	if err != nil {
		return
	}
	r.roles = make(map[[3]string]store.Role, len(members))
	primed := map[string][]authz.Member{}
	for _, m := range members {
		r.roles[[3]string{m.TenantID, m.ConversationID, m.UserID}] = m.Role
		if m.Role != "" {
			primed[m.TenantID] = append(primed[m.TenantID], authz.Member{ConversationID: m.ConversationID, UserID: m.UserID, Role: m.Role})
		}
	}
	if r.primer != nil {
		for tenant, ms := range primed {
			r.primer.Prime(ctx, noted, tenant, ms)
		}
	}
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
