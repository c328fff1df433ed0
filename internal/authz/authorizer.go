package authz

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/observability"
	"github.com/msgplatform/platform/internal/store"
)

// Request is one authorization question: may the principal do Permission on the conversation (and,
// for own-only grants, on the resource named by OwnerValue)?
type Request struct {
	Permission        Permission
	ConversationID    string // empty for permissions that are not about one conversation
	RequireMembership bool
	Ownership         platformv1.Ownership
	OwnerValue        string // message id (OWNERSHIP_MESSAGE_AUTHOR) or user id (OWNERSHIP_SELF)
}

// Authorizer makes the decisions. The interceptor and the pipeline's authorize stage both call it.
type Authorizer struct {
	members *MembershipCache
	dir     Directory

	decisions *prometheus.CounterVec
	duration  prometheus.Histogram
	// counted holds the decisions counter of every permission × the codes decide returns, resolved once
	// (and so present in /metrics from the start): label hashing is not on every call's path.
	counted map[decisionKey]prometheus.Counter
}

type decisionKey struct {
	perm Permission
	code codes.Code
}

// NewAuthorizer returns an Authorizer using members for membership and dir for message authors.
func NewAuthorizer(members *MembershipCache, dir Directory, reg prometheus.Registerer) (*Authorizer, error) {
	a := &Authorizer{
		members: members, dir: dir,
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: observability.Namespace, Subsystem: "authz", Name: "decisions_total",
			Help: "Authorization decisions by permission and result (gRPC code name).",
		}, []string{"permission", "result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: observability.Namespace, Subsystem: "authz", Name: "decision_duration_seconds",
			Help:    "Duration of an authorization decision, membership lookup included.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		}),
	}
	a.counted = map[decisionKey]prometheus.Counter{}
	for _, perm := range allPermissions {
		for _, code := range []codes.Code{codes.OK, codes.InvalidArgument, codes.NotFound, codes.PermissionDenied, codes.Unavailable} {
			a.counted[decisionKey{perm, code}] = a.decisions.WithLabelValues(string(perm), code.String())
		}
	}
	for _, col := range []prometheus.Collector{a.decisions, a.duration} {
		if err := reg.Register(col); err != nil {
			return nil, fmt.Errorf("register authz metrics: %w", err)
		}
	}
	return a, nil
}

// Authorize returns nil when allowed, else a gRPC status error: NOT_FOUND for a conversation (or
// message) that does not exist in the caller's tenant, so existence never leaks across tenants;
// PERMISSION_DENIED when it exists but the caller may not; UNAVAILABLE when membership cannot be checked
// (fail closed); INVALID_ARGUMENT when the request lacks the conversation id.
func (a *Authorizer) Authorize(ctx context.Context, p auth.Principal, req Request) error {
	start := time.Now()
	err := a.decide(ctx, start, p, req)
	a.duration.Observe(time.Since(start).Seconds())
	code := status.Code(err)
	if c, ok := a.counted[decisionKey{req.Permission, code}]; ok {
		c.Inc()
	} else {
		a.decisions.WithLabelValues(string(req.Permission), code.String()).Inc()
	}
	return err
}

// CanSend is the pipeline's question: may sender still send to the conversation?
func (a *Authorizer) CanSend(ctx context.Context, sender auth.Principal, conversationID string) error {
	return a.Authorize(ctx, sender, Request{Permission: MessageSend, ConversationID: conversationID, RequireMembership: true})
}

func (a *Authorizer) decide(ctx context.Context, now time.Time, p auth.Principal, req Request) error {
	if !req.RequireMembership && req.ConversationID == "" {
		if platformGrant(p.Roles, req.Permission) {
			return nil
		}
		return status.Errorf(codes.PermissionDenied, "permission %s requires one of the platform roles that grant it", req.Permission)
	}
	if req.ConversationID == "" {
		return status.Error(codes.InvalidArgument, "conversation id is required")
	}
	m, err := a.members.lookupAt(ctx, now, p.TenantID, req.ConversationID, p.Subject)
	if err != nil {
		return status.Error(codes.Unavailable, "cannot check conversation membership right now; retry later")
	}
	if !m.ConversationExists {
		return status.Error(codes.NotFound, "conversation not found")
	}
	// A service acts on every conversation of its own tenant (Lookup is tenant-scoped) without membership.
	if p.HasRole(PlatformService) && platformGrant([]string{PlatformService}, req.Permission) {
		return nil
	}
	if m.Role == "" {
		if !req.RequireMembership && platformGrant(p.Roles, req.Permission) {
			return nil
		}
		return status.Error(codes.PermissionDenied, "not a member of this conversation")
	}
	switch ConversationRoles[m.Role][req.Permission] {
	case Allowed:
		return nil
	case OwnOnly:
		return a.checkOwnership(ctx, p, req, m.Role)
	default:
		return status.Errorf(codes.PermissionDenied, "role %s may not %s", m.Role, req.Permission)
	}
}

func (a *Authorizer) checkOwnership(ctx context.Context, p auth.Principal, req Request, role store.Role) error {
	switch req.Ownership {
	case platformv1.Ownership_OWNERSHIP_SELF:
		if req.OwnerValue == p.Subject {
			return nil
		}
		return status.Errorf(codes.PermissionDenied, "role %s may %s only for itself", role, req.Permission)
	case platformv1.Ownership_OWNERSHIP_MESSAGE_AUTHOR:
		if req.OwnerValue == "" {
			return status.Error(codes.InvalidArgument, "message id is required")
		}
		author, err := a.dir.MessageAuthor(ctx, p.TenantID, req.ConversationID, req.OwnerValue)
		switch {
		case errors.Is(err, store.ErrNotFound):
			return status.Error(codes.NotFound, "message not found")
		case err != nil:
			return status.Error(codes.Unavailable, "cannot check the message's author right now; retry later")
		case author != p.Subject:
			return status.Errorf(codes.PermissionDenied, "only the author may %s with role %s", req.Permission, role)
		}
		return nil
	default:
		return status.Errorf(codes.PermissionDenied, "role %s may %s only on its own resources", role, req.Permission)
	}
}

// StoreDirectory answers membership questions from the MongoDB store.
type StoreDirectory struct{ Store *store.Store }

// Membership implements Directory.
func (d StoreDirectory) Membership(ctx context.Context, tenantID, conversationID, userID string) (Membership, error) {
	if _, err := d.Store.Conversations.Get(ctx, tenantID, conversationID); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return Membership{}, nil
		}
		return Membership{}, err
	}
	m, err := d.Store.Members.Get(ctx, tenantID, conversationID, userID)
	if errors.Is(err, store.ErrNotFound) {
		return Membership{ConversationExists: true}, nil
	}
	if err != nil {
		return Membership{}, err
	}
	return Membership{ConversationExists: true, Role: m.Role}, nil
}

// MessageAuthor implements Directory.
func (d StoreDirectory) MessageAuthor(ctx context.Context, tenantID, conversationID, messageID string) (string, error) {
	msg, err := d.Store.Messages.Get(ctx, tenantID, conversationID, messageID)
	if err != nil {
		return "", err
	}
	return msg.SenderID, nil
}
