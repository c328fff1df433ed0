package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"strings"
)

const minRSABits = 2048

// verificationKey is a JWKS public key with the one algorithm it may verify.
type verificationKey struct {
	alg string // "RS256" or "ES256"
	key any    // *rsa.PublicKey or *ecdsa.PublicKey
}

// jwk holds the RFC 7517/7518 members we read; D and K are read only to refuse secrets.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	N   string `json:"n"`
	E   string `json:"e"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
	D   string `json:"d"`
	K   string `json:"k"`
}

// loadJWKS reads a JWKS file of RSA (>= 2048 bits, RS256) and EC P-256 (ES256) public keys, each with
// a unique kid. Anything else is an error rather than skipped: a key silently ignored is a key
// rotation that silently fails.
func loadJWKS(path string) (map[string]verificationKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var set struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(b, &set); err != nil {
		return nil, fmt.Errorf("not a JWKS document: %w", err)
	}
	if len(set.Keys) == 0 {
		return nil, errors.New(`no keys (want {"keys":[...]})`)
	}
	keys := make(map[string]verificationKey, len(set.Keys))
	for i, k := range set.Keys {
		if k.Kid == "" {
			return nil, fmt.Errorf("key #%d has no kid", i)
		}
		if _, dup := keys[k.Kid]; dup {
			return nil, fmt.Errorf("kid %q appears twice", k.Kid)
		}
		vk, err := parseJWK(k)
		if err != nil {
			return nil, fmt.Errorf("kid %q: %w", k.Kid, err)
		}
		keys[k.Kid] = vk
	}
	return keys, nil
}

func parseJWK(k jwk) (verificationKey, error) {
	if k.D != "" || k.K != "" {
		// Verifiers need public keys only; a private key here is a leak waiting to happen.
		return verificationKey{}, errors.New("contains private or symmetric key material; publish public keys only")
	}
	if k.Use != "" && k.Use != "sig" {
		return verificationKey{}, fmt.Errorf("use %q is not \"sig\"", k.Use)
	}
	var vk verificationKey
	switch k.Kty {
	case "RSA":
		pub, err := parseRSA(k)
		if err != nil {
			return verificationKey{}, err
		}
		vk = verificationKey{alg: "RS256", key: pub}
	case "EC":
		pub, err := parseEC(k)
		if err != nil {
			return verificationKey{}, err
		}
		vk = verificationKey{alg: "ES256", key: pub}
	default:
		return verificationKey{}, fmt.Errorf("kty %q not supported (only RSA and EC P-256)", k.Kty)
	}
	if k.Alg != "" && k.Alg != vk.alg {
		return verificationKey{}, fmt.Errorf("alg %q not supported for kty %s (want %s)", k.Alg, k.Kty, vk.alg)
	}
	return vk, nil
}

func parseRSA(k jwk) (*rsa.PublicKey, error) {
	nb, err := b64(k.N)
	if err != nil || len(nb) == 0 {
		return nil, errors.New(`RSA key: bad or missing "n"`)
	}
	eb, err := b64(k.E)
	if err != nil || len(eb) == 0 || len(eb) > 4 {
		return nil, errors.New(`RSA key: bad or missing "e"`)
	}
	n := new(big.Int).SetBytes(nb)
	e := new(big.Int).SetBytes(eb)
	if bits := n.BitLen(); bits < minRSABits {
		return nil, fmt.Errorf("RSA key: %d bits; at least %d are required", bits, minRSABits)
	}
	if !e.IsInt64() || e.Int64() < 3 || e.Int64() > 1<<31-1 || e.Bit(0) == 0 {
		return nil, errors.New(`RSA key: invalid public exponent "e"`)
	}
	return &rsa.PublicKey{N: n, E: int(e.Int64())}, nil
}

func parseEC(k jwk) (*ecdsa.PublicKey, error) {
	if k.Crv != "P-256" {
		return nil, fmt.Errorf("EC key: crv %q not supported (only P-256, for ES256)", k.Crv)
	}
	x, errX := b64(k.X)
	y, errY := b64(k.Y)
	// RFC 7518 §6.2.1.2: coordinates are full-length (32 bytes for P-256).
	if errX != nil || errY != nil || len(x) != 32 || len(y) != 32 {
		return nil, errors.New(`EC key: "x" and "y" must be 32-byte base64url values`)
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
	if err != nil {
		return nil, fmt.Errorf("EC key: %w", err)
	}
	return pub, nil
}

// b64 decodes base64url, tolerating the padding some JWKS producers add.
func b64(s string) ([]byte, error) {
	return base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
}
