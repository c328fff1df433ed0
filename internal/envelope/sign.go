package envelope

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"regexp"
	"strings"
	"sync"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/msgplatform/platform/internal/secret"
)

// Signature headers.
const (
	// HeaderKeyID names the key that signed the record.
	HeaderKeyID = "envelope.kid"
	// HeaderSignature is the record's HMAC-SHA256, unpadded base64url.
	HeaderSignature = "envelope.sig"
)

// macDomain starts every MAC input, so a signature made for another purpose with the same key never
// verifies here, and a future format can change it.
const macDomain = "platform.envelope.v1"

// Verification failures; every one wraps ErrUnauthenticated.
var (
	ErrUnauthenticated = errors.New("record not authenticated")
	ErrUnsigned        = fmt.Errorf("%w: no %s/%s headers", ErrUnauthenticated, HeaderKeyID, HeaderSignature)
	ErrUnknownKey      = fmt.Errorf("%w: unknown signing key id", ErrUnauthenticated)
	ErrBadSignature    = fmt.Errorf("%w: signature does not match", ErrUnauthenticated)
	ErrAmbiguous       = fmt.Errorf("%w: repeated signature or content-type header", ErrUnauthenticated)
)

// validKeyID is what a key id may look like: it is echoed in headers and logs.
var validKeyID = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// Keys sign and verify records: the first key signs, every key verifies. Safe for concurrent use.
type Keys struct {
	signing string // kid of the signing key
	secrets map[string][]byte
	order   []string
	pools   map[string]*sync.Pool // of hash.Hash per kid: hmac.New allocates a few hundred bytes
}

// ParseKeys reads KAFKA_SIGNING_KEYS: "kid=secret[,kid2=secret2…]". Key ids are 1 to 64 characters of
// [A-Za-z0-9._-], each once; every secret must pass secret.Check. The error names the offending key by
// its position, never by its text: a secret pasted without its "kid=" would otherwise be echoed as a key
// id.
func ParseKeys(spec string) (*Keys, error) {
	if strings.TrimSpace(spec) == "" {
		return nil, errors.New("no signing key: want kid=secret[,kid2=secret2…]")
	}
	var pairs [][2]string
	for i, part := range strings.Split(spec, ",") {
		kid, sec, ok := strings.Cut(part, "=")
		kid = strings.TrimSpace(kid)
		if !ok {
			return nil, fmt.Errorf("key %d: want kid=secret", i+1)
		}
		pairs = append(pairs, [2]string{kid, sec})
	}
	return newKeys(pairs)
}

// NewKeys returns keys from kid/secret pairs, the first signing (for tests and the devstack).
func NewKeys(kidSecret ...string) (*Keys, error) {
	if len(kidSecret)%2 != 0 {
		return nil, errors.New("NewKeys: want kid, secret pairs")
	}
	var pairs [][2]string
	for i := 0; i < len(kidSecret); i += 2 {
		pairs = append(pairs, [2]string{kidSecret[i], kidSecret[i+1]})
	}
	return newKeys(pairs)
}

func newKeys(pairs [][2]string) (*Keys, error) {
	if len(pairs) == 0 {
		return nil, errors.New("no signing key")
	}
	k := &Keys{secrets: map[string][]byte{}, pools: map[string]*sync.Pool{}}
	for i, p := range pairs {
		kid, sec := p[0], []byte(p[1])
		if !validKeyID.MatchString(kid) {
			return nil, fmt.Errorf("key %d: key id must be 1 to 64 characters of A-Z a-z 0-9 . _ -", i+1)
		}
		if _, dup := k.secrets[kid]; dup {
			return nil, fmt.Errorf("key %d: its key id is listed twice", i+1)
		}
		if err := secret.Check(sec); err != nil {
			return nil, fmt.Errorf("key %d: secret %w", i+1, err)
		}
		k.secrets[kid] = sec
		k.order = append(k.order, kid)
		k.pools[kid] = &sync.Pool{New: func() any { return hmac.New(sha256.New, sec) }}
	}
	k.signing = k.order[0]
	return k, nil
}

