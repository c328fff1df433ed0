package envelope

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/msgplatform/platform/internal/kafka"
)

// Test secrets: random values (openssl rand -base64 32), strong enough for secret.Check.
const (
	secretOld   = "gQVgCKxQlW68x6RdECA0Q1/YoUAkakOjTARu1+uT60Y="
	secretNew   = "QUmiE0AL3cS6if3MedzIoG6gNx1U4stKd1v5r1lcsX0="
	secretOther = "5cMhyBpOS85UwFJiU8hf3g+zwqxgwXiEncip5LRG8qI="
	secretHex   = "666ff95dfab79a2d87797e20625557a7fce69fb3c5a205b70adf653e9fb71602" // openssl rand -hex 32
)

func mustKeys(t testing.TB, kidSecret ...string) *Keys {
	t.Helper()
	k, err := NewKeys(kidSecret...)
	if err != nil {
		t.Fatalf("NewKeys: %v", err)
	}
	return k
}

func mustParseKeys(t testing.TB, spec string) *Keys {
	t.Helper()
	k, err := ParseKeys(spec)
	if err != nil {
		t.Fatalf("ParseKeys: %v", err)
	}
	return k
}

// cloneRecord deep-copies the fields of r the envelope looks at.
func cloneRecord(r *kgo.Record) *kgo.Record {
	c := *r
	c.Key = bytes.Clone(r.Key)
	c.Value = bytes.Clone(r.Value)
	c.Headers = make([]kgo.RecordHeader, len(r.Headers))
	for i, h := range r.Headers {
		c.Headers[i] = kgo.RecordHeader{Key: h.Key, Value: bytes.Clone(h.Value)}
	}
	return &c
}

// unsignedRecord is an inbound record as SendMessage builds it, before signing.
func unsignedRecord() *kgo.Record {
	return &kgo.Record{
		Topic: kafka.TopicInbound,
		Key:   []byte("conv-1"),
		Value: []byte("\x0a\x1a01ARZ3NDEKTSV4RRFFQ69G5FAV\x12\x08tenant-1\x1a\x06conv-1\x2a\x05hello"),
		Headers: []kgo.RecordHeader{
			{Key: HeaderContentType, Value: []byte(ContentTypeProtobuf)},
			{Key: HeaderRequestID, Value: []byte("req-1")},
		},
	}
}

func signedRecord(t testing.TB, k *Keys) *kgo.Record {
	t.Helper()
	r := unsignedRecord()
	if err := k.Sign(r); err != nil {
		t.Fatalf("Sign: %v", err)
	}
	return r
}

func headerCount(r *kgo.Record, key string) int {
	n := 0
	for _, h := range r.Headers {
		if h.Key == key {
			n++
		}
	}
	return n
}

func setHeader(r *kgo.Record, key, value string) {
	for i, h := range r.Headers {
		if h.Key == key {
			r.Headers[i].Value = []byte(value)
			return
		}
	}
	r.Headers = append(r.Headers, kgo.RecordHeader{Key: key, Value: []byte(value)})
}

func removeHeader(r *kgo.Record, key string) {
	hs := r.Headers[:0:0]
	for _, h := range r.Headers {
		if h.Key != key {
			hs = append(hs, h)
		}
	}
	r.Headers = hs
}

func headerPtr(r *kgo.Record, key string) *kgo.RecordHeader {
	for i := range r.Headers {
		if r.Headers[i].Key == key {
			return &r.Headers[i]
		}
	}
	return nil
}

