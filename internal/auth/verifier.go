package auth

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/secret"
)

const (
	// maxTokenLen bounds the work an unauthenticated caller can make us do (base64 + JSON decoding
	// happen before the signature is checked).
	maxTokenLen   = 8 << 10
	defaultLeeway = 30 * time.Second
	// DefaultMaxTokenTTL is the longest token lifetime a Verifier accepts when Config.MaxTokenTTL is
	// zero (AUTH_MAX_TOKEN_TTL's default).
	DefaultMaxTokenTTL = 24 * time.Hour
)

// Config selects the keys and claim checks of a Verifier.
type Config struct {
	HMACSecret []byte        // HS256; empty = HS256 disabled
	JWKSFile   string        // RS256/ES256 public keys, selected by kid; empty = disabled
	Issuer     string        // enforced when non-empty
	Audience   string        // enforced when non-empty
	Leeway     time.Duration // clock skew allowed on exp/nbf/iat; default 30s when zero
	// MaxTokenTTL is the longest lifetime accepted: exp - iat, or exp - now (plus Leeway) when the token
	// has no iat. DefaultMaxTokenTTL when zero; negative: no maximum.
	MaxTokenTTL time.Duration
	Now         func() time.Time // for tests; nil = time.Now
	// CacheTTL bounds how long a verified token is remembered (never past its exp); default 1 minute when
	// zero, negative disables the cache. CacheSize bounds the number of tokens remembered (default 10,000).
	CacheTTL  time.Duration
	CacheSize int
}

// Verifier verifies bearer JWTs. Its configuration is immutable; it is safe for concurrent use.
type Verifier struct {
	hmacSecret []byte                     // nil when HS256 is disabled
	keys       map[string]verificationKey // JWKS keys by kid
	algs       []string                   // the allow-list: exactly the algs some configured key verifies
	issuer     string
	audience   string
	parser     *jwt.Parser
	maxTTL     time.Duration // ≤ 0: none
	leeway     time.Duration
	now        func() time.Time
	cache      *tokenCache // verified tokens; nil when disabled
}

