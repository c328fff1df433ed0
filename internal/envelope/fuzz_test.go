package envelope

import (
	"bytes"
	"errors"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/msgplatform/platform/internal/kafka"
)

// FuzzVerifyDecode feeds Verify and DecodeInbound arbitrary records: neither may panic, an unsigned
// record never verifies, a signed one always does, and any one-byte change to a covered field (value,
// key, topic, content-type) of a signed record breaks its signature.
// The fuzzed key bytes are also tried as the signature header itself, at any length: never a panic, never
// a pass (TestRegressionVerifyOverlongSignature).
func FuzzVerifyDecode(f *testing.F) {
	pb, err := proto.Marshal(validMessage())
	if err != nil {
		f.Fatal(err)
	}
	js, err := protojson.Marshal(validMessage())
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []struct {
		value, key []byte
		ct         string
		pos        uint
		flip       byte
	}{
		{pb, []byte("conv-1"), ContentTypeProtobuf, 0, 1},
		{pb, []byte("conv-1"), ContentTypeProtobuf, 1, 0x80},
		{pb, []byte("conv-1"), "", 2, 0xff},
		{js, []byte("conv-1"), "application/json; charset=utf-8", 3, 0x20},
		{js, nil, ContentTypeJSON, 17, 0},
		{nil, nil, "", 0, 0},
		{[]byte{0xff, 0xff, 0xff}, []byte{0}, "text/plain", 5, 3},
		{[]byte("{"), []byte("\xff"), "application/json; charset", 6, 7},
		{[]byte{0x0a, 0x80}, []byte("k"), ";;;", 7, 9},
		{pb, []byte("conv-1"), "application/x-protobuf\x00", 1 << 40, 0x55},
	} {
		f.Add(s.value, s.key, s.ct, s.pos, s.flip)
	}

	keys := mustKeys(f, "k1", secretOld, "k2", secretNew)
	rotated := mustKeys(f, "k2", secretNew, "k1", secretOld) // verifies what keys sign
	impostor := mustKeys(f, "k1", secretOther)               // same kid, another secret

	f.Fuzz(func(t *testing.T, value, key []byte, ct string, pos uint, flip byte) {
		r := &kgo.Record{Topic: kafka.TopicInbound, Key: key, Value: value,
			Headers: []kgo.RecordHeader{{Key: HeaderContentType, Value: []byte(ct)}, {Key: HeaderRequestID, Value: []byte("r")}}}

		// Unsigned: never verifies, decoding does not panic and fails only as undecodable.
		if err := keys.Verify(r); !errors.Is(err, ErrUnsigned) {
			t.Fatalf("Verify of an unsigned record = %v, want ErrUnsigned", err)
		}
		checkDecode(t, r)

		// Signed: verifies with the keys and with the same keys in another order, not with an impostor.
		if err := keys.Sign(r); err != nil {
			t.Fatalf("Sign: %v", err)
		}
		if err := keys.Verify(r); err != nil {
			t.Fatalf("Verify of a signed record: %v", err)
		}
		if err := rotated.Verify(r); err != nil {
			t.Fatalf("Verify with reordered keys: %v", err)
		}
		if err := impostor.Verify(r); !errors.Is(err, ErrBadSignature) {
			t.Fatalf("Verify with another secret under the same kid = %v, want ErrBadSignature", err)
		}
		checkDecode(t, r)

		// One byte changed (or added, when the field is empty) in one covered field.
		d := flip
		if d == 0 {
			d = 1
		}
		m := cloneRecord(r)
		mutate := func(b []byte) []byte {
			if len(b) == 0 {
				return []byte{d}
			}
			b = bytes.Clone(b)
			b[int((pos/4)%uint(len(b)))] ^= d
			return b
		}
		field := [...]string{"value", "key", "topic", "content-type"}[pos%4]
		switch field {
		case "value":
			m.Value = mutate(m.Value)
		case "key":
			m.Key = mutate(m.Key)
		case "topic":
			m.Topic = string(mutate([]byte(m.Topic)))
		case "content-type":
			h := headerPtr(m, HeaderContentType)
			h.Value = mutate(h.Value)
		}
		if err := keys.Verify(m); !errors.Is(err, ErrBadSignature) {
			t.Fatalf("Verify after changing one byte of the %s = %v, want ErrBadSignature", field, err)
		}
		checkDecode(t, m)

		// The original is untouched by the mutation and still verifies.
		if err := keys.Verify(r); err != nil {
			t.Fatalf("Verify of the original after mutating a copy: %v", err)
		}

		// Arbitrary bytes as the signature: never a panic, never a pass.
		forged := cloneRecord(r)
		headerPtr(forged, HeaderSignature).Value = bytes.Clone(key)
		if err := keys.Verify(forged); err == nil {
			t.Fatalf("Verify accepted %q as a signature", key)
		}

		// Stripping the signature makes it unsigned again.
		removeHeader(m, HeaderKeyID)
		removeHeader(m, HeaderSignature)
		if err := keys.Verify(m); !errors.Is(err, ErrUnsigned) {
			t.Fatalf("Verify without signature headers = %v, want ErrUnsigned", err)
		}
	})
}

func checkDecode(t *testing.T, r *kgo.Record) {
	t.Helper()
	m, err := DecodeInbound(r)
	if err != nil {
		if !errors.Is(err, ErrUndecodable) {
			t.Fatalf("DecodeInbound error %v does not wrap ErrUndecodable", err)
		}
		if m != nil {
			t.Fatal("DecodeInbound returned a message with its error")
		}
		return
	}
	if m == nil {
		t.Fatal("DecodeInbound returned neither a message nor an error")
	}
	_ = Validate(m) // must not panic on whatever decoded
	if _, err := DecodeEvent(r); err != nil && !errors.Is(err, ErrUndecodable) {
		t.Fatalf("DecodeEvent error %v does not wrap ErrUndecodable", err)
	}
}