func TestSignVerifyRoundTrip(t *testing.T) {
	k := mustKeys(t, "k1", secretOld)
	r := unsignedRecord()
	before := cloneRecord(r)
	if err := k.Sign(r); err != nil {
		t.Fatalf("Sign: %v", err)
	}
	if err := k.Verify(r); err != nil {
		t.Fatalf("Verify of a freshly signed record: %v", err)
	}
	if got, _ := Header(r, HeaderKeyID); got != "k1" {
		t.Errorf("%s = %q, want k1", HeaderKeyID, got)
	}
	sig, _ := Header(r, HeaderSignature)
	if len(sig) != base64.RawURLEncoding.EncodedLen(sha256.Size) {
		t.Errorf("%s has %d characters, want %d", HeaderSignature, len(sig), base64.RawURLEncoding.EncodedLen(sha256.Size))
	}
	if _, err := base64.RawURLEncoding.DecodeString(sig); err != nil {
		t.Errorf("%s is not unpadded base64url: %v", HeaderSignature, err)
	}
	// Sign changes nothing but adding the two signature headers, after the others.
	if r.Topic != before.Topic || !bytes.Equal(r.Key, before.Key) || !bytes.Equal(r.Value, before.Value) {
		t.Errorf("Sign changed the topic, key or value")
	}
	if len(r.Headers) != len(before.Headers)+2 {
		t.Fatalf("headers after Sign: %d, want %d", len(r.Headers), len(before.Headers)+2)
	}
	for i, h := range before.Headers {
		if r.Headers[i].Key != h.Key || !bytes.Equal(r.Headers[i].Value, h.Value) {
			t.Errorf("header %d = %s=%q, want %s=%q", i, r.Headers[i].Key, r.Headers[i].Value, h.Key, h.Value)
		}
	}

	// Signing again replaces the signature headers instead of adding more.
	for range 3 {
		if err := k.Sign(r); err != nil {
			t.Fatalf("Sign again: %v", err)
		}
	}
	if n, m := headerCount(r, HeaderKeyID), headerCount(r, HeaderSignature); n != 1 || m != 1 {
		t.Errorf("after re-signing: %d %s and %d %s headers, want 1 each", n, HeaderKeyID, m, HeaderSignature)
	}
	if err := k.Verify(r); err != nil {
		t.Errorf("Verify after re-signing: %v", err)
	}

	// Sign replaces forged signature headers already on the record.
	forged := unsignedRecord()
	forged.Headers = append(forged.Headers,
		kgo.RecordHeader{Key: HeaderKeyID, Value: []byte("evil")},
		kgo.RecordHeader{Key: HeaderSignature, Value: []byte("AAAA")},
		kgo.RecordHeader{Key: HeaderSignature, Value: []byte("BBBB")},
	)
	if err := k.Sign(forged); err != nil {
		t.Fatalf("Sign: %v", err)
	}
	if err := k.Verify(forged); err != nil {
		t.Errorf("Verify after Sign replaced forged headers: %v", err)
	}
}

func TestSignVerifyShapes(t *testing.T) {
	k := mustKeys(t, "k1", secretOld)
	for _, tc := range []struct {
		name string
		r    *kgo.Record
	}{
		{"empty record", &kgo.Record{}},
		{"no content-type", &kgo.Record{Topic: kafka.TopicInbound, Key: []byte("c"), Value: []byte("v")}},
		{"empty content-type", &kgo.Record{Topic: kafka.TopicInbound, Value: []byte("v"),
			Headers: []kgo.RecordHeader{{Key: HeaderContentType}}}},
		{"json", &kgo.Record{Topic: kafka.TopicEvents, Key: []byte("c"), Value: []byte(`{"id":"x"}`),
			Headers: []kgo.RecordHeader{{Key: HeaderContentType, Value: []byte("application/json; charset=utf-8")}}}},
		{"binary key and value", &kgo.Record{Topic: kafka.TopicInbound, Key: []byte{0, 0xff, 0x80}, Value: bytes.Repeat([]byte{0, 1, 0xfe}, 1000)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := k.Sign(tc.r); err != nil {
				t.Fatalf("Sign: %v", err)
			}
			if err := k.Verify(tc.r); err != nil {
				t.Fatalf("Verify: %v", err)
			}
		})
	}
}

