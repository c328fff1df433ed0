package pipeline

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/store"
)

// Conversations is what the tenant stage asks the store.
type Conversations interface {
	Get(ctx context.Context, tenantID, id string) (store.Conversation, error)
}

// Authorizer is the decision the authorize stage asks for: authz.Authorizer.CanSend, the code the API's
// interceptor uses too.
type Authorizer interface {
	CanSend(ctx context.Context, sender auth.Principal, conversationID string) error
}

// tenantStage checks that the conversation exists in the envelope's tenant (a conversation of another
// tenant does not exist) and still takes messages (not archived). One look-up per conversation per batch.
type tenantStage struct{ convs Conversations }

func (tenantStage) Name() string { return StageTenant }

func (s tenantStage) Process(ctx context.Context, batch []*Item) {
	type key struct{ tenant, conv string }
	type answer struct {
		class Class
		err   error
	}
	seen := map[key]answer{}
	for _, it := range batch {
		k := key{it.Inbound.GetTenantId(), it.Inbound.GetConversationId()}
		a, ok := seen[k]
		if !ok {
			c, err := s.convs.Get(ctx, k.tenant, k.conv)
			switch {
			case errors.Is(err, store.ErrNotFound):
				a = answer{Permanent, fmt.Errorf("conversation %s not found in tenant %s", k.conv, k.tenant)}
			case err != nil:
				// Whatever else failed is the store's trouble, not the message's: retry, never dead-letter.
				a = answer{Transient, fmt.Errorf("look up conversation %s: %w", k.conv, err)}
			case c.State == store.ConversationArchived:
				a = answer{Permanent, fmt.Errorf("conversation %s is archived: it takes no new messages", k.conv)}
			}
			seen[k] = a
		}
		if a.err != nil {
			it.Fail(a.class, a.err)
		}
	}
}

// authorizeStage asks whether the sender may still send to the conversation, as the API did when it
// accepted the message: same Authorizer, same principal (sender id, tenant, the token's roles at send
// time). One decision per (conversation, sender, roles) per batch.
type authorizeStage struct{ authz Authorizer }

func (authorizeStage) Name() string { return StageAuthorize }

func (s authorizeStage) Process(ctx context.Context, batch []*Item) {
	type key struct{ tenant, conv, sender, roles string }
	seen := map[key]error{}
	for _, it := range batch {
		in := it.Inbound
		k := key{in.GetTenantId(), in.GetConversationId(), in.GetSenderId(), strings.Join(in.GetSenderRoles(), "\x00")}
		err, ok := seen[k]
		if !ok {
			p := auth.Principal{Subject: in.GetSenderId(), TenantID: in.GetTenantId(), Roles: in.GetSenderRoles()}
			err = s.authz.CanSend(ctx, p, in.GetConversationId())
			seen[k] = err
		}
		if err != nil {
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
