package authz

import (
	"context"

	middleware "github.com/grpc-ecosystem/go-grpc-middleware/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/msgplatform/platform/internal/auth"
)

// TokenVerifier turns a bearer token into a principal (auth.Verifier).
type TokenVerifier interface {
	Verify(token string) (auth.Principal, error)
}

// Interceptor enforces the rule table in two steps, each its own interceptor so the chain can log
// between them: Authenticate (who is calling: the bearer token of every non-public method, the principal
// put in the context) and Authorize (may they: the method's rule decided by the Authorizer). The
// gateway chains them as requestid → metrics → Authenticate → logging → Authorize → recovery, so a call's
// log line names its caller and a call without a valid token never reaches a handler.
type Interceptor struct {
	rules    Rules // nil until LoadRules: every call is denied
	verifier TokenVerifier
	authz    *Authorizer
	// OnUnauthenticated, when set, hears of every call refused for want of a valid token (the reason is
	// safe to log: it never repeats the token).
	OnUnauthenticated func(ctx context.Context, method string, err error)
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

// AuthenticateUnary authenticates unary calls.
func (i *Interceptor) AuthenticateUnary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, err := i.authenticate(ctx, info.FullMethod)
		if err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// AuthenticateStream authenticates streaming calls before anything is read from them.
func (i *Interceptor) AuthenticateStream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, err := i.authenticate(ss.Context(), info.FullMethod)
		if err != nil {
			return err
		}
		wrapped := middleware.WrapServerStream(ss)
		wrapped.WrappedContext = ctx
		return handler(srv, wrapped)
	}
}

// AuthorizeUnary decides unary calls by their rule.
func (i *Interceptor) AuthorizeUnary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		rule, err := i.rule(info.FullMethod)
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

// AuthorizeStream decides streaming calls on their first request message, before the handler sees it.
func (i *Interceptor) AuthorizeStream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		rule, err := i.rule(info.FullMethod)
		if err != nil {
			return err
		}
		if rule.Public {
			return handler(srv, ss)
		}
		ctx := ss.Context()
		return handler(srv, &authorizingStream{WrappedServerStream: middleware.WrapServerStream(ss), check: func(m any) error {
			return i.authorize(ctx, rule, m)
		}})
	}
}

// IsPublic reports whether method needs no credentials (a method without a rule does need them).
func (i *Interceptor) IsPublic(method string) bool {
	r, ok := i.rules[method]
	return ok && r.Public
}

type ruleKey struct{}

// RuleFrom returns the access rule of the call, which the authenticating interceptor put in its context.
func RuleFrom(ctx context.Context) (Rule, bool) {
	r, ok := ctx.Value(ruleKey{}).(Rule)
	return r, ok
}

// rule returns the method's rule; a method without one is denied (BuildRules makes that unreachable).
func (i *Interceptor) rule(method string) (Rule, error) {
	rule, ok := i.rules[method]
	if !ok {
		return Rule{}, status.Errorf(codes.PermissionDenied, "%s has no access rule", method)
	}
	return rule, nil
}

// authenticate verifies the bearer token of a non-public method and returns ctx with the principal.
// The rule goes into the context (RuleFrom) for the interceptors after it (quota, audit).
func (i *Interceptor) authenticate(ctx context.Context, method string) (context.Context, error) {
	rule, err := i.rule(method)
	if err != nil {
		return ctx, err
	}
	ctx = context.WithValue(ctx, ruleKey{}, rule)
	if rule.Public {
		// A public method needs no token, but a valid one names the caller (GetHealth shows operators
		// more); an invalid one is ignored, so a probe with a stale token still gets its answer.
		if token, err := auth.TokenFromContext(ctx); err == nil {
			if p, err := i.verifier.Verify(token); err == nil {
				ctx = auth.WithPrincipal(ctx, p)
			}
		}
		return ctx, nil
	}
	token, err := auth.TokenFromContext(ctx)
	if err == nil {
		var p auth.Principal
		if p, err = i.verifier.Verify(token); err == nil {
			return auth.WithPrincipal(ctx, p), nil
		}
	}
	if i.OnUnauthenticated != nil {
		i.OnUnauthenticated(ctx, method, err)
	}
	return ctx, status.Error(codes.Unauthenticated, err.Error())
}

func (i *Interceptor) authorize(ctx context.Context, rule Rule, req any) error {
	p, ok := auth.PrincipalFrom(ctx)
	if !ok {
		return status.Error(codes.Unauthenticated, "no authenticated caller")
	}
	msg, _ := req.(proto.Message)
	return Status(i.authz.Decide(ctx, p, Request{
		Permission:        rule.Permission,
		ConversationID:    stringAt(msg, rule.ConversationField),
		RequireMembership: rule.RequireMembership,
		Ownership:         rule.Ownership,
		OwnerValue:        stringAt(msg, rule.OwnerField),
	}))
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