func TestVerifyTamperedCoveredField(t *testing.T) {
	k := mustKeys(t, "k1", secretOld, "k2", secretNew)
	for _, tc := range []struct {
		name   string
		tamper func(r *kgo.Record)
	}{
		{"topic changed", func(r *kgo.Record) { r.Topic = kafka.TopicEvents }},
		{"topic emptied", func(r *kgo.Record) { r.Topic = "" }},
		{"topic trailing space", func(r *kgo.Record) { r.Topic += " " }},
		{"key changed", func(r *kgo.Record) { r.Key = []byte("conv-2") }},
		{"key removed", func(r *kgo.Record) { r.Key = nil }},
		{"key extended", func(r *kgo.Record) { r.Key = append(r.Key, 'x') }},
		{"content-type value changed", func(r *kgo.Record) { setHeader(r, HeaderContentType, ContentTypeJSON) }},
		{"content-type parameter added", func(r *kgo.Record) {
			setHeader(r, HeaderContentType, ContentTypeProtobuf+"; charset=utf-8")
		}},
		{"content-type upper-cased", func(r *kgo.Record) { setHeader(r, HeaderContentType, strings.ToUpper(ContentTypeProtobuf)) }},
		{"content-type removed", func(r *kgo.Record) { removeHeader(r, HeaderContentType) }},
		{"value byte changed", func(r *kgo.Record) { r.Value[len(r.Value)-1] = 'X' }},
		{"value extended", func(r *kgo.Record) { r.Value = append(r.Value, 0) }},
		{"value truncated", func(r *kgo.Record) { r.Value = r.Value[:len(r.Value)-1] }},
		{"value removed", func(r *kgo.Record) { r.Value = nil }},
		{"value replaced by another message", func(r *kgo.Record) { r.Value = []byte("\x2a\x05evil!") }},
		{"byte moved from key to value", func(r *kgo.Record) {
			last := r.Key[len(r.Key)-1]
			r.Key = r.Key[:len(r.Key)-1]
			r.Value = append([]byte{last}, r.Value...)
		}},
		{"byte moved from topic to key", func(r *kgo.Record) {
			last := r.Topic[len(r.Topic)-1]
			r.Topic = r.Topic[:len(r.Topic)-1]
			r.Key = append([]byte{last}, r.Key...)
		}},
		{"kid switched to the other valid key", func(r *kgo.Record) { setHeader(r, HeaderKeyID, "k2") }},
		{"signature of another record", func(r *kgo.Record) {
			other := unsignedRecord()
			other.Key = []byte("conv-9")
			_ = k.Sign(other)
			sig, _ := Header(other, HeaderSignature)
			setHeader(r, HeaderSignature, sig)
		}},
		{"signature bit flipped", func(r *kgo.Record) {
			h := headerPtr(r, HeaderSignature)
			raw, _ := base64.RawURLEncoding.DecodeString(string(h.Value))
			raw[0] ^= 1
			h.Value = []byte(base64.RawURLEncoding.EncodeToString(raw))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := signedRecord(t, k)
			tc.tamper(r)
			err := k.Verify(r)
			if !errors.Is(err, ErrBadSignature) {
				t.Fatalf("Verify = %v, want ErrBadSignature", err)
			}
			if !errors.Is(err, ErrUnauthenticated) {
				t.Errorf("Verify error %v does not wrap ErrUnauthenticated", err)
			}
		})
	}
}

// TestVerifySingleBitFlips flips every bit of every covered field, one at a time.
func TestVerifySingleBitFlips(t *testing.T) {
	k := mustKeys(t, "k1", secretOld)
	fields := map[string]func(r *kgo.Record) []byte{
		"topic": func(r *kgo.Record) []byte { return []byte(r.Topic) },
		"key":   func(r *kgo.Record) []byte { return r.Key },
		"value": func(r *kgo.Record) []byte { return r.Value },
		"content-type": func(r *kgo.Record) []byte {
			return headerPtr(r, HeaderContentType).Value
		},
	}
	for name, get := range fields {
		n := len(get(unsignedRecord()))
		for i := range n {
			for bit := range 8 {
				r := signedRecord(t, k)
				b := bytes.Clone(get(r))
				b[i] ^= 1 << bit
				switch name {
				case "topic":
					r.Topic = string(b)
				case "key":
					r.Key = b
				case "value":
					r.Value = b
				case "content-type":
					headerPtr(r, HeaderContentType).Value = b
				}
				if err := k.Verify(r); !errors.Is(err, ErrBadSignature) {
					t.Errorf("%s byte %d bit %d flipped: Verify = %v, want ErrBadSignature", name, i, bit, err)
				}
			}
		}
	}
}

