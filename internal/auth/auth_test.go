package auth_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc/metadata"

	"github.com/msgplatform/platform/internal/auth"
)

var testNow = time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)

const (
	testSecret = "test-hmac-secret-0123456789abcdef-xyz"
	// canary marks values an attacker controls; no error message may contain it.
	canary = "CANARY"
)

func fixedNow() time.Time { return testNow }

// keys holds the test key pairs and a JWKS file with their public halves.
type keys struct {
	rsaA, rsaB *rsa.PrivateKey
	ec         *ecdsa.PrivateKey
	jwksPath   string
}

func newKeys(t *testing.T) keys {
	t.Helper()
	var k keys
	var err error
	if k.rsaA, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		t.Fatal(err)
	}
	if k.rsaB, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		t.Fatal(err)
	}
	if k.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	rsaB := rsaJWK("rsa-b", &k.rsaB.PublicKey)
	rsaB["alg"], rsaB["use"] = "RS256", "sig"
	ec := ecJWK(t, "ec-1", &k.ec.PublicKey)
	ec["alg"] = "ES256"
	k.jwksPath = writeJWKS(t, rsaJWK("rsa-a", &k.rsaA.PublicKey), rsaB, ec)
	return k
}

func rsaJWK(kid string, pub *rsa.PublicKey) map[string]any {
	e := []byte{byte(pub.E >> 16), byte(pub.E >> 8), byte(pub.E)}
	return map[string]any{"kty": "RSA", "kid": kid, "n": b64(pub.N.Bytes()), "e": b64(e)}
}

func ecJWK(t *testing.T, kid string, pub *ecdsa.PublicKey) map[string]any {
	t.Helper()
	b, err := pub.Bytes() // 0x04 || X || Y
	if err != nil {
		t.Fatal(err)
	}
	n := (len(b) - 1) / 2
	return map[string]any{"kty": "EC", "kid": kid, "crv": pub.Curve.Params().Name, "x": b64(b[1 : 1+n]), "y": b64(b[1+n:])}
}

