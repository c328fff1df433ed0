package ratelimit

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/authz"
)

// Costs in units of the quotas. A stream is charged once, when it opens, at its rule's cost (StreamMessages
// reads: 1).
const (
	ReadCost     = 1
	MutationCost = 2
)

// Response header metadata of every charged call; the REST gateway sends them as the HTTP headers of the
// same names. Limit, Remaining and Reset are of the quota Result names: its burst, the units left, and
// the seconds (rounded up) until it is full again. RetryAfter, only on a refusal, is the whole seconds
// (rounded up, at least 1) until the call would fit.
const (
	HeaderLimit      = "x-ratelimit-limit"
	HeaderRemaining  = "x-ratelimit-remaining"
	HeaderReset      = "x-ratelimit-reset"
	HeaderRetryAfter = "retry-after"
)

// Cost is what a call under rule costs: a mutation (authz.Permission.Mutates) MutationCost, anything else
// ReadCost.
func Cost(rule authz.Rule) int {
	if rule.Permission.Mutates() {
		return MutationCost
	}
	return ReadCost
}

// UnaryServerInterceptor charges each authenticated call before its handler runs. It must follow the
// authenticating interceptor (authz.Interceptor.AuthenticateUnary), which puts the principal and the rule
// in the context.
func (l *Limiter) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if err := l.charge(ctx, func(md metadata.MD) error { return grpc.SetHeader(ctx, md) }); err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// StreamServerInterceptor charges each authenticated stream once, when it opens.
func (l *Limiter) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if err := l.charge(ss.Context(), ss.SetHeader); err != nil {
			return err
		}
		return handler(srv, ss)
	}
}

// charge charges the call in ctx, sets the header metadata and returns RESOURCE_EXHAUSTED when refused.
// Calls without a principal (public methods; unauthenticated ones never get here) are not charged: other
// limits bound them.
func (l *Limiter) charge(ctx context.Context, setHeader func(metadata.MD) error) error {
	p, ok := auth.PrincipalFrom(ctx)
	rule, _ := authz.RuleFrom(ctx)
	if !ok || rule.Public {
		return nil
	}
	r, err := l.Allow(ctx, p.TenantID, p.Subject, Cost(rule))
	if err != nil {
		return status.FromContextError(err).Err()
	}
	if r.Scope == ScopeNone {
		return nil
	}
	// Fails only once headers are sent, which no handler has done yet.
	_ = setHeader(r.header())
	if r.Allowed {
		return nil
	}
	return r.status(p)
}

func (r Result) header() metadata.MD {
	md := metadata.Pairs(
		HeaderLimit, strconv.Itoa(r.Limit.Burst),
		HeaderRemaining, strconv.Itoa(r.Remaining),
		HeaderReset, strconv.FormatInt(ceilSeconds(r.Reset), 10),
	)
	if !r.Allowed {
		md.Set(HeaderRetryAfter, strconv.FormatInt(max(1, ceilSeconds(r.RetryAfter)), 10))
	}
	return md
}

func ceilSeconds(d time.Duration) int64 { return int64(math.Ceil(d.Seconds())) }

// status is the refusal: RESOURCE_EXHAUSTED naming the quota, with RetryInfo and QuotaFailure details.
func (r Result) status(p auth.Principal) error {
	subject := "tenant:" + p.TenantID
	if r.Scope == ScopePrincipal {
		subject = "principal:" + p.Subject
	}
	desc := fmt.Sprintf("%s quota of %d cost units, refilled at %g per second (a read costs %d, a mutation %d)",
		r.Scope, r.Limit.Burst, r.Limit.Rate, ReadCost, MutationCost)
	st, err := status.New(codes.ResourceExhausted, fmt.Sprintf("%s quota exceeded: retry in %v", r.Scope, max(time.Millisecond, r.RetryAfter.Round(time.Millisecond)))).
		WithDetails(
			&errdetails.RetryInfo{RetryDelay: durationpb.New(r.RetryAfter)},
			&errdetails.QuotaFailure{Violations: []*errdetails.QuotaFailure_Violation{{Subject: subject, Description: desc}}},
		)
	if err != nil { // only if a detail cannot be marshalled
		return status.Errorf(codes.ResourceExhausted, "%s quota exceeded", r.Scope)
	}
	return st.Err()
}