func TestVerifyIgnoresUncoveredHeaders(t *testing.T) {
	k := mustKeys(t, "k1", secretOld)
	for _, tc := range []struct {
		name   string
		change func(r *kgo.Record)
	}{
		{"x-request-id changed", func(r *kgo.Record) { setHeader(r, HeaderRequestID, "req-other") }},
		{"x-request-id removed", func(r *kgo.Record) { removeHeader(r, HeaderRequestID) }},
		{"x-request-id repeated", func(r *kgo.Record) {
			r.Headers = append(r.Headers, kgo.RecordHeader{Key: HeaderRequestID, Value: []byte("again")})
		}},
		{"dlq.attempts added", func(r *kgo.Record) { setHeader(r, HeaderDLQAttempts, "3") }},
		{"dlq.* headers added", func(r *kgo.Record) {
			r.Headers = RetryHeaders(r.Headers, 2, testTime)
		}},
		{"unrelated header added", func(r *kgo.Record) { setHeader(r, "traceparent", "00-abc-def-01") }},
		{"headers reordered", func(r *kgo.Record) {
			for i, j := 0, len(r.Headers)-1; i < j; i, j = i+1, j-1 {
				r.Headers[i], r.Headers[j] = r.Headers[j], r.Headers[i]
			}
		}},
		{"Content-Type with other case added", func(r *kgo.Record) { setHeader(r, "Content-Type", ContentTypeJSON) }},
		{"partition and offset changed", func(r *kgo.Record) {
			r.Partition, r.Offset = 7, 12345
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := signedRecord(t, k)
			tc.change(r)
			if err := k.Verify(r); err != nil {
				t.Fatalf("Verify = %v, want nil", err)
			}
		})
	}
}