func writeJWKS(t *testing.T, ks ...map[string]any) string {
	t.Helper()
	b, err := json.Marshal(map[string]any{"keys": ks})
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, string(b))
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// claims returns valid claims at testNow, changed by mods (a nil value deletes the claim).
func claims(mods map[string]any) jwt.MapClaims {
	c := jwt.MapClaims{
		"sub":       "alice",
		"tenant_id": "t1",
		"roles":     []string{"user"},
		"iat":       testNow.Add(-time.Minute).Unix(),
		"exp":       testNow.Add(time.Hour).Unix(),
	}
	for k, v := range mods {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	return c
}

func sign(t *testing.T, m jwt.SigningMethod, key any, header map[string]any, c jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(m, c)
	for k, v := range header {
		tok.Header[k] = v
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// raw builds a token by hand from a header and claims JSON and a signature segment.
func raw(header, payload, sig string) string {
	return b64([]byte(header)) + "." + b64([]byte(payload)) + "." + sig
}

func kid(k string) map[string]any { return map[string]any{"kid": k} }

func newVerifier(t *testing.T, cfg auth.Config) *auth.Verifier {
	t.Helper()
	if cfg.Now == nil {
		cfg.Now = fixedNow
	}
	v, err := auth.NewVerifier(cfg)
	if err != nil {
		t.Fatalf("NewVerifier: %v", err)
	}
	return v
}

// assertSafe checks that an error message repeats neither the token nor attacker-chosen values.
func assertSafe(t *testing.T, err error, token string) {
	t.Helper()
	msg := err.Error()
	if token != "" && strings.Contains(msg, token) {
		t.Errorf("error message contains the token: %q", msg)
	}
	for _, seg := range strings.Split(token, ".") {
		if len(seg) >= 8 && strings.Contains(msg, seg) {
			t.Errorf("error message contains a token segment: %q", msg)
		}
	}
	if strings.Contains(strings.ToUpper(msg), canary) {
		t.Errorf("error message echoes an attacker-supplied value: %q", msg)
	}
}

func TestVerify(t *testing.T) {
	k := newKeys(t)
	secret := []byte(testSecret)
	vHS := newVerifier(t, auth.Config{HMACSecret: secret})
	vJWKS := newVerifier(t, auth.Config{JWKSFile: k.jwksPath})
	vBoth := newVerifier(t, auth.Config{HMACSecret: secret, JWKSFile: k.jwksPath})
	vIssAud := newVerifier(t, auth.Config{HMACSecret: secret, Issuer: "https://issuer.test", Audience: "platform"})
	vTight := newVerifier(t, auth.Config{HMACSecret: secret, Leeway: time.Second})
	vHour := newVerifier(t, auth.Config{HMACSecret: secret, MaxTokenTTL: time.Hour})
	vNoMax := newVerifier(t, auth.Config{HMACSecret: secret, MaxTokenTTL: -1})
	at := func(d time.Duration) int64 { return testNow.Add(d).Unix() }
	const day, century = 24 * time.Hour, 100 * 365 * 24 * time.Hour

	hs := func(mods map[string]any) string { return sign(t, jwt.SigningMethodHS256, secret, nil, claims(mods)) }
	rsaPKIX, err := x509.MarshalPKIXPublicKey(&k.rsaA.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	rsaPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: rsaPKIX})
	rsaPKCS1 := x509.MarshalPKCS1PublicKey(&k.rsaA.PublicKey)
	okPayload, _ := json.Marshal(claims(nil))
	bigPad := strings.Repeat("p", 5500) // still under 8 KiB once encoded
	hugePad := strings.Repeat("p", 9000)
	other := hs(map[string]any{"sub": "bob"})
	tampered := strings.Join(slices.Concat(strings.Split(hs(nil), ".")[:2], strings.Split(other, ".")[2:]), ".")

	alice := &auth.Principal{Subject: "alice", TenantID: "t1", Roles: []string{"user"}}
	tests := []struct {
		name  string
		v     *auth.Verifier
		token string
		want  string          // reason in the error; "" = accepted
		wantP *auth.Principal // checked when accepted
	}{
		// accepted
		{"valid HS256", vHS, hs(nil), "", alice},
		{"valid HS256 on a verifier with JWKS too", vBoth, hs(nil), "", alice},
		{"valid RS256 kid rsa-a", vJWKS, sign(t, jwt.SigningMethodRS256, k.rsaA, kid("rsa-a"), claims(nil)), "", alice},
		{"valid RS256 kid rsa-b picks the second key", vJWKS, sign(t, jwt.SigningMethodRS256, k.rsaB, kid("rsa-b"), claims(nil)), "", alice},
		{"valid ES256", vBoth, sign(t, jwt.SigningMethodES256, k.ec, kid("ec-1"), claims(nil)), "", alice},
		{"HS256 ignores a kid", vBoth, sign(t, jwt.SigningMethodHS256, secret, kid("rsa-a"), claims(nil)), "", alice},
		{"exp within leeway", vHS, hs(map[string]any{"exp": testNow.Add(-10 * time.Second).Unix()}), "", alice},
		{"nbf within leeway", vHS, hs(map[string]any{"nbf": testNow.Add(10 * time.Second).Unix()}), "", alice},
		{"iat within leeway", vHS, hs(map[string]any{"iat": testNow.Add(10 * time.Second).Unix()}), "", alice},
		{"no iat", vHS, hs(map[string]any{"iat": nil}), "", alice},
		{"no roles", vHS, hs(map[string]any{"roles": nil}), "", &auth.Principal{Subject: "alice", TenantID: "t1"}},
		{"empty roles", vHS, hs(map[string]any{"roles": []string{}}), "", &auth.Principal{Subject: "alice", TenantID: "t1", Roles: []string{}}},
		{"several roles", vHS, hs(map[string]any{"roles": []string{"user", "operator"}}), "", &auth.Principal{Subject: "alice", TenantID: "t1", Roles: []string{"user", "operator"}}},
		{"iss/aud not enforced when not configured", vHS, hs(map[string]any{"iss": "anyone", "aud": "anything"}), "", alice},
		{"iss and aud as configured", vIssAud, hs(map[string]any{"iss": "https://issuer.test", "aud": "platform"}), "", alice},
		{"aud array containing the audience", vIssAud, hs(map[string]any{"iss": "https://issuer.test", "aud": []string{"other", "platform"}}), "", alice},
		{"large token under 8 KiB", vHS, hs(map[string]any{"pad": bigPad}), "", alice},

		// alg none and algorithm confusion
		{"alg none unsigned", vBoth, raw(`{"alg":"none","typ":"JWT"}`, string(okPayload), ""), "alg not allowed", nil},
		{"alg NONE unsigned", vHS, raw(`{"alg":"NONE"}`, string(okPayload), ""), "alg not allowed", nil},
		{"alg none with a signature", vHS, raw(`{"alg":"none"}`, string(okPayload), b64([]byte("sig"))), "alg not allowed", nil},
		{"no alg", vHS, raw(`{"typ":"JWT"}`, string(okPayload), b64([]byte("sig"))), "alg not allowed", nil},
		{"unknown alg", vHS, raw(`{"alg":"CANARY-alg"}`, string(okPayload), b64([]byte("sig"))), "alg not allowed", nil},
		{"confusion: HS256 keyed with RSA public PEM, JWKS only", vJWKS, sign(t, jwt.SigningMethodHS256, rsaPEM, kid("rsa-a"), claims(nil)), "alg not allowed", nil},
		{"confusion: HS256 keyed with RSA public PEM, HMAC and JWKS", vBoth, sign(t, jwt.SigningMethodHS256, rsaPEM, kid("rsa-a"), claims(nil)), "bad signature", nil},
		{"confusion: HS256 keyed with RSA public DER (PKIX)", vBoth, sign(t, jwt.SigningMethodHS256, rsaPKIX, kid("rsa-a"), claims(nil)), "bad signature", nil},
		{"confusion: HS256 keyed with RSA public DER (PKCS1)", vJWKS, sign(t, jwt.SigningMethodHS256, rsaPKCS1, kid("rsa-a"), claims(nil)), "alg not allowed", nil},
		{"HS512 with the right secret", vHS, sign(t, jwt.SigningMethodHS512, secret, nil, claims(nil)), "alg not allowed", nil},
		{"RS256 without JWKS", vHS, sign(t, jwt.SigningMethodRS256, k.rsaA, kid("rsa-a"), claims(nil)), "alg not allowed", nil},
		{"RS512 with a JWKS key", vJWKS, sign(t, jwt.SigningMethodRS512, k.rsaA, kid("rsa-a"), claims(nil)), "alg not allowed", nil},
		{"PS256 with a JWKS key", vJWKS, sign(t, jwt.SigningMethodPS256, k.rsaA, kid("rsa-a"), claims(nil)), "alg not allowed", nil},

		// kid selection
		{"RS256 signed by key B under kid rsa-a", vJWKS, sign(t, jwt.SigningMethodRS256, k.rsaB, kid("rsa-a"), claims(nil)), "bad signature", nil},
		{"unknown kid", vJWKS, sign(t, jwt.SigningMethodRS256, k.rsaA, kid("CANARY-kid"), claims(nil)), "unknown kid", nil},
		{"missing kid", vJWKS, sign(t, jwt.SigningMethodRS256, k.rsaA, nil, claims(nil)), "missing kid", nil},
		{"kid not a string", vJWKS, sign(t, jwt.SigningMethodRS256, k.rsaA, map[string]any{"kid": 7}, claims(nil)), "missing kid", nil},
		{"RS256 naming the EC key", vJWKS, sign(t, jwt.SigningMethodRS256, k.rsaA, kid("ec-1"), claims(nil)), "kid does not match alg", nil},
		{"ES256 naming an RSA key", vJWKS, sign(t, jwt.SigningMethodES256, k.ec, kid("rsa-a"), claims(nil)), "kid does not match alg", nil},

		// signature
		{"wrong HMAC secret", vHS, sign(t, jwt.SigningMethodHS256, []byte("another-secret-of-at-least-32-bytes!!"), nil, claims(nil)), "bad signature", nil},
		{"payload swapped under a valid signature", vHS, tampered, "bad signature", nil},
		{"crit header", vHS, sign(t, jwt.SigningMethodHS256, secret, map[string]any{"crit": []string{"b64"}}, claims(nil)), "unsupported critical header", nil},

		// time
		{"expired", vHS, hs(map[string]any{"exp": testNow.Add(-5 * time.Minute).Unix()}), "token expired", nil},
		{"expired beyond a 1s leeway", vTight, hs(map[string]any{"exp": testNow.Add(-10 * time.Second).Unix()}), "token expired", nil},
		{"not yet valid", vHS, hs(map[string]any{"nbf": testNow.Add(5 * time.Minute).Unix()}), "token not yet valid", nil},
		{"issued in the future", vHS, hs(map[string]any{"iat": testNow.Add(5 * time.Minute).Unix()}), "token issued in the future", nil},

		// claims
		{"missing sub", vHS, hs(map[string]any{"sub": nil}), `missing claim "sub"`, nil},
		{"empty sub", vHS, hs(map[string]any{"sub": ""}), `missing claim "sub"`, nil},
		{"sub not a string", vHS, hs(map[string]any{"sub": 42}), `claim "sub" must be a string`, nil},
		{"missing tenant_id", vHS, hs(map[string]any{"tenant_id": nil}), `missing claim "tenant_id"`, nil},
		{"tenant_id not a string", vHS, hs(map[string]any{"tenant_id": []string{canary}}), `claim "tenant_id" must be a string`, nil},
		{"missing exp", vHS, hs(map[string]any{"exp": nil}), `missing claim "exp"`, nil},
		{"roles as a string", vHS, hs(map[string]any{"roles": "operator"}), `claim "roles" must be an array`, nil},
		{"roles null", vHS, hs(map[string]any{"roles": json.RawMessage("null")}), `claim "roles" must be an array`, nil},
		{"roles with a number", vHS, hs(map[string]any{"roles": []any{"user", 1}}), `claim "roles" must be an array`, nil},
		{"roles with an empty string", vHS, hs(map[string]any{"roles": []string{""}}), `claim "roles" must be an array`, nil},
		{"expired and no tenant: both reasons", vHS, hs(map[string]any{"exp": testNow.Add(-time.Hour).Unix(), "tenant_id": nil}), `token expired; missing claim "tenant_id"`, nil},
		{"wrong issuer", vIssAud, hs(map[string]any{"iss": "CANARY-issuer", "aud": "platform"}), "wrong issuer", nil},
		{"missing issuer", vIssAud, hs(map[string]any{"aud": "platform"}), `missing claim "iss"`, nil},
		{"wrong audience", vIssAud, hs(map[string]any{"iss": "https://issuer.test", "aud": "CANARY-aud"}), "wrong audience", nil},
		{"missing exp, iss and aud: all reasons", vIssAud, hs(map[string]any{"exp": nil}), `missing claim "exp"; missing claim "iss"; missing claim "aud"`, nil},
		{"missing iss and aud: both reasons", vIssAud, hs(nil), `missing claim "iss"; missing claim "aud"`, nil},
		{"missing audience", vIssAud, hs(map[string]any{"iss": "https://issuer.test"}), `missing claim "aud"`, nil},

		// Dates are JSON numbers only (RFC 7519 §2). The library alone accepts a string holding digits
		// (TestLibraryAcceptsStringDates).
		{"fractional exp", vHS, hs(map[string]any{"exp": float64(at(time.Hour)) + 0.5}), "", alice},
		{"exp as a string of digits", vHS, hs(map[string]any{"exp": fmt.Sprint(at(time.Hour))}), `claim "exp" must be a number`, nil},
		{"iat as a string of digits", vHS, hs(map[string]any{"iat": fmt.Sprint(at(-time.Minute))}), `claim "iat" must be a number`, nil},
		{"nbf as a string of digits", vHS, hs(map[string]any{"nbf": fmt.Sprint(at(-time.Minute))}), `claim "nbf" must be a number`, nil},
		{"exp a boolean", vHS, hs(map[string]any{"exp": true}), `claim "exp" must be a number`, nil},
		{"exp an object", vHS, hs(map[string]any{"exp": map[string]any{"CANARY": 1}}), `claim "exp" must be a number`, nil},
		{"exp null", vHS, hs(map[string]any{"exp": json.RawMessage("null")}), `missing claim "exp"`, nil},
		{"iat an array", vHS, hs(map[string]any{"iat": []int64{at(0)}}), `claim "iat" must be a number`, nil},

		// The maximum lifetime (24h by default): exp - iat, or exp - now without iat (plus the leeway).
		{"exp - iat = 24h", vHS, hs(map[string]any{"iat": at(-time.Hour), "exp": at(day - time.Hour)}), "", alice},
		{"exp - iat = 24h + 1s", vHS, hs(map[string]any{"iat": at(-time.Hour), "exp": at(day - time.Hour + time.Second)}), "token lifetime (exp - iat) exceeds the maximum of 24h0m0s", nil},
		{"100-year exp", vHS, hs(map[string]any{"exp": at(century)}), "exceeds the maximum of 24h0m0s", nil},
		{"100-year exp, no iat", vHS, hs(map[string]any{"iat": nil, "exp": at(century)}), "(exp - now, no iat) than the maximum lifetime of 24h0m0s", nil},
		{"old iat, exp soon", vHS, hs(map[string]any{"iat": at(-2 * day), "exp": at(time.Minute)}), "exceeds the maximum", nil},
		{"no iat, exp - now = 24h", vHS, hs(map[string]any{"iat": nil, "exp": at(day)}), "", alice},
		{"no iat, exp - now = 24h + leeway", vHS, hs(map[string]any{"iat": nil, "exp": at(day + 30*time.Second)}), "", alice},
		{"no iat, exp - now beyond 24h + leeway", vHS, hs(map[string]any{"iat": nil, "exp": at(day + 31*time.Second)}), "maximum lifetime of 24h0m0s", nil},
		{"configured 1h: 1h1m refused", vHour, hs(nil), "exceeds the maximum of 1h0m0s", nil},
		{"configured 1h: 1h accepted", vHour, hs(map[string]any{"exp": at(time.Hour - time.Minute)}), "", alice},
		{"no maximum: 100 years", vNoMax, hs(map[string]any{"exp": at(century)}), "", alice},
		{"too long and expired: both reasons", vHS, hs(map[string]any{"iat": at(-3 * day), "exp": at(-time.Hour)}), "token expired; token lifetime", nil},

		// shape
		{"empty token", vHS, "", "missing bearer token", nil},
		{"garbage", vHS, "CANARY-garbage", "malformed token", nil},
		{"two segments", vHS, "abc.def", "malformed token", nil},
		{"header not base64", vHS, "!!!.e30.", "malformed token", nil},
		{"header not JSON", vHS, b64([]byte("CANARY")) + ".e30.", "malformed token", nil},
		{"claims not JSON", vHS, raw(`{"alg":"HS256"}`, "CANARY", b64([]byte("sig"))), "malformed token", nil},
		{"exp not a number", vHS, hs(map[string]any{"exp": "CANARY"}), `claim "exp" must be a number`, nil},
		{"four segments", vHS, hs(nil) + ".x", "malformed token", nil},
		{"oversize token", vHS, hs(map[string]any{"pad": hugePad}), "token too large", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if strings.Contains(tc.name, "large") && len(tc.token) > 8<<10 {
				t.Fatalf("fixture too big: %d bytes", len(tc.token))
			}
			p, err := tc.v.Verify(tc.token)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if tc.wantP != nil && (p.Subject != tc.wantP.Subject || p.TenantID != tc.wantP.TenantID || !slices.Equal(p.Roles, tc.wantP.Roles)) {
					t.Fatalf("principal = %+v, want %+v", p, *tc.wantP)
				}
				return
			}
			if err == nil {
				t.Fatalf("Verify accepted the token (principal %+v); want %q", p, tc.want)
			}
			if !errors.Is(err, auth.ErrUnauthenticated) {
				t.Errorf("error %v does not wrap ErrUnauthenticated", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %q, want it to say %q", err, tc.want)
			}
			if p.Subject != "" || p.TenantID != "" || p.Roles != nil {
				t.Errorf("principal %+v returned with an error", p)
			}
			assertSafe(t, err, tc.token)
		})
	}
}

func TestVerifyDefaultClock(t *testing.T) {
	// Now unset: the real clock. A freshly minted token passes and one minted to have expired does not.
	v, err := auth.NewVerifier(auth.Config{HMACSecret: []byte(testSecret), Issuer: "iss", Audience: "aud"})
	if err != nil {
		t.Fatal(err)
	}
	want := auth.Principal{Subject: "bob", TenantID: "t2", Roles: []string{"service"}}
	tok, err := auth.MintHS256([]byte(testSecret), want, time.Minute, "iss", "aud")
	if err != nil {
		t.Fatal(err)
	}
	got, err := v.Verify(tok)
	if err != nil {
		t.Fatalf("Verify(minted): %v", err)
	}
	if got.Subject != want.Subject || got.TenantID != want.TenantID || !slices.Equal(got.Roles, want.Roles) {
		t.Fatalf("principal = %+v, want %+v", got, want)
	}
	old := sign(t, jwt.SigningMethodHS256, []byte(testSecret), nil, jwt.MapClaims{
		"sub": "bob", "tenant_id": "t2", "iss": "iss", "aud": "aud", "exp": time.Now().Add(-time.Hour).Unix(),
	})
	if _, err := v.Verify(old); !errors.Is(err, auth.ErrUnauthenticated) || !strings.Contains(err.Error(), "token expired") {
		t.Fatalf("Verify(expired) = %v, want token expired", err)
	}
}

func TestMintHS256(t *testing.T) {
	secret := []byte(testSecret)
	v := newVerifier(t, auth.Config{HMACSecret: secret, Now: time.Now})
	tok, err := auth.MintHS256(secret, auth.Principal{Subject: "carol", TenantID: "t3"}, time.Hour, "", "")
	if err != nil {
		t.Fatal(err)
	}
	p, err := v.Verify(tok)
	if err != nil {
		t.Fatalf("Verify(minted without roles): %v", err)
	}
	if len(p.Roles) != 0 {
		t.Errorf("roles = %v, want none", p.Roles)
	}
	// The minted claims are exactly the documented set.
	var c map[string]any
	payload, _ := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[1])
	if err := json.Unmarshal(payload, &c); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"sub", "tenant_id", "roles", "iat", "exp"} {
		if _, ok := c[name]; !ok {
			t.Errorf("minted token lacks %q: %v", name, c)
		}
	}
	for _, name := range []string{"iss", "aud"} {
		if _, ok := c[name]; ok {
			t.Errorf("minted token has %q though none was given", name)
		}
	}

	bad := []struct {
		name   string
		secret []byte
		p      auth.Principal
		ttl    time.Duration
	}{
		{"short secret", []byte("short"), auth.Principal{Subject: "a", TenantID: "t"}, time.Hour},
		{"no subject", secret, auth.Principal{TenantID: "t"}, time.Hour},
		{"no tenant", secret, auth.Principal{Subject: "a"}, time.Hour},
		{"zero ttl", secret, auth.Principal{Subject: "a", TenantID: "t"}, 0},
	}
	for _, tc := range bad {
		if _, err := auth.MintHS256(tc.secret, tc.p, tc.ttl, "", ""); err == nil {
			t.Errorf("%s: MintHS256 succeeded", tc.name)
		}
	}
}

