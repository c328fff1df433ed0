package pipeline

import (
	"context"
	"fmt"

	"github.com/msgplatform/platform/internal/convcache"
	"github.com/msgplatform/platform/internal/store"
)

// Conversations is what the tenant stage asks the store.
type Conversations interface {
	// GetMany returns the conversations of tenantID among ids; an id not in the map does not exist there.
	GetMany(ctx context.Context, tenantID string, ids []string) (map[string]store.Conversation, error)
}

// tenantStage checks that the conversation exists in the envelope's tenant (a conversation of another
// tenant does not exist) and still takes messages (not archived). It answers from the batch's reads
// (Batch.Reads: one query for the whole polled batch) when it can, else with one query per tenant for
// the partition's conversations: a look-up per conversation would cost a round trip each (and, on
// FerretDB, a scan of the collection each).
type tenantStage struct {
	convs  Conversations
	active *convcache.Cache // conversations seen active lately (nil: read every time)
}

func (tenantStage) Name() string { return StageTenant }

func (s tenantStage) Process(ctx context.Context, b *Batch) {
	reads, batch := b.Reads, b.Items
	type answer struct {
		conv   store.Conversation
		exists bool
		err    error // the look-up failed
	}
	answers := map[[2]string]answer{} // (tenant, conversation) → answer
	ids := map[string][]string{}      // tenant → conversation ids the batch reads did not cover
	gens := map[[2]string]uint64{}
	for _, it := range batch {
		k := [2]string{it.Inbound.GetTenantId(), it.Inbound.GetConversationId()}
		if _, ok := answers[k]; ok {
			continue
		}
		known, gen := s.active.Active(k[0], k[1])
		if known {
			answers[k] = answer{exists: true, conv: store.Conversation{ID: k[1], TenantID: k[0], State: store.ConversationActive}}
			continue
		}
		gens[k] = gen
		if reads != nil {
			if c, exists, known := reads.conversation(ctx, k[0], k[1]); known {
				answers[k] = answer{conv: c, exists: exists}
				continue
			}
		}
		answers[k] = answer{}
		ids[k[0]] = append(ids[k[0]], k[1])
	}
	for tenant, convs := range ids {
		cs, err := s.convs.GetMany(ctx, tenant, convs)
		for _, id := range convs {
			c, ok := cs[id]
			answers[[2]string{tenant, id}] = answer{conv: c, exists: ok, err: err}
		}
	}
	for k, a := range answers {
		if gen, read := gens[k]; read && a.err == nil && a.exists && a.conv.State != store.ConversationArchived {
			s.active.Remember(k[0], k[1], gen)
		}
	}
	for _, it := range batch {
		tenant, conv := it.Inbound.GetTenantId(), it.Inbound.GetConversationId()
		a := answers[[2]string{tenant, conv}]
		switch {
		case a.err != nil:
			// Whatever failed is the store's trouble, not the message's: retry, never dead-letter.
			it.Fail(Transient, fmt.Errorf("look up conversation %s: %w", conv, a.err))
		case !a.exists:
			it.Fail(Permanent, fmt.Errorf("conversation %s not found in tenant %s", conv, tenant))
		case a.conv.State == store.ConversationArchived:
			it.Fail(Permanent, fmt.Errorf("conversation %s is archived: it takes no new messages", conv))
		}
	}
}
