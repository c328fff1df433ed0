package authz

import (
	"context"

	middleware "github.com/grpc-ecosystem/go-grpc-middleware/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/requestid"
)

// TokenVerifier turns a bearer token into a principal (auth.Verifier).
type TokenVerifier interface {
	Verify(token string) (auth.Principal, error)
}

// Interceptor authenticates and authorizes every call by the rule table.
type Interceptor struct {
	rules    Rules // nil until LoadRules: every call is denied
	verifier TokenVerifier
	authz    *Authorizer
}

// NewInterceptor returns the interceptor. It denies every call until LoadRules succeeds.
func NewInterceptor(verifier TokenVerifier, authorizer *Authorizer) *Interceptor {
	return &Interceptor{verifier: verifier, authz: authorizer}
}

// LoadRules builds the rule table from the services registered on the server (see BuildRules). Call it
// once, after registering every service and before serving.
func (i *Interceptor) LoadRules(services map[string]grpc.ServiceInfo) error {
	rules, err := BuildRules(services)
	if err != nil {
		return err
	}
	i.rules = rules
	return nil
}

// Unary enforces the rules on unary calls.
func (i *Interceptor) Unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		rule, ctx, err := i.authenticate(ctx, info.FullMethod)
		if err != nil {
			return nil, err
		}
		if !rule.Public {
			if err := i.authorize(ctx, rule, req); err != nil {
				return nil, err
			}
		}
		return handler(ctx, req)
	}
}

// Stream enforces the rules on streaming calls: the caller is authenticated before anything is read,
// and authorized on the first request message, before the handler sees it.
func (i *Interceptor) Stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		rule, ctx, err := i.authenticate(ss.Context(), info.FullMethod)
		if err != nil {
			return err
		}
		wrapped := middleware.WrapServerStream(ss)
		wrapped.WrappedContext = ctx
		if rule.Public {
			return handler(srv, wrapped)
		}
		return handler(srv, &authorizingStream{WrappedServerStream: wrapped, check: func(m any) error {
			return i.authorize(ctx, rule, m)
		}})
	}
}

// authenticate finds the method's rule and, unless it is public, verifies the bearer token and puts the
// principal in the context. A method without a rule is denied (BuildRules makes that unreachable).
func (i *Interceptor) authenticate(ctx context.Context, method string) (Rule, context.Context, error) {
	rule, ok := i.rules[method]
	if !ok {
		return Rule{}, ctx, status.Errorf(codes.PermissionDenied, "%s has no access rule", method)
	}
	if rule.Public {
		return rule, ctx, nil
	}
	token, err := auth.TokenFromContext(ctx)
	if err != nil {
		return rule, ctx, status.Error(codes.Unauthenticated, err.Error())
	}
	p, err := i.verifier.Verify(token)
	if err != nil {
		return rule, ctx, status.Error(codes.Unauthenticated, err.Error())
	}
	requestid.SetCaller(ctx, p.Subject, p.TenantID)
	return rule, auth.WithPrincipal(ctx, p), nil
}

func (i *Interceptor) authorize(ctx context.Context, rule Rule, req any) error {
	p, _ := auth.PrincipalFrom(ctx)
	msg, _ := req.(proto.Message)
	return i.authz.Authorize(ctx, p, Request{
		Permission:        rule.Permission,
		ConversationID:    stringAt(msg, rule.ConversationField),
		RequireMembership: rule.RequireMembership,
		Ownership:         rule.Ownership,
		OwnerValue:        stringAt(msg, rule.OwnerField),
	})
}

type authorizingStream struct {
	*middleware.WrappedServerStream
	check   func(any) error
	checked bool
}

func (s *authorizingStream) RecvMsg(m any) error {
	if err := s.WrappedServerStream.RecvMsg(m); err != nil {
		return err
	}
	if !s.checked {
		s.checked = true
		return s.check(m)
	}
	return nil
}