func TestNewVerifierErrors(t *testing.T) {
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	rsaOK, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p256, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	good := rsaJWK("good", &rsaOK.PublicKey)
	with := func(m map[string]any, kv ...any) map[string]any {
		c := make(map[string]any, len(m)+len(kv)/2)
		for k, v := range m {
			c[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == nil {
				delete(c, kv[i].(string))
			} else {
				c[kv[i].(string)] = kv[i+1]
			}
		}
		return c
	}
	offCurve := with(ecJWK(t, "ec", &p256.PublicKey), "x", b64(make([]byte, 32)))

	tests := []struct {
		name string
		cfg  auth.Config
		want []string // substrings of the error
	}{
		{"no key source", auth.Config{}, []string{"AUTH_HMAC_SECRET", "AUTH_JWKS_FILE"}},
		{"short HMAC secret", auth.Config{HMACSecret: []byte(strings.Repeat("s", 31))}, []string{"AUTH_HMAC_SECRET", "32"}},
		// Long enough, but a placeholder: secret.Check refuses it (its own tests cover the rules).
		{"32 × a", auth.Config{HMACSecret: []byte(strings.Repeat("a", 32))}, []string{"AUTH_HMAC_SECRET", "distinct characters"}},
		{"abab…", auth.Config{HMACSecret: []byte(strings.Repeat("ab", 32))}, []string{"AUTH_HMAC_SECRET", "distinct characters"}},
		{"a word repeated", auth.Config{HMACSecret: []byte(strings.Repeat("changeme-secret!", 4))}, []string{"AUTH_HMAC_SECRET", "pattern"}},
		{"negative leeway", auth.Config{HMACSecret: []byte(testSecret), Leeway: -time.Second}, []string{"leeway"}},
		{"JWKS file missing", auth.Config{JWKSFile: filepath.Join(t.TempDir(), "nope.json")}, []string{"AUTH_JWKS_FILE"}},
		{"JWKS not JSON", auth.Config{JWKSFile: writeFile(t, "not json")}, []string{"AUTH_JWKS_FILE"}},
		{"JWKS without keys", auth.Config{JWKSFile: writeFile(t, `{"keys":[]}`)}, []string{"AUTH_JWKS_FILE", "no keys"}},
		{"key without kid", auth.Config{JWKSFile: writeJWKS(t, with(good, "kid", nil))}, []string{"AUTH_JWKS_FILE", "kid"}},
		{"duplicate kid", auth.Config{JWKSFile: writeJWKS(t, good, good)}, []string{"AUTH_JWKS_FILE", "twice"}},
		{"RSA 1024 bits", auth.Config{JWKSFile: writeJWKS(t, rsaJWK("small", &rsa1024.PublicKey))}, []string{"AUTH_JWKS_FILE", "2048"}},
		{"RSA without n", auth.Config{JWKSFile: writeJWKS(t, with(good, "n", nil))}, []string{"AUTH_JWKS_FILE", `"n"`}},
		{"RSA even exponent", auth.Config{JWKSFile: writeJWKS(t, with(good, "e", b64([]byte{1, 0, 0})))}, []string{"AUTH_JWKS_FILE", `"e"`}},
		{"EC P-384", auth.Config{JWKSFile: writeJWKS(t, ecJWK(t, "p384", &p384.PublicKey))}, []string{"AUTH_JWKS_FILE", "P-256"}},
		{"EC point off the curve", auth.Config{JWKSFile: writeJWKS(t, offCurve)}, []string{"AUTH_JWKS_FILE", "EC key"}},
		{"symmetric key", auth.Config{JWKSFile: writeJWKS(t, map[string]any{"kty": "oct", "kid": "o", "k": b64([]byte(testSecret))})}, []string{"AUTH_JWKS_FILE", "symmetric"}},
		{"OKP key", auth.Config{JWKSFile: writeJWKS(t, map[string]any{"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": b64(make([]byte, 32))})}, []string{"AUTH_JWKS_FILE", "OKP"}},
		{"private key material", auth.Config{JWKSFile: writeJWKS(t, with(good, "d", b64([]byte{1, 2, 3})))}, []string{"AUTH_JWKS_FILE", "private"}},
		{"alg not matching the key", auth.Config{JWKSFile: writeJWKS(t, with(good, "alg", "RS512"))}, []string{"AUTH_JWKS_FILE", "RS512"}},
		{"encryption key", auth.Config{JWKSFile: writeJWKS(t, with(good, "use", "enc"))}, []string{"AUTH_JWKS_FILE", "enc"}},
		{"one bad key spoils the file", auth.Config{HMACSecret: []byte(testSecret), JWKSFile: writeJWKS(t, good, rsaJWK("small", &rsa1024.PublicKey))}, []string{"AUTH_JWKS_FILE"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, err := auth.NewVerifier(tc.cfg)
			if err == nil {
				t.Fatalf("NewVerifier succeeded (%v)", v)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}

	// The boundaries that must pass.
	for name, cfg := range map[string]auth.Config{
		"32 random bytes": {HMACSecret: []byte("gQVgCKxQlW68x6RdECA0Q1/YoUAkakOj")},
		"test secret":     {HMACSecret: []byte(testSecret)},
		"dev secret":      {HMACSecret: []byte(auth.DevHMACSecret)},
		"JWKS with pad=":  {JWKSFile: writeJWKS(t, with(good, "n", base64.URLEncoding.EncodeToString(rsaOK.N.Bytes())))},
		"JWKS, EC, alg":   {JWKSFile: writeJWKS(t, with(ecJWK(t, "ec", &p256.PublicKey), "alg", "ES256", "use", "sig"))},
		"JWKS extra keys": {JWKSFile: writeJWKS(t, with(good, "x5t", "abc", "key_ops", []string{"verify"}))},
	} {
		if _, err := auth.NewVerifier(cfg); err != nil {
			t.Errorf("%s: NewVerifier: %v", name, err)
		}
	}
}

func TestTokenFromContext(t *testing.T) {
	tests := []struct {
		name string
		md   metadata.MD // nil = no metadata at all
		want string      // token; "" = error
		err  string
	}{
		{"no metadata", nil, "", "missing bearer token"},
		{"no authorization", metadata.Pairs("x-request-id", "r1"), "", "missing bearer token"},
		{"Bearer", metadata.Pairs("authorization", "Bearer abc.def.ghi"), "abc.def.ghi", ""},
		{"lower-case scheme", metadata.Pairs("authorization", "bearer abc.def.ghi"), "abc.def.ghi", ""},
		{"upper-case scheme, extra spaces", metadata.Pairs("authorization", "  BEARER   abc.def.ghi  "), "abc.def.ghi", ""},
		{"scheme only", metadata.Pairs("authorization", "Bearer"), "", "missing bearer token"},
		{"scheme and space", metadata.Pairs("authorization", "Bearer   "), "", "missing bearer token"},
		{"empty value", metadata.Pairs("authorization", " "), "", "missing bearer token"},
		{"Basic", metadata.Pairs("authorization", "Basic CANARYdXNlcjpwYXNz"), "", "not a bearer token"},
		{"token without scheme", metadata.Pairs("authorization", "CANARY.abc.def"), "", "not a bearer token"},
		{"two values", metadata.Pairs("authorization", "Bearer a", "authorization", "Bearer b"), "", "more than one"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			if tc.md != nil {
				ctx = metadata.NewIncomingContext(ctx, tc.md)
			}
			got, err := auth.TokenFromContext(ctx)
			if tc.err == "" {
				if err != nil || got != tc.want {
					t.Fatalf("TokenFromContext = %q, %v; want %q", got, err, tc.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("TokenFromContext = %q; want error %q", got, tc.err)
			}
			if !errors.Is(err, auth.ErrUnauthenticated) || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("error = %v; want ErrUnauthenticated saying %q", err, tc.err)
			}
			assertSafe(t, err, "")
		})
	}
	// Outgoing metadata is what this process sends, not what the caller sent.
	ctx := metadata.NewOutgoingContext(context.Background(), metadata.Pairs("authorization", "Bearer x"))
	if _, err := auth.TokenFromContext(ctx); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Errorf("outgoing metadata was read as a credential: %v", err)
	}
}

func TestPrincipalContext(t *testing.T) {
	if _, ok := auth.PrincipalFrom(context.Background()); ok {
		t.Fatal("PrincipalFrom(empty) ok")
	}
	want := auth.Principal{Subject: "a", TenantID: "t", Roles: []string{"user", "operator"}}
	got, ok := auth.PrincipalFrom(auth.WithPrincipal(context.Background(), want))
	if !ok || got.Subject != "a" || got.TenantID != "t" || !slices.Equal(got.Roles, want.Roles) {
		t.Fatalf("PrincipalFrom = %+v, %v", got, ok)
	}
	if !got.HasRole("operator") || !got.HasRole("user") || got.HasRole("service") || got.HasRole("Operator") || got.HasRole("") {
		t.Errorf("HasRole wrong for %v", got.Roles)
	}
	if (auth.Principal{}).HasRole("user") {
		t.Error("zero principal has a role")
	}
}

// TestMakefileDevSecret keeps `make token` and the devstack on the same HS256 secret.
func TestMakefileDevSecret(t *testing.T) {
	b, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^DEV_HMAC_SECRET\s*:?=\s*(\S+)\s*$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("Makefile has no DEV_HMAC_SECRET := ... line")
	}
	if string(m[1]) != auth.DevHMACSecret {
		t.Fatalf("Makefile DEV_HMAC_SECRET = %q, auth.DevHMACSecret = %q", m[1], auth.DevHMACSecret)
	}
	if len(auth.DevHMACSecret) < auth.MinHMACSecretLen {
		t.Fatalf("DevHMACSecret is shorter than %d bytes", auth.MinHMACSecretLen)
	}
}

// TestLibraryAcceptsStringDates records why tokenClaims reads exp, nbf and iat itself: golang-jwt v5's
// NumericDate decodes through json.Number, which takes a JSON string holding a number, so the library
// alone accepts "exp":"<digits>". If this test starts failing, the library got stricter; the verifier's
// own check (TestVerify, "exp as a string of digits") stays either way.
func TestLibraryAcceptsStringDates(t *testing.T) {
	secret := []byte(testSecret)
	tok := sign(t, jwt.SigningMethodHS256, secret, nil, claims(map[string]any{
		"exp": fmt.Sprint(testNow.Add(time.Hour).Unix()), "iat": fmt.Sprint(testNow.Unix()), "nbf": fmt.Sprint(testNow.Unix()),
	}))
	var c jwt.RegisteredClaims
	_, err := jwt.NewParser(jwt.WithTimeFunc(fixedNow), jwt.WithExpirationRequired(), jwt.WithIssuedAt()).
		ParseWithClaims(tok, &c, func(*jwt.Token) (any, error) { return secret, nil })
	if err != nil || c.ExpiresAt == nil {
		t.Fatalf("golang-jwt refused string dates itself (%v): the verifier's own check is now a second line", err)
	}
	if _, err := newVerifier(t, auth.Config{HMACSecret: secret}).Verify(tok); err == nil {
		t.Fatal("the verifier accepted string dates")
	}
}
