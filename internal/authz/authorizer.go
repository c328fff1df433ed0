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
	// Directory answers membership on a cache miss instead of the Authorizer's own (the pipeline passes
	// the reads of the batch in hand); nil uses the Authorizer's.
	Directory Directory
}

// Effect is what a Decision says.
type Effect uint8

// Effects. Only Allow lets the call through; the others say why not, so each caller maps them to its own
// vocabulary (the interceptor to gRPC codes, the pipeline to error classes) without parsing messages.
const (
	Allow       Effect = iota
	Deny               // the conversation exists, but the caller may not
	NotFound           // no such conversation (or message) in the caller's tenant: existence never leaks
	Invalid            // the request lacks what the decision needs (a conversation or message id)
	Unavailable        // membership or authorship cannot be checked right now: fail closed
)

var effectNames = [...]string{Allow: "allow", Deny: "deny", NotFound: "not_found", Invalid: "invalid", Unavailable: "unavailable"}

func (e Effect) String() string {
	if int(e) < len(effectNames) {
		return effectNames[e]
	}
	return "unknown"
}

// Decision is the answer to a Request: an effect and, unless allowed, why (safe to show the caller).
type Decision struct {
	Effect Effect
	Reason string
}

// Allowed reports whether the decision lets the call through.
func (d Decision) Allowed() bool { return d.Effect == Allow }

func allow() Decision { return Decision{Effect: Allow} }

func decision(e Effect, format string, args ...any) Decision {
	return Decision{Effect: e, Reason: fmt.Sprintf(format, args...)}
}

// Status maps a decision to the gRPC status the API answers: nil when allowed, else PERMISSION_DENIED,
// NOT_FOUND, INVALID_ARGUMENT or UNAVAILABLE with the reason.
func Status(d Decision) error {
	switch d.Effect {
	case Allow:
		return nil
	case NotFound:
		return status.Error(codes.NotFound, d.Reason)
	case Invalid:
		return status.Error(codes.InvalidArgument, d.Reason)
	case Unavailable:
		return status.Error(codes.Unavailable, d.Reason)
	default:
		return status.Error(codes.PermissionDenied, d.Reason)
	}
}

// Authorizer makes the decisions. The interceptor and the pipeline's authorize stage both call it.
type Authorizer struct {
	members *MembershipCache
	dir     Directory

	decisions *prometheus.CounterVec
	duration  prometheus.Histogram
	// counted holds the decisions counter of every permission × effect, resolved once (and so present in
	// /metrics from the start): label hashing is not on every call's path.
	counted map[decisionKey]prometheus.Counter
}

type decisionKey struct {
	perm   Permission
	effect Effect
}

// NewAuthorizer returns an Authorizer using members for membership and dir for message authors.
func NewAuthorizer(members *MembershipCache, dir Directory, reg prometheus.Registerer) (*Authorizer, error) {
	a := &Authorizer{
		members: members, dir: dir,
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: observability.Namespace, Subsystem: "authz", Name: "decisions_total",
			Help: "Authorization decisions by permission and result (allow, deny, not_found, invalid, unavailable).",
		}, []string{"permission", "result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: observability.Namespace, Subsystem: "authz", Name: "decision_duration_seconds",
			Help:    "Duration of an authorization decision, membership lookup included.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		}),
	}
	a.counted = map[decisionKey]prometheus.Counter{}
	for _, perm := range allPermissions {
		for e := range Effect(len(effectNames)) {
			a.counted[decisionKey{perm, e}] = a.decisions.WithLabelValues(string(perm), e.String())
		}
	}
	for _, col := range []prometheus.Collector{a.decisions, a.duration} {
		if err := reg.Register(col); err != nil {
			return nil, fmt.Errorf("register authz metrics: %w", err)
		}
	}
	return a, nil
}

// Decide answers req for p. NotFound for a conversation (or message) that does not exist in the caller's
// tenant, so existence never leaks across tenants; Deny when it exists but the caller may not;
// Unavailable when membership cannot be checked (fail closed); Invalid when the request lacks the
// conversation id.
func (a *Authorizer) Decide(ctx context.Context, p auth.Principal, req Request) Decision {
	start := time.Now()
	d := a.decide(ctx, start, p, req)
	a.duration.Observe(time.Since(start).Seconds())
	if c, ok := a.counted[decisionKey{req.Permission, d.Effect}]; ok {
		c.Inc()
	} else {
		a.decisions.WithLabelValues(string(req.Permission), d.Effect.String()).Inc()
	}
	return d
}

func (a *Authorizer) decide(ctx context.Context, now time.Time, p auth.Principal, req Request) Decision {
	if !req.RequireMembership && req.ConversationID == "" {
		if platformGrant(p.Roles, req.Permission) {
			return allow()
		}
		return decision(Deny, "permission %s requires one of the platform roles that grant it", req.Permission)
	}
	if req.ConversationID == "" {
		return decision(Invalid, "conversation id is required")
	}
	m, err := a.members.lookupAt(ctx, now, req.Directory, p.TenantID, req.ConversationID, p.Subject)
	if err != nil {
		return decision(Unavailable, "cannot check conversation membership right now; retry later")
	}
	if !m.ConversationExists {
		return decision(NotFound, "conversation not found")
	}
	// A service acts on every conversation of its own tenant (Lookup is tenant-scoped) without membership.
	if p.HasRole(PlatformService) && platformGrant([]string{PlatformService}, req.Permission) {
		return allow()
	}
	if m.Role == "" {
		if !req.RequireMembership && platformGrant(p.Roles, req.Permission) {
			return allow()
		}
		return decision(Deny, "not a member of this conversation")
	}
	switch ConversationRoles[m.Role][req.Permission] {
	case Allowed:
		return allow()
	case OwnOnly:
		return a.checkOwnership(ctx, p, req, m.Role)
	default:
		return decision(Deny, "role %s may not %s", m.Role, req.Permission)
	}
}

func (a *Authorizer) checkOwnership(ctx context.Context, p auth.Principal, req Request, role store.Role) Decision {
	switch req.Ownership {
	case platformv1.Ownership_OWNERSHIP_SELF:
		if req.OwnerValue == p.Subject {
			return allow()
		}
		return decision(Deny, "role %s may %s only for itself", role, req.Permission)
	case platformv1.Ownership_OWNERSHIP_MESSAGE_AUTHOR:
		if req.OwnerValue == "" {
			return decision(Invalid, "message id is required")
		}
		author, err := a.dir.MessageAuthor(ctx, p.TenantID, req.ConversationID, req.OwnerValue)
		switch {
		case errors.Is(err, store.ErrNotFound):
			return decision(NotFound, "message not found")
		case err != nil:
			return decision(Unavailable, "cannot check the message's author right now; retry later")
		case author != p.Subject:
			return decision(Deny, "only the author may %s with role %s", req.Permission, role)
		}
		return allow()
	default:
		return decision(Deny, "role %s may %s only on its own resources", role, req.Permission)
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