func TestVerifyRefuses(t *testing.T) {
	k := mustKeys(t, "k1", secretOld)
	sigLen := base64.RawURLEncoding.EncodedLen(sha256.Size)
	for _, tc := range []struct {
		name   string
		build  func(r *kgo.Record) // applied to a signed record
		want   error
		noText string // must not appear in the error text
	}{
		{"unsigned", func(r *kgo.Record) { removeHeader(r, HeaderKeyID); removeHeader(r, HeaderSignature) }, ErrUnsigned, ""},
		{"unsigned without any header", func(r *kgo.Record) { r.Headers = nil }, ErrUnsigned, ""},
		{"unknown kid", func(r *kgo.Record) { setHeader(r, HeaderKeyID, "k9") }, ErrUnknownKey, ""},
		{"empty kid", func(r *kgo.Record) { setHeader(r, HeaderKeyID, "") }, ErrUnknownKey, ""},
		{"huge kid", func(r *kgo.Record) { setHeader(r, HeaderKeyID, strings.Repeat("K", 10000)) }, ErrUnknownKey,
			strings.Repeat("K", 100)},
		{"kid differing in case", func(r *kgo.Record) { setHeader(r, HeaderKeyID, "K1") }, ErrUnknownKey, ""},
		{"kid with trailing space", func(r *kgo.Record) { setHeader(r, HeaderKeyID, "k1 ") }, ErrUnknownKey, ""},
		{"duplicate kid", func(r *kgo.Record) {
			r.Headers = append(r.Headers, kgo.RecordHeader{Key: HeaderKeyID, Value: []byte("k1")})
		}, ErrAmbiguous, ""},
		{"duplicate sig", func(r *kgo.Record) {
			sig, _ := Header(r, HeaderSignature)
			r.Headers = append(r.Headers, kgo.RecordHeader{Key: HeaderSignature, Value: []byte(sig)})
		}, ErrAmbiguous, ""},
		{"duplicate kid and sig", func(r *kgo.Record) {
			kid, _ := Header(r, HeaderKeyID)
			sig, _ := Header(r, HeaderSignature)
			r.Headers = append(r.Headers, kgo.RecordHeader{Key: HeaderKeyID, Value: []byte(kid)},
				kgo.RecordHeader{Key: HeaderSignature, Value: []byte(sig)})
		}, ErrAmbiguous, ""},
		{"duplicate identical content-type", func(r *kgo.Record) {
			r.Headers = append(r.Headers, kgo.RecordHeader{Key: HeaderContentType, Value: []byte(ContentTypeProtobuf)})
		}, ErrAmbiguous, ""},
		{"second content-type says json", func(r *kgo.Record) {
			r.Headers = append(r.Headers, kgo.RecordHeader{Key: HeaderContentType, Value: []byte(ContentTypeJSON)})
		}, ErrAmbiguous, ""},
		{"second content-type before the first", func(r *kgo.Record) {
			r.Headers = append([]kgo.RecordHeader{{Key: HeaderContentType, Value: []byte(ContentTypeJSON)}}, r.Headers...)
		}, ErrAmbiguous, ""},
		{"signature truncated by one", func(r *kgo.Record) {
			h := headerPtr(r, HeaderSignature)
			h.Value = h.Value[:len(h.Value)-1]
		}, ErrBadSignature, ""},
		{"signature truncated to half", func(r *kgo.Record) {
			h := headerPtr(r, HeaderSignature)
			h.Value = h.Value[:len(h.Value)/2]
		}, ErrBadSignature, ""},
		{"signature empty", func(r *kgo.Record) { setHeader(r, HeaderSignature, "") }, ErrBadSignature, ""},
		{"signature garbage of the right length", func(r *kgo.Record) {
			setHeader(r, HeaderSignature, strings.Repeat("!", sigLen))
		}, ErrBadSignature, ""},
		{"signature all zero", func(r *kgo.Record) {
			setHeader(r, HeaderSignature, base64.RawURLEncoding.EncodeToString(make([]byte, sha256.Size)))
		}, ErrBadSignature, ""},
		{"signature in standard base64 alphabet", func(r *kgo.Record) {
			setHeader(r, HeaderSignature, strings.Repeat("+/", sigLen/2)+"+")
		}, ErrBadSignature, ""},
		{"signature hex encoded", func(r *kgo.Record) {
			setHeader(r, HeaderSignature, strings.Repeat("ab", 16)) // 32 characters: too short for base64 of 32 bytes
		}, ErrBadSignature, ""},
		{"signature of the value alone (no domain, no fields)", func(r *kgo.Record) {
			m := hmac.New(sha256.New, []byte(secretOld))
			m.Write(r.Value)
			setHeader(r, HeaderSignature, base64.RawURLEncoding.EncodeToString(m.Sum(nil)))
		}, ErrBadSignature, ""},
		{"kid without sig", func(r *kgo.Record) { removeHeader(r, HeaderSignature) }, ErrUnauthenticated, ""},
		{"sig without kid", func(r *kgo.Record) { removeHeader(r, HeaderKeyID) }, ErrUnauthenticated, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := signedRecord(t, k)
			tc.build(r)
			err := k.Verify(r)
			if err == nil {
				t.Fatal("Verify = nil, want an error")
			}
			if !errors.Is(err, tc.want) {
				t.Errorf("Verify = %v, want %v", err, tc.want)
			}
			if !errors.Is(err, ErrUnauthenticated) {
				t.Errorf("Verify error %v does not wrap ErrUnauthenticated", err)
			}
			if tc.noText != "" && strings.Contains(err.Error(), tc.noText) {
				t.Errorf("Verify error repeats the header unclipped (%d bytes)", len(err.Error()))
			}
			if len(err.Error()) > 300 {
				t.Errorf("Verify error is %d bytes long, want it bounded", len(err.Error()))
			}
			if strings.Contains(err.Error(), secretOld) {
				t.Errorf("Verify error contains the secret")
			}
		})
	}
}

