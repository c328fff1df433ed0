package envelope

import (
	"strings"
	"testing"

	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/types/known/timestamppb"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
)

// The cost signing and verifying add to every record: go test -run '^$' -bench 'Sign|Verify' ./internal/envelope/
func benchRecordKeys(b *testing.B) (*Keys, *platformv1.InboundMessage) {
	keys, err := NewKeys("k1", "benchmark-signing-secret-0123456789abcdef")
	if err != nil {
		b.Fatal(err)
	}
	in := &platformv1.InboundMessage{Id: ulid.Make().String(), TenantId: "t1", ConversationId: ulid.Make().String(), SenderId: "alice",
		Body: strings.Repeat("a typical chat message ", 20), Metadata: map[string]string{"client": "web"}, RequestId: ulid.Make().String(),
		SendTime: timestamppb.Now(), SenderRoles: []string{"user"}}
	return keys, in
}

func BenchmarkSignInbound(b *testing.B) {
	keys, in := benchRecordKeys(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := InboundRecord(in, keys); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyDecodeValidate(b *testing.B) {
	keys, in := benchRecordKeys(b)
	r, err := InboundRecord(in, keys)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := keys.Verify(r); err != nil {
			b.Fatal(err)
		}
		m, err := DecodeInbound(r)
		if err != nil {
			b.Fatal(err)
		}
		if err := Validate(m); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyOnly(b *testing.B) {
	keys, in := benchRecordKeys(b)
	r, err := InboundRecord(in, keys)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := keys.Verify(r); err != nil {
			b.Fatal(err)
		}
	}
}
