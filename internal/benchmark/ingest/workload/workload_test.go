package workload

import (
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/msgplatform/platform/internal/envelope"
)

// Two workloads of one seed are the same messages, so another process can build the documents the
// pipeline stores without reading Kafka; another seed gives other ids.
func TestSameSeedSameMessages(t *testing.T) {
	a, b, c := New(7, Shape{}), New(7, Shape{}), New(8, Shape{})
	if len(a.Conversations()) != DefaultConversations {
		t.Fatalf("%d conversations, want %d", len(a.Conversations()), DefaultConversations)
	}
	for i := range a.Conversations() {
		ca, cb := a.Conversations()[i], b.Conversations()[i]
		if ca.ID != cb.ID || ca.Tenant != cb.Tenant || !slices.Equal(ca.Members, cb.Members) || len(ca.Members) != DefaultMembers {
			t.Fatalf("conversation %d: %+v vs %+v", i, ca, cb)
		}
	}
	tenants := map[string]bool{}
	for _, conv := range a.Conversations() {
		tenants[conv.Tenant] = true
	}
	if len(tenants) != DefaultTenants {
		t.Errorf("%d tenants, want %d", len(tenants), DefaultTenants)
	}
	ids := map[string]bool{}
	for i := range 5000 {
		ma, mb, mc := a.Next(), b.Next(), c.Next()
		if !proto.Equal(ma, mb) {
			t.Fatalf("message %d differs between two workloads of one seed:\n%v\n%v", i, ma, mb)
		}
		if ma.GetId() == mc.GetId() {
			t.Fatalf("message %d: seeds 7 and 8 gave the same id %s", i, ma.GetId())
		}
		if ids[ma.GetId()] {
			t.Fatalf("message %d: id %s repeated", i, ma.GetId())
		}
		ids[ma.GetId()] = true
		if n := len(strings.Fields(ma.GetBody())); n < 1 || n > MaxWords {
			t.Fatalf("message %d: %d words", i, n)
		}
		if err := envelope.Validate(ma); err != nil {
			t.Fatalf("message %d is invalid: %v", i, err)
		}
	}
}

// Both encodings decode (as the pipeline decodes them) to the generated message and carry a valid
// signature.
func TestRecordEncodings(t *testing.T) {
	keys, err := envelope.NewKeys("k", "workload-test-signing-secret-0123456789abcdef")
	if err != nil {
		t.Fatal(err)
	}
	w := New(1, Shape{Conversations: 10})
	for _, enc := range []Encoding{Protobuf, ProtoJSON} {
		in := w.Next()
		rec, err := Record(in, enc, keys)
		if err != nil {
			t.Fatal(err)
		}
		if err := keys.Verify(rec); err != nil {
			t.Errorf("%s: signature: %v", enc, err)
		}
		ct, _ := envelope.Header(rec, envelope.HeaderContentType)
		if (enc == ProtoJSON) != (ct == envelope.ContentTypeJSON) || string(rec.Key) != in.GetConversationId() {
			t.Errorf("%s: content-type %q, key %q", enc, ct, rec.Key)
		}
		got, err := envelope.DecodeInbound(rec)
		if err != nil || !proto.Equal(got, in) {
			t.Errorf("%s: decoded %v, %v; want %v", enc, got, err, in)
		}
	}
	if _, err := ParseEncoding("xml"); err == nil {
		t.Error("ParseEncoding(xml) succeeded")
	}
}

func TestDocuments(t *testing.T) {
	docs := Documents(3, Shape{}, 100)
	w := New(3, Shape{})
	for i, d := range docs {
		in := w.Next()
		if d.ID != in.GetId() || d.Body != envelope.NormalizeBody(in.GetBody()) || !d.CreateTime.Equal(in.GetSendTime().AsTime()) {
			t.Fatalf("document %d = %+v for %v", i, d, in)
		}
	}
}