// NewVerifier checks cfg and loads the JWKS file once; the error names the env var to fix.
func NewVerifier(cfg Config) (*Verifier, error) {
	if len(cfg.HMACSecret) == 0 && cfg.JWKSFile == "" {
		return nil, errors.New("auth: no token key configured: set AUTH_HMAC_SECRET and/or AUTH_JWKS_FILE")
	}
	if len(cfg.HMACSecret) > 0 {
		// Length and variety: a placeholder ("aaaa…", "abab…", a word repeated) is refused, not only
		// a short secret.
		if err := secret.Check(cfg.HMACSecret); err != nil {
			return nil, fmt.Errorf("auth: AUTH_HMAC_SECRET %w", err)
		}
	}
	if cfg.Leeway < 0 {
		return nil, fmt.Errorf("auth: negative leeway %s", cfg.Leeway)
	}
	v := &Verifier{issuer: cfg.Issuer, audience: cfg.Audience, now: cfg.Now, cache: newTokenCache(cfg.CacheTTL, cfg.CacheSize)}
	if v.now == nil {
		v.now = time.Now
	}
	if len(cfg.HMACSecret) > 0 {
		v.hmacSecret = bytes.Clone(cfg.HMACSecret)
		v.algs = append(v.algs, jwt.SigningMethodHS256.Alg())
	}
	if cfg.JWKSFile != "" {
		keys, err := loadJWKS(cfg.JWKSFile)
		if err != nil {
			return nil, fmt.Errorf("auth: AUTH_JWKS_FILE %s: %w", cfg.JWKSFile, err)
		}
		v.keys = keys
		for _, k := range keys {
			if !slices.Contains(v.algs, k.alg) {
				v.algs = append(v.algs, k.alg)
			}
		}
	}
	leeway := cfg.Leeway
	if leeway == 0 {
		leeway = defaultLeeway
	}
	v.leeway = leeway
	switch {
	case cfg.MaxTokenTTL == 0:
		v.maxTTL = DefaultMaxTokenTTL
	case cfg.MaxTokenTTL > 0:
		v.maxTTL = cfg.MaxTokenTTL
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(v.algs), // second line of defence behind checkHeader and keyFor
		jwt.WithLeeway(leeway),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithStrictDecoding(), // one encoding per token: no malleable trailing bits
	}
	if cfg.Now != nil {
		opts = append(opts, jwt.WithTimeFunc(cfg.Now))
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	v.parser = jwt.NewParser(opts...)
	return v, nil
}

// Verify authenticates token and returns its principal. Every error wraps ErrUnauthenticated and says
// why, without echoing the token or its claim values. A token verified before is answered from the
// cache until min(exp, now + CacheTTL); the principal's Roles are shared between such calls, read-only.
func (v *Verifier) Verify(token string) (Principal, error) {
	now := v.now()
	if p, ok := v.cache.get(token, now); ok {
		return p, nil
	}
	if token == "" {
		return Principal{}, unauthenticated("missing bearer token")
	}
	if len(token) > maxTokenLen {
		return Principal{}, unauthenticated("token too large")
	}
	if reason := v.checkHeader(token); reason != "" {
		return Principal{}, unauthenticated(reason)
	}
	c := tokenClaims{maxTTL: v.maxTTL, leeway: v.leeway, now: now}
	if _, err := v.parser.ParseWithClaims(token, &c, v.keyFor); err != nil {
		return Principal{}, unauthenticated(v.reasons(err, &c))
	}
	exp, _ := c.GetExpirationTime()
	v.cache.put(token, c.principal, exp.Time, now) // exp is required, so set after a pass
	return c.principal, nil
}

// checkHeader rejects algorithms outside the allow-list before the library looks anything up, so the
// reason is precise ("alg not allowed" rather than a generic signature failure). It decodes the header
// exactly as jwt does (map, strict base64url), so both see the same alg.
func (v *Verifier) checkHeader(token string) string {
	h64, _, ok := strings.Cut(token, ".")
	if !ok {
		return "malformed token"
	}
	hb, err := base64.RawURLEncoding.Strict().DecodeString(h64)
	if err != nil {
		return "malformed token"
	}
	var h map[string]any
	if err := json.Unmarshal(hb, &h); err != nil {
		return "malformed token"
	}
	alg, _ := h["alg"].(string)
	if !slices.Contains(v.algs, alg) {
		return "alg not allowed"
	}
	if _, ok := h["crit"]; ok {
		// RFC 7515 §4.1.11: extensions we do not understand must make the token invalid.
		return "unsupported critical header"
	}
	return ""
}

// reason is an error whose text is safe to show: constants only. keyFor and tokenClaims.Validate
// return them; reasons() collects them from the library's error tree.
type reason string

func (r reason) Error() string { return string(r) }

const (
	errMissingKid  reason = "missing kid"
	errUnknownKid  reason = "unknown kid"
	errKidAlg      reason = "kid does not match alg"
	errAlgRejected reason = "alg not allowed"
)

// keyFor is the jwt.Keyfunc: each alg gets only its own kind of key, so an HS256 token is never checked
// against an RSA/EC public key (algorithm confusion) and "none" never gets a key. The methods are
// compared by identity, not by name, so a method re-registered under a known name is refused too.
func (v *Verifier) keyFor(t *jwt.Token) (any, error) {
	switch t.Method {
	case jwt.SigningMethodHS256:
		if v.hmacSecret == nil {
			return nil, errAlgRejected
		}
		return v.hmacSecret, nil // kid, if any, is irrelevant: there is one HMAC secret
	case jwt.SigningMethodRS256, jwt.SigningMethodES256:
		kid, _ := t.Header["kid"].(string)
		if kid == "" {
			return nil, errMissingKid
		}
		k, ok := v.keys[kid]
		if !ok {
			return nil, errUnknownKid
		}
		if k.alg != t.Method.Alg() {
			return nil, errKidAlg
		}
		return k.key, nil
	default:
		return nil, errAlgRejected
	}
}

// libraryReasons maps the library's specific sentinels to our wording; its generic ones
// (malformed, signature invalid) are the fallback in reasons().
var libraryReasons = []struct {
	err    error
	reason string
}{
	{jwt.ErrTokenExpired, "token expired"},
	{jwt.ErrTokenNotValidYet, "token not yet valid"},
	{jwt.ErrTokenUsedBeforeIssued, "token issued in the future"},
	{jwt.ErrTokenInvalidIssuer, "wrong issuer"},
	{jwt.ErrTokenInvalidAudience, "wrong audience"},
}

// reasons turns a parse error into a message from constants only. The library's own messages are not
// used: some quote header values (e.g. "signing method X is invalid").
func (v *Verifier) reasons(err error, c *tokenClaims) string {
	var out []string
	add := func(r string) {
		if !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	missing := false // some required registered claim is absent
	var walk func(error)
	walk = func(e error) {
		if r, ok := e.(reason); ok {
			add(string(r))
			return
		}
		for _, m := range libraryReasons {
			if e == m.err {
				add(m.reason)
				return
			}
		}
		if e == jwt.ErrTokenRequiredClaimMissing {
			missing = true
			return
		}
		switch u := e.(type) {
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				walk(e)
			}
		case interface{ Unwrap() error }:
			if e := u.Unwrap(); e != nil {
				walk(e)
			}
		}
	}
	walk(err)
	if missing {
		// The library names the claim only in its message; c was decoded, and its signature
		// verified, before claims are validated, so ask c instead.
		n := len(out)
		if absent(c.Exp) {
			add(`missing claim "exp"`)
		}
		if v.issuer != "" && c.Issuer == "" {
			add(`missing claim "iss"`)
		}
		if v.audience != "" && len(c.Audience) == 0 {
			add(`missing claim "aud"`)
		}
		if len(out) == n {
			add("missing required claim")
		}
	}
	switch {
	case len(out) > 0:
		return strings.Join(out, "; ")
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return "bad signature"
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "malformed token"
	default:
		return "invalid token"
	}
}

// tokenClaims decodes the platform claims. sub, tenant_id and roles are kept raw (sub shadows the
// embedded RegisteredClaims.Subject) so a wrong JSON type is reported by claim name after the
// signature check, instead of failing decoding as "malformed token". exp, nbf and iat are kept raw too
// (shadowing ExpiresAt, NotBefore and IssuedAt) and read by the Get methods below, which the library's
// validator calls: the library's NumericDate accepts a JSON string holding a number ("exp":"1900000000"),
// RFC 7519 §2 does not, and neither do we.
type tokenClaims struct {
	jwt.RegisteredClaims
	Sub      json.RawMessage `json:"sub"`
	TenantID json.RawMessage `json:"tenant_id"`
	Roles    json.RawMessage `json:"roles"`
	Exp      json.RawMessage `json:"exp"`
	Nbf      json.RawMessage `json:"nbf"`
	Iat      json.RawMessage `json:"iat"`

	// Set by Verify before parsing: the lifetime rule (see Config.MaxTokenTTL).
	maxTTL time.Duration
	leeway time.Duration
	now    time.Time

	principal Principal // set by Validate
}

// GetExpirationTime implements jwt.Claims: exp, which must be a JSON number.
func (c *tokenClaims) GetExpirationTime() (*jwt.NumericDate, error) { return numericDate(c.Exp, "exp") }

// GetNotBefore implements jwt.Claims: nbf, which must be a JSON number when present.
func (c *tokenClaims) GetNotBefore() (*jwt.NumericDate, error) { return numericDate(c.Nbf, "nbf") }

// GetIssuedAt implements jwt.Claims: iat, which must be a JSON number when present.
func (c *tokenClaims) GetIssuedAt() (*jwt.NumericDate, error) { return numericDate(c.Iat, "iat") }

func absent(raw json.RawMessage) bool { return len(raw) == 0 || string(raw) == "null" }

// numericDate decodes a NumericDate claim (RFC 7519 §2: a JSON number of seconds since the epoch,
// possibly fractional): nil when absent, a reason naming the claim for anything else (a string, even
// one holding digits, a boolean, an object).
func numericDate(raw json.RawMessage, name string) (*jwt.NumericDate, error) {
	if absent(raw) {
		return nil, nil
	}
	bad := reason(`claim "` + name + `" must be a number (seconds since the epoch)`)
	if raw[0] != '-' && (raw[0] < '0' || raw[0] > '9') {
		return nil, bad
	}
	var d jwt.NumericDate
	if err := d.UnmarshalJSON(raw); err != nil {
		return nil, bad
	}
	return &d, nil
}

// Validate implements jwt.ClaimsValidator; the library calls it after the signature and the
// registered claims have been checked.
func (c *tokenClaims) Validate() error {
	var errs []error
	sub, err := requiredID(c.Sub, "sub")
	if err != nil {
		errs = append(errs, err)
	}
	tenant, err := requiredID(c.TenantID, "tenant_id")
	if err != nil {
		errs = append(errs, err)
	}
	roles, err := optionalRoles(c.Roles)
	if err != nil {
		errs = append(errs, err)
	}
	if err := c.checkLifetime(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	c.principal = Principal{Subject: sub, TenantID: tenant, Roles: roles}
	return nil
}

// checkLifetime is the maximum lifetime rule: exp - iat, or exp - now when there is no iat (with the
// leeway, for an issuer's clock a little ahead of ours), at most maxTTL. A token that lives longer is
// refused even while it is still valid: a leaked long-lived token would otherwise work for years. The
// library has checked the dates' types (Get methods) before calling Validate; a bad or missing exp is
// reported there.
func (c *tokenClaims) checkLifetime() error {
	exp, err := c.GetExpirationTime()
	if err != nil || exp == nil || c.maxTTL <= 0 {
		return nil
	}
	iat, err := c.GetIssuedAt()
	switch {
	case err != nil:
		return nil
	case iat != nil:
		if exp.Sub(iat.Time) > c.maxTTL {
			return reason("token lifetime (exp - iat) exceeds the maximum of " + c.maxTTL.String())
		}
	case exp.Sub(c.now) > c.maxTTL+c.leeway:
		return reason("token expires further ahead (exp - now, no iat) than the maximum lifetime of " + c.maxTTL.String())
	}
	return nil
}

func requiredString(raw json.RawMessage, name string) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", reason(`missing claim "` + name + `"`)
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", reason(`claim "` + name + `" must be a string`)
	}
	if s == "" {
		return "", reason(`missing claim "` + name + `"`)
	}
	return s, nil
}

// requiredID is requiredString for an id: it must also obey envelope.CheckID, the rule every id of the
// platform obeys, so a caller the API accepts can never send a message the pipeline refuses.
func requiredID(raw json.RawMessage, name string) (string, error) {
	s, err := requiredString(raw, name)
	if err != nil {
		return "", err
	}
	if err := envelope.CheckID(s); err != nil {
		// CheckID's text names only the rule and lengths, never the value.
		return "", reason(`claim "` + name + `": ` + strings.TrimPrefix(err.Error(), envelope.ErrInvalidID.Error()+": "))
	}
	return s, nil
}

func optionalRoles(raw json.RawMessage) ([]string, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	bad := reason(`claim "roles" must be an array of non-empty strings`)
	// Unmarshal would turn null into a nil slice and [null] into [""]; only a real array of strings
	// passes, and a single string is not promoted to a one-role array.
	if raw[0] != '[' {
		return nil, bad
	}
	var roles []string
	if err := json.Unmarshal(raw, &roles); err != nil || slices.Contains(roles, "") {
		return nil, bad
	}
	if err := envelope.CheckRoles(roles); err != nil {
		return nil, reason(`claim "roles": ` + err.Error())
	}
	return roles, nil
}