// TestRegressionVerifyOverlongSignature: Verify decodes the signature header into a 32-byte buffer
// before checking its length, and base64's Decode panics (index out of range) when the destination is
// too small. Anyone able to produce to messages.inbound or messages.events can crash the consumer with
// a record carrying a known kid and an envelope.sig of 44 or more base64url characters.
func TestRegressionVerifyOverlongSignature(t *testing.T) {
	k := mustKeys(t, "k1", secretOld)
	for _, tc := range []struct {
		name string
		sig  func(sig string) string
	}{
		{"44 'A's", func(string) string { return strings.Repeat("A", 44) }},
		{"64 'A's", func(string) string { return strings.Repeat("A", 64) }},
		{"valid signature padded with '='", func(sig string) string { return sig + "=" }},
		{"valid signature twice", func(sig string) string { return sig + sig }},
		{"std base64 of 48 bytes", func(string) string { return base64.StdEncoding.EncodeToString(make([]byte, 48)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := signedRecord(t, k)
			h := headerPtr(r, HeaderSignature)
			h.Value = []byte(tc.sig(string(h.Value)))
			var err error
			func() {
				defer func() {
					if p := recover(); p != nil {
						t.Fatalf("Verify panicked on a %d-character signature: %v", len(h.Value), p)
					}
				}()
				err = k.Verify(r)
			}()
			if !errors.Is(err, ErrBadSignature) {
				t.Errorf("Verify = %v, want ErrBadSignature", err)
			}
		})
	}
}

func TestVerifyNilKeys(t *testing.T) {
	var k *Keys
	if err := k.Sign(unsignedRecord()); err == nil {
		t.Error("(*Keys)(nil).Sign = nil, want an error")
	}
	if err := k.Verify(unsignedRecord()); !errors.Is(err, ErrUnsigned) {
		t.Errorf("(*Keys)(nil).Verify(unsigned) = %v, want ErrUnsigned", err)
	}
	signed := signedRecord(t, mustKeys(t, "k1", secretOld))
	if err := k.Verify(signed); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("(*Keys)(nil).Verify(signed) = %v, want ErrUnknownKey", err)
	}
	if got := k.String(); got != "<no keys>" {
		t.Errorf("(*Keys)(nil).String() = %q", got)
	}
}

