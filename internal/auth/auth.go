// Package auth authenticates callers by bearer JWT.
//
// A Verifier checks a token's signature against an allow-list of (alg, key) pairs — HS256 with
// AUTH_HMAC_SECRET, RS256/ES256 with the public keys of AUTH_JWKS_FILE picked by kid — and its claims
// (sub, tenant_id, exp required; roles an array of strings; iss/aud when configured), and yields the
// Principal. Every failure wraps ErrUnauthenticated with a reason built only from constants: the
// message never repeats the token or a value the caller put in it, so it is safe to return to clients
// and to log.
package auth

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc/metadata"
)

// DevHMACSecret is the devstack's HS256 secret; `make token` defaults to the same value (a test checks
// the Makefile). Never use it outside the devstack.
const DevHMACSecret = "devstack-insecure-hmac-secret-change-me-0123456789"

// MinHMACSecretLen is the shortest HS256 secret accepted (256 bits, the size of the HMAC-SHA256 output).
const MinHMACSecretLen = 32

// ErrUnauthenticated is wrapped by every authentication failure (map it to codes.Unauthenticated).
var ErrUnauthenticated = errors.New("unauthenticated")

// Principal is the authenticated caller.
type Principal struct {
	Subject  string   // JWT sub (user id)
	TenantID string   // tenant_id claim
	Roles    []string // roles claim (platform roles: "user", "service", "operator", "platform_operator")
}

// HasRole reports whether the principal holds role (exact match).
func (p Principal) HasRole(role string) bool {
	return slices.Contains(p.Roles, role)
}

// unauthenticated wraps ErrUnauthenticated with a reason. Callers pass only constant text, never
// token content.
func unauthenticated(reason string) error {
	return fmt.Errorf("%w: %s", ErrUnauthenticated, reason)
}

// TokenFromContext returns the bearer token of the gRPC incoming metadata "authorization"
// ("Bearer <jwt>", scheme case-insensitive). grpc-gateway forwards the HTTP Authorization header
// under the same key.
func TokenFromContext(ctx context.Context) (string, error) {
	// ValueFromIncomingContext reads the one key without copying the whole metadata map.
	return TokenFromValues(metadata.ValueFromIncomingContext(ctx, "authorization"))
}

// TokenFromValues returns the bearer token of the authorization values of a call (gRPC metadata, or
// the HTTP Authorization header's values), under the rules TokenFromContext states.
func TokenFromValues(vals []string) (string, error) {
	switch len(vals) {
	case 0:
		return "", unauthenticated("missing bearer token")
	case 1:
	default:
		// Two credentials are ambiguous; proxies may disagree on which one counts.
		return "", unauthenticated("more than one authorization value")
	}
	v := strings.TrimSpace(vals[0])
	if v == "" {
		return "", unauthenticated("missing bearer token")
	}
	scheme, token, _ := strings.Cut(v, " ")
	if !strings.EqualFold(scheme, "bearer") {
		return "", unauthenticated("authorization is not a bearer token")
	}
	token = strings.TrimSpace(token)
	if token == "" {
		return "", unauthenticated("missing bearer token")
	}
	return token, nil
}

type principalKey struct{}

// WithPrincipal returns a copy of ctx carrying p.
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// PrincipalFrom returns the principal stored by WithPrincipal.
func PrincipalFrom(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}

// mintClaims is what MintHS256 signs; roles is always an array (never null) so Verify accepts it.
type mintClaims struct {
	jwt.RegisteredClaims
	TenantID string   `json:"tenant_id"`
	Roles    []string `json:"roles"`
}

// MintHS256 signs an HS256 token for p valid for ttl from now, with iss/aud when non-empty. It is for
// the dev token command and tests; production tokens come from the identity provider.
func MintHS256(secret []byte, p Principal, ttl time.Duration, issuer, audience string) (string, error) {
	switch {
	case len(secret) < MinHMACSecretLen:
		return "", fmt.Errorf("auth: mint: HMAC secret is %d bytes; at least %d are required", len(secret), MinHMACSecretLen)
	case p.Subject == "":
		return "", errors.New("auth: mint: empty subject")
	case p.TenantID == "":
		return "", errors.New("auth: mint: empty tenant id")
	case ttl <= 0:
		return "", fmt.Errorf("auth: mint: ttl must be positive, got %s", ttl)
	}
	roles := p.Roles
	if roles == nil {
		roles = []string{}
	}
	now := time.Now()
	c := mintClaims{
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   p.Subject,
			Issuer:    issuer,
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
		},
		TenantID: p.TenantID,
		Roles:    roles,
	}
	if audience != "" {
		c.Audience = jwt.ClaimStrings{audience}
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(secret)
	if err != nil {
		return "", fmt.Errorf("auth: mint: %w", err)
	}
	return s, nil
}
