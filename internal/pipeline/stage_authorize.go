package pipeline

import (
	"context"
	"fmt"
	"strings"
	"sync"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/authz"
)

// Authorizer is the decision the authorize stage asks for: *authz.Authorizer, the code the API's
// interceptor uses too.
type Authorizer interface {
	Decide(ctx context.Context, p auth.Principal, req authz.Request) authz.Decision
}

// authorizeStage asks whether the sender may still send to the conversation, as the API did when it
// accepted the message: same Authorizer, same principal (sender id, tenant, the token's roles at send
// time, trusted because authenticate verified the record's signature). One decision per (conversation,
// sender, roles) per batch; membership-cache misses are answered from the batch's reads
// (authz.Request.Directory).
type authorizeStage struct{ authz Authorizer }

func (authorizeStage) Name() string { return StageAuthorize }

// authorizeParallelism bounds the decisions of one partition's batch asked at the same time: each is a
// Redis round trip (a MongoDB read on a cache miss), so asking them one by one would leave the batch
// waiting on the network.
const authorizeParallelism = 8

func (s authorizeStage) Process(ctx context.Context, b *Batch) {
	batch := b.Items
	var dir authz.Directory // nil: the Authorizer's own
	if b.Reads != nil {
		dir = b.Reads
	}
	type key struct{ tenant, conv, sender, roles string }
	type decision struct {
		in *platformv1.InboundMessage
		d  authz.Decision
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
			decisions[j].d = s.authz.Decide(ctx, p, authz.Request{Permission: authz.MessageSend,
				ConversationID: in.GetConversationId(), RequireMembership: true, Directory: dir})
		})
	}
	wg.Wait()
	for i, it := range batch {
		if d := decisions[keys[i]].d; !d.Allowed() {
			in := it.Inbound
			it.Fail(authzClass(d), fmt.Errorf("sender %s may not send to conversation %s: %s (%s)", in.GetSenderId(), in.GetConversationId(), d.Reason, d.Effect))
		}
	}
}

// authzClass maps a refusal to an error class: membership that cannot be checked now is transient (the
// stage is retried), every decision (deny, not found, invalid) is permanent.
func authzClass(d authz.Decision) Class {
	if d.Effect == authz.Unavailable {
		return Transient
	}
	return Permanent
}