func TestKeyRotation(t *testing.T) {
	oldOnly := mustParseKeys(t, "old="+secretOld)
	step1 := mustParseKeys(t, "old="+secretOld+",new="+secretNew)  // new added second: old still signs
	step2 := mustParseKeys(t, "new="+secretNew+", old="+secretOld) // new first: new signs, old still verifies
	newOnly := mustParseKeys(t, "new="+secretNew)

	if got := step2.SigningKeyID(); got != "new" {
		t.Errorf("SigningKeyID = %q, want new", got)
	}
	if got := step2.KeyIDs(); strings.Join(got, ",") != "new,old" {
		t.Errorf("KeyIDs = %v, want [new old]", got)
	}
	ids := step2.KeyIDs()
	ids[0] = "mutated"
	if step2.KeyIDs()[0] != "new" {
		t.Error("KeyIDs returns the internal slice")
	}

	byOld := signedRecord(t, oldOnly)
	byStep1 := signedRecord(t, step1)
	byStep2 := signedRecord(t, step2)
	byNew := signedRecord(t, newOnly)

	for _, tc := range []struct {
		name   string
		keys   *Keys
		r      *kgo.Record
		want   error // nil: verifies
		signer string
	}{
		{"step1 verifies old-signed", step1, byOld, nil, "old"},
		{"step1 signs with old", oldOnly, byStep1, nil, "old"},
		{"step1 verifies new-signed", step1, byNew, nil, "new"},
		{"step2 verifies old-signed", step2, byOld, nil, "old"},
		{"step2 verifies step1-signed", step2, byStep1, nil, "old"},
		{"step2 signs with new", newOnly, byStep2, nil, "new"},
		{"step2 verifies new-signed", step2, byNew, nil, "new"},
		{"old alone refuses new-signed", oldOnly, byNew, ErrUnknownKey, "new"},
		{"old alone refuses step2-signed", oldOnly, byStep2, ErrUnknownKey, "new"},
		{"new alone refuses old-signed", newOnly, byOld, ErrUnknownKey, "old"},
		{"same kid, other secret", mustKeys(t, "old", secretOther), byOld, ErrBadSignature, "old"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if kid, _ := Header(tc.r, HeaderKeyID); kid != tc.signer {
				t.Fatalf("record signed by %q, want %q", kid, tc.signer)
			}
			err := tc.keys.Verify(tc.r)
			if tc.want == nil && err != nil {
				t.Fatalf("Verify = %v, want nil", err)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("Verify = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestParseKeys(t *testing.T) {
	weak := map[string]string{
		"short":       "hunter2hunter2",
		"32 a":        strings.Repeat("a", 32),
		"abab":        strings.Repeat("ab", 24),
		"8 distinct":  strings.Repeat("Qwertyui", 4),
		"31 bytes":    secretOld[:31],
		"empty":       "",
		"placeholder": "changemechangemechangemechangeme",
	}
	for _, tc := range []struct {
		name     string
		spec     string
		wantIDs  []string // nil: want an error
		errHas   string   // the error names this
		noSecret []string // the error never contains these
	}{
		{name: "one key", spec: "k1=" + secretOld, wantIDs: []string{"k1"}},
		{name: "two keys", spec: "new=" + secretNew + ",old=" + secretOld, wantIDs: []string{"new", "old"}},
		{name: "spaces around kid", spec: " new =" + secretNew + ", old=" + secretOld, wantIDs: []string{"new", "old"}},
		{name: "kid characters", spec: "Ab0._-z=" + secretOld, wantIDs: []string{"Ab0._-z"}},
		{name: "kid of 64 characters", spec: strings.Repeat("k", 64) + "=" + secretOld, wantIDs: []string{strings.Repeat("k", 64)}},
		{name: "secret with '=' padding", spec: "k1=" + secretNew, wantIDs: []string{"k1"}},
		{name: "empty", spec: ""},
		{name: "blank", spec: " \t "},
		{name: "missing '='", spec: secretHex, noSecret: []string{secretHex}, errHas: "key 1"},
		{name: "second key missing '='", spec: "k1=" + secretOld + "," + secretHex, noSecret: []string{secretOld, secretHex}, errHas: "key 2"},
		{name: "second key missing kid, secret with '+' and '='", spec: "k1=" + secretOld + "," + secretOther,
			noSecret: []string{secretOld, secretOther, secretOther[:20]}},
		{name: "trailing comma", spec: "k1=" + secretOld + ",", noSecret: []string{secretOld}},
		{name: "empty kid", spec: "=" + secretOld, noSecret: []string{secretOld}},
		{name: "kid with space", spec: "my key=" + secretOld, noSecret: []string{secretOld}},
		{name: "kid with slash", spec: "k/1=" + secretOld, noSecret: []string{secretOld}},
		{name: "kid with colon", spec: "k:1=" + secretOld, noSecret: []string{secretOld}},
		{name: "kid non-ASCII", spec: "clé=" + secretOld, noSecret: []string{secretOld}},
		{name: "kid with control character", spec: "k\x001=" + secretOld, noSecret: []string{secretOld}},
		{name: "kid of 65 characters", spec: strings.Repeat("k", 65) + "=" + secretOld, noSecret: []string{secretOld}},
		{name: "duplicate kid", spec: "k1=" + secretOld + ",k1=" + secretNew, errHas: "key 2: its key id is listed twice", noSecret: []string{secretOld, secretNew}},
		{name: "weak second key", spec: "k1=" + secretOld + ",k2=" + weak["32 a"], errHas: "key 2: secret", noSecret: []string{secretOld, weak["32 a"]}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := ParseKeys(tc.spec)
			if tc.wantIDs != nil {
				if err != nil {
					t.Fatalf("ParseKeys: %v", err)
				}
				if got := k.KeyIDs(); strings.Join(got, ",") != strings.Join(tc.wantIDs, ",") {
					t.Errorf("KeyIDs = %v, want %v", got, tc.wantIDs)
				}
				if k.SigningKeyID() != tc.wantIDs[0] {
					t.Errorf("SigningKeyID = %q, want %q", k.SigningKeyID(), tc.wantIDs[0])
				}
				return
			}
			if err == nil {
				t.Fatalf("ParseKeys(%q) = %v, want an error", tc.spec, k)
			}
			if tc.errHas != "" && !strings.Contains(err.Error(), tc.errHas) {
				t.Errorf("error %q does not name %s", err, tc.errHas)
			}
			for _, s := range tc.noSecret {
				if strings.Contains(err.Error(), s) {
					t.Errorf("error %q contains a secret", err)
				}
			}
		})
	}
	for name, s := range weak {
		t.Run("weak secret "+name, func(t *testing.T) {
			k, err := ParseKeys("k1=" + s)
			if err == nil {
				t.Fatalf("ParseKeys accepted a weak secret: %v", k)
			}
			if !strings.Contains(err.Error(), "key 1:") {
				t.Errorf("error %q does not name the key by its position", err)
			}
			if s != "" && strings.Contains(err.Error(), s) {
				t.Errorf("error %q contains the secret", err)
			}
			if _, err := NewKeys("k1", s); err == nil {
				t.Error("NewKeys accepted a weak secret")
			}
		})
	}
}

// TestRegressionParseKeysLeaksSecret: ParseKeys cuts each entry at its first '=', so an entry that is
// a base64 secret whose kid was forgotten ("new=…,QUmi…sX0=") reads as kid "QUmi…sX0" with an empty
// secret. When the secret's characters all fit the kid syntax (no '+' or '/', about one base64 secret
// in four), the error names that "kid", that is prints the secret but for its padding, though
// ParseKeys promises its errors never show a secret (they end up in startup logs).
func TestRegressionParseKeysLeaksSecret(t *testing.T) {
	for _, spec := range []string{
		"k1=" + secretOld + "," + secretNew, // second entry is the bare secret "QUmi…sX0="
		secretNew,                           // a single bare secret
	} {
		_, err := ParseKeys(spec)
		if err == nil {
			t.Fatalf("ParseKeys accepted %q", spec)
		}
		if leaked := strings.TrimSuffix(secretNew, "="); strings.Contains(err.Error(), leaked) {
			t.Errorf("ParseKeys error shows the secret: %q", err)
		}
	}
}

func TestParseKeysMatchesNewKeys(t *testing.T) {
	parsed := mustParseKeys(t, "a="+secretOld+",b="+secretNew)
	built := mustKeys(t, "a", secretOld, "b", secretNew)
	r1, r2 := signedRecord(t, parsed), signedRecord(t, built)
	s1, _ := Header(r1, HeaderSignature)
	s2, _ := Header(r2, HeaderSignature)
	if s1 != s2 {
		t.Errorf("ParseKeys and NewKeys sign differently: %q vs %q", s1, s2)
	}
	if err := built.Verify(r1); err != nil {
		t.Errorf("NewKeys keys do not verify a ParseKeys-signed record: %v", err)
	}
}

func TestNewKeysArguments(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"none", nil},
		{"odd", []string{"k1"}},
		{"odd after a pair", []string{"k1", secretOld, "k2"}},
		{"bad kid", []string{"k 1", secretOld}},
		{"duplicate", []string{"k1", secretOld, "k1", secretNew}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if k, err := NewKeys(tc.args...); err == nil {
				t.Fatalf("NewKeys(%q) = %v, want an error", tc.args, k)
			} else if strings.Contains(err.Error(), secretOld) || strings.Contains(err.Error(), secretNew) {
				t.Errorf("error %q contains a secret", err)
			}
		})
	}
}

