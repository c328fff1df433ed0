package pipeline

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/store"
)

// Conversations is what the tenant stage asks the store.
type Conversations interface {
	// GetMany returns the conversations of tenantID among ids; an id not in the map does not exist there.
	GetMany(ctx context.Context, tenantID string, ids []string) (map[string]store.Conversation, error)
}

// Authorizer is the decision the authorize stage asks for: authz.Authorizer.CanSend, the code the API's
// interceptor uses too.
type Authorizer interface {
	CanSend(ctx context.Context, sender auth.Principal, conversationID string) error
}

// tenantStage checks that the conversation exists in the envelope's tenant (a conversation of another
// tenant does not exist) and still takes messages (not archived). It answers from the batch's reads
// (batchReads: one query for the whole polled batch) when it can, else with one query per tenant for
// the partition's conversations: a look-up per conversation would cost a round trip each (and, on
// FerretDB, a scan of the collection each).
type tenantStage struct{ convs Conversations }

func (tenantStage) Name() string { return StageTenant }

func (s tenantStage) Process(ctx context.Context, batch []*Item) {
	reads := batchReadsFrom(ctx)
	type answer struct {
		conv   store.Conversation
		exists bool
		err    error // the look-up failed
	}
	answers := map[[2]string]answer{} // (tenant, conversation) → answer
	ids := map[string][]string{}      // tenant → conversation ids the batch reads did not cover
	for _, it := range batch {
		k := [2]string{it.Inbound.GetTenantId(), it.Inbound.GetConversationId()}
		if _, ok := answers[k]; ok {
			continue
		}
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

// authorizeStage asks whether the sender may still send to the conversation, as the API did when it
// accepted the message: same Authorizer, same principal (sender id, tenant, the token's roles at send
// time). One decision per (conversation, sender, roles) per batch.
type authorizeStage struct{ authz Authorizer }

func (authorizeStage) Name() string { return StageAuthorize }

// authorizeParallelism bounds the decisions of one partition's batch asked at the same time: each is a
// Redis round trip (a MongoDB read on a cache miss), so asking them one by one would leave the batch
// waiting on the network.
const authorizeParallelism = 8

func (s authorizeStage) Process(ctx context.Context, batch []*Item) {
	type key struct{ tenant, conv, sender, roles string }
	type decision struct {
		in  *platformv1.InboundMessage
		err error
	}
	index := map[key]int{}
	var decisions []decision
	keys := make([]int, len(batch))
	for i, it := range batch {
		in := it.Inbound
		k := key{in.GetTenantId(), in.GetConversationId(), in.GetSenderId(), strings.Join(in.GetSenderRoles(), "\x00")}
		j, ok := index[k]
		if !ok {
			j = len(decisions)
			index[k] = j
			decisions = append(decisions, decision{in: in})
		}
		keys[i] = j
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, authorizeParallelism)
	for j := range decisions {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			in := decisions[j].in
			p := auth.Principal{Subject: in.GetSenderId(), TenantID: in.GetTenantId(), Roles: in.GetSenderRoles()}
			decisions[j].err = s.authz.CanSend(ctx, p, in.GetConversationId())
		})
	}
	wg.Wait()
	for i, it := range batch {
		if err := decisions[keys[i]].err; err != nil {
			in := it.Inbound
			it.Fail(authzClass(err), fmt.Errorf("sender %s may not send to conversation %s: %w", in.GetSenderId(), in.GetConversationId(), err))
		}
	}
}

// authzClass maps the Authorizer's status codes: a decision (not found, denied, invalid) is permanent;
// UNAVAILABLE (membership cannot be checked) and anything unexpected are transient.
func authzClass(err error) Class {
	switch status.Code(err) {
	case codes.NotFound, codes.PermissionDenied, codes.InvalidArgument, codes.Unauthenticated, codes.FailedPrecondition:
		return Permanent
	default:
		return Transient
	}
}