// SigningKeyID returns the id of the key that signs.
func (k *Keys) SigningKeyID() string { return k.signing }

// KeyIDs returns every key id, the signing one first.
func (k *Keys) KeyIDs() []string { return append([]string(nil), k.order...) }

// String never shows a secret.
func (k *Keys) String() string {
	if k == nil {
		return "<no keys>"
	}
	return "signing keys " + strings.Join(k.order, ",") + " (signing with " + k.signing + ")"
}

// GoString never shows a secret either (%#v).
func (k *Keys) GoString() string { return k.String() }

// Sign sets the record's signature headers (replacing any earlier ones) with the signing key. Sign after
// every other header and field is final: the MAC covers the topic, the key, the content-type and the value.
func (k *Keys) Sign(r *kgo.Record) error {
	if k == nil {
		return errors.New("sign record: no signing key configured (KAFKA_SIGNING_KEYS)")
	}
	headers := r.Headers[:0:0]
	for _, h := range r.Headers {
		if h.Key != HeaderKeyID && h.Key != HeaderSignature {
			headers = append(headers, h)
		}
	}
	r.Headers = headers
	mac := k.mac(k.signing, r)
	r.Headers = append(r.Headers,
		kgo.RecordHeader{Key: HeaderKeyID, Value: []byte(k.signing)},
		kgo.RecordHeader{Key: HeaderSignature, Value: []byte(base64.RawURLEncoding.EncodeToString(mac))},
	)
	return nil
}

// Verify returns nil when the record carries one valid signature by one of the keys; otherwise an error
// wrapping ErrUnauthenticated saying why (unsigned, unknown key, bad signature, ambiguous headers).
func (k *Keys) Verify(r *kgo.Record) error {
	var kid, sig []byte
	var nKid, nSig, nCT int
	for _, h := range r.Headers {
		switch h.Key {
		case HeaderKeyID:
			kid, nKid = h.Value, nKid+1
		case HeaderSignature:
			sig, nSig = h.Value, nSig+1
		case HeaderContentType:
			nCT++
		}
	}
	switch {
	case nKid == 0 && nSig == 0:
		return ErrUnsigned
	case nKid != 1 || nSig != 1 || nCT > 1:
		return ErrAmbiguous
	}
	if k == nil {
		return ErrUnknownKey
	}
	if _, ok := k.secrets[string(kid)]; !ok {
		return fmt.Errorf("%w %q", ErrUnknownKey, Clip(string(kid), 64))
	}
	// Length first: Decode writes past a too-small buffer's end rather than failing.
	if len(sig) != base64.RawURLEncoding.EncodedLen(sha256.Size) {
		return ErrBadSignature
	}
	got := make([]byte, sha256.Size)
	if n, err := base64.RawURLEncoding.Decode(got, sig); err != nil || n != sha256.Size {
		return ErrBadSignature
	}
	if !hmac.Equal(got, k.mac(string(kid), r)) {
		return ErrBadSignature
	}
	return nil
}

// mac computes the record's HMAC-SHA256 with key kid over the domain, then topic, key, content-type
// header and value, each prefixed by its length so no two different records give the same input.
func (k *Keys) mac(kid string, r *kgo.Record) []byte {
	pool := k.pools[kid]
	h := pool.Get().(hash.Hash)
	defer pool.Put(h)
	h.Reset()
	ct, _ := Header(r, HeaderContentType)
	var n [8]byte
	for _, field := range [][]byte{[]byte(macDomain), []byte(r.Topic), r.Key, []byte(ct), r.Value} {
		binary.BigEndian.PutUint64(n[:], uint64(len(field)))
		h.Write(n[:])
		h.Write(field)
	}
	return h.Sum(nil)
}