func TestKeysStringHidesSecrets(t *testing.T) {
	k := mustParseKeys(t, "new="+secretNew+",old="+secretOld)
	for _, s := range []string{k.String(), fmt.Sprint(k), fmt.Sprintf("%v", k), fmt.Sprintf("%+v", k), fmt.Sprintf("%#v", k)} {
		for _, sec := range []string{secretNew, secretOld, secretNew[:12], secretOld[:12]} {
			if strings.Contains(s, sec) {
				t.Errorf("%q shows a secret", s)
			}
		}
		if !strings.Contains(s, "new") || !strings.Contains(s, "old") {
			t.Errorf("%q does not list the key ids", s)
		}
	}
	if got, want := k.String(), "signing keys new,old (signing with new)"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

func TestSignVerifyConcurrent(t *testing.T) {
	k := mustKeys(t, "k1", secretOld, "k2", secretNew)
	verifier := mustKeys(t, "k2", secretNew, "k1", secretOld)
	shared := signedRecord(t, k)
	const goroutines, iterations = 32, 200
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range iterations {
				r := unsignedRecord()
				r.Key = fmt.Appendf(nil, "conv-%d-%d", g, i)
				r.Value = append(r.Value, byte(g), byte(i))
				if err := k.Sign(r); err != nil {
					t.Errorf("Sign: %v", err)
					return
				}
				if err := k.Verify(r); err != nil {
					t.Errorf("Verify: %v", err)
					return
				}
				if err := verifier.Verify(r); err != nil {
					t.Errorf("Verify with reordered keys: %v", err)
					return
				}
				if err := k.Verify(shared); err != nil {
					t.Errorf("Verify of the shared record: %v", err)
					return
				}
				r.Value[0] ^= 0x80
				if err := k.Verify(r); !errors.Is(err, ErrBadSignature) {
					t.Errorf("Verify of a tampered record = %v, want ErrBadSignature", err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
