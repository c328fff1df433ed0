package loadgen

import (
	"context"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/metadata"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/auth"
)

// maxInitialMembers is how many members CreateConversation takes (the API's limit); more are added one
// by one with AddMember.
const maxInitialMembers = 100

// setupWorkers bounds concurrent setup calls: enough to hide round trips, few enough not to be a load
// test of its own.
const setupWorkers = 8

// identities are the run's callers as the outgoing metadata carrying their bearer token.
type identities struct {
	ownerID string
	owner   metadata.MD
	senders []metadata.MD
}

func newIdentities(c Config) (identities, error) {
	bearer := func(tok string) metadata.MD { return metadata.Pairs("authorization", "Bearer "+tok) }
	if c.Token != "" {
		// Unverified: only to learn who we are; the server verifies.
		claims := jwt.MapClaims{}
		if _, _, err := jwt.NewParser().ParseUnverified(c.Token, claims); err != nil {
			return identities{}, fmt.Errorf("read token: %w", err)
		}
		sub, err := claims.GetSubject()
		if err != nil || sub == "" {
			return identities{}, fmt.Errorf("read token: no sub claim")
		}
		tok := bearer(c.Token)
		return identities{ownerID: sub, owner: tok, senders: []metadata.MD{tok}}, nil
	}
	// Long enough for the setup, the run and the grace period with room to spare, but no longer than a
	// gateway accepts by default (AUTH_MAX_TOKEN_TTL, 24h).
	ttl := min(c.Duration+c.Grace+c.WarmupTimeout+time.Hour, 24*time.Hour)
	mint := func(sub string) (metadata.MD, error) {
		tok, err := auth.MintHS256([]byte(c.HMACSecret), auth.Principal{Subject: sub, TenantID: c.Tenant, Roles: []string{"user"}}, ttl, c.Issuer, c.Audience)
		if err != nil {
			return nil, fmt.Errorf("mint token for %s: %w", sub, err)
		}
		return bearer(tok), nil
	}
	id := identities{ownerID: c.OwnerID()}
	var err error
	if id.owner, err = mint(id.ownerID); err != nil {
		return identities{}, err
	}
	for i := range c.Senders {
		s, err := mint(c.SenderID(i))
		if err != nil {
			return identities{}, err
		}
		id.senders = append(id.senders, s)
	}
	return id, nil
}

// plan deals conversations and senders round robin: pair k is (conversation k mod C, sender k mod S) for
// k < max(C, S), so each conversation has a sender and each sender a conversation. Message n uses pair
// n mod len(pairs).
type plan struct {
	pairs []pair
}

type pair struct{ conversation, sender int }

func newPlan(conversations, senders int) plan {
	n := max(conversations, senders)
	p := plan{pairs: make([]pair, n)}
	for k := range n {
		p.pairs[k] = pair{k % conversations, k % senders}
	}
	return p
}

func (p plan) forMessage(n int) pair { return p.pairs[n%len(p.pairs)] }

// members returns the senders of each conversation.
func (p plan) members(conversations int) [][]int {
	out := make([][]int, conversations)
	for _, pr := range p.pairs {
		out[pr.conversation] = append(out[pr.conversation], pr.sender)
	}
	return out
}

// createConversations creates the run's conversations as the owner, with their senders as members, and
// returns their ids in order.
func createConversations(ctx context.Context, c Config, id identities, convs platformv1.ConversationServiceClient, p plan) ([]string, error) {
	members := p.members(c.Conversations)
	ids := make([]string, c.Conversations)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(setupWorkers)
	for i := range c.Conversations {
		g.Go(func() error {
			var userIDs []string
			for _, s := range members[i] {
				if c.Token == "" {
					userIDs = append(userIDs, c.SenderID(s))
				}
			}
			first := userIDs[:min(len(userIDs), maxInitialMembers)]
			cctx, cancel := context.WithTimeout(withOutgoing(gctx, id.owner), c.CallTimeout)
			defer cancel()
			resp, err := convs.CreateConversation(cctx, &platformv1.CreateConversationRequest{
				Title: fmt.Sprintf("loadgen %s #%d", c.RunID, i), MemberIds: first})
			if err != nil {
				return fmt.Errorf("create conversation %d: %w", i, err)
			}
			ids[i] = resp.GetConversation().GetId()
			for _, u := range userIDs[len(first):] {
				if err := addMember(gctx, c, id, convs, ids[i], u); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return ids, nil
}

func addMember(ctx context.Context, c Config, id identities, convs platformv1.ConversationServiceClient, convID, userID string) error {
	ctx, cancel := context.WithTimeout(withOutgoing(ctx, id.owner), c.CallTimeout)
	defer cancel()
	_, err := convs.AddMember(ctx, &platformv1.AddMemberRequest{ConversationId: convID, UserId: userID, Role: platformv1.MemberRole_MEMBER_ROLE_MEMBER})
	if err != nil {
		return fmt.Errorf("add %s to conversation %s: %w", userID, convID, err)
	}
	return nil
}

// withOutgoing returns ctx carrying md (an identity's token) as outgoing metadata.
func withOutgoing(ctx context.Context, md metadata.MD) context.Context {
	return metadata.NewOutgoingContext(ctx, md)
}
