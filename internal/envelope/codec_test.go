package envelope

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/kafka"
)

func testEvent() *platformv1.Event {
	return &platformv1.Event{
		Id:             "01ARZ3NDEKTSV4RRFFQ69G5FAW",
		Type:           platformv1.EventType_EVENT_TYPE_MESSAGE_PERSISTED,
		TenantId:       "tenant-1",
		ConversationId: "conv-1",
		ActorId:        "user-1",
		RequestId:      "req-9",
		EventTime:      timestamppb.New(time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)),
		Payload: &platformv1.Event_Message{Message: &platformv1.Message{
			Id:             testULID,
			TenantId:       "tenant-1",
			ConversationId: "conv-1",
			SenderId:       "user-1",
			Body:           "hello",
			Metadata:       map[string]string{"lang": "en"},
		}},
	}
}

func TestInboundRecordRoundTrip(t *testing.T) {
	keys := mustKeys(t, "k1", secretOld)
	for _, tc := range []struct {
		name string
		m    *platformv1.InboundMessage
	}{
		{"full", validMessage()},
		{"empty", &platformv1.InboundMessage{}},
		{"unicode", &platformv1.InboundMessage{ConversationId: "会話-1", Body: "e\u0301 😀", Metadata: map[string]string{"ключ": "значение"}}},
		{"large body", &platformv1.InboundMessage{ConversationId: "c", Body: strings.Repeat("x", MaxBodyBytes)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := InboundRecord(tc.m, keys)
			if err != nil {
				t.Fatalf("InboundRecord: %v", err)
			}
			if r.Topic != kafka.TopicInbound {
				t.Errorf("topic %q, want %q", r.Topic, kafka.TopicInbound)
			}
			if string(r.Key) != tc.m.GetConversationId() {
				t.Errorf("key %q, want the conversation id %q", r.Key, tc.m.GetConversationId())
			}
			if ct, _ := Header(r, HeaderContentType); ct != ContentTypeProtobuf {
				t.Errorf("content-type %q, want %q", ct, ContentTypeProtobuf)
			}
			if rid, ok := Header(r, HeaderRequestID); !ok || rid != tc.m.GetRequestId() {
				t.Errorf("x-request-id %q (present %v), want %q", rid, ok, tc.m.GetRequestId())
			}
			if err := keys.Verify(r); err != nil {
				t.Errorf("Verify: %v", err)
			}
			if err := CheckSize(r); err != nil {
				t.Errorf("CheckSize: %v", err)
			}
			got, err := DecodeInbound(r)
			if err != nil {
				t.Fatalf("DecodeInbound: %v", err)
			}
			if !proto.Equal(got, tc.m) {
				t.Errorf("decoded %v, want %v", got, tc.m)
			}
		})
	}
}

func TestEventRecordRoundTrip(t *testing.T) {
	keys := mustKeys(t, "k1", secretOld)
	for _, tc := range []struct {
		name string
		ev   *platformv1.Event
	}{
		{"message persisted", testEvent()},
		{"member added", &platformv1.Event{Id: "e2", Type: platformv1.EventType_EVENT_TYPE_MEMBER_ADDED, ConversationId: "conv-2"}},
		{"empty", &platformv1.Event{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := EventRecord(tc.ev, keys)
			if err != nil {
				t.Fatalf("EventRecord: %v", err)
			}
			if r.Topic != kafka.TopicEvents {
				t.Errorf("topic %q, want %q", r.Topic, kafka.TopicEvents)
			}
			if string(r.Key) != tc.ev.GetConversationId() {
				t.Errorf("key %q, want %q", r.Key, tc.ev.GetConversationId())
			}
			if rid, _ := Header(r, HeaderRequestID); rid != tc.ev.GetRequestId() {
				t.Errorf("x-request-id %q, want %q", rid, tc.ev.GetRequestId())
			}
			if err := keys.Verify(r); err != nil {
				t.Errorf("Verify: %v", err)
			}
			got, err := DecodeEvent(r)
			if err != nil {
				t.Fatalf("DecodeEvent: %v", err)
			}
			if !proto.Equal(got, tc.ev) {
				t.Errorf("decoded %v, want %v", got, tc.ev)
			}
		})
	}
}

func TestRecordEncodeErrors(t *testing.T) {
	keys := mustKeys(t, "k1", secretOld)
	// proto3 strings must be UTF-8: encoding refuses, nothing is produced.
	if r, err := InboundRecord(&platformv1.InboundMessage{Body: "\xff"}, keys); err == nil {
		t.Errorf("InboundRecord of invalid UTF-8 = %v, want an error", r)
	}
	if r, err := EventRecord(&platformv1.Event{ActorId: "\xff"}, keys); err == nil {
		t.Errorf("EventRecord of invalid UTF-8 = %v, want an error", r)
	}
	// Without keys nothing unsigned is produced.
	if r, err := InboundRecord(validMessage(), nil); err == nil {
		t.Errorf("InboundRecord without keys = %v, want an error", r)
	}
	if r, err := EventRecord(testEvent(), nil); err == nil {
		t.Errorf("EventRecord without keys = %v, want an error", r)
	}
}

func TestHeader(t *testing.T) {
	r := &kgo.Record{Headers: []kgo.RecordHeader{
		{Key: "a", Value: []byte("1")},
		{Key: "b", Value: nil},
		{Key: "a", Value: []byte("2")},
	}}
	for _, tc := range []struct {
		key    string
		want   string
		wantOK bool
	}{
		{"a", "1", true}, // the first of repeated ones
		{"b", "", true},  // present and empty
		{"c", "", false}, // absent
		{"A", "", false}, // keys are case-sensitive
	} {
		if got, ok := Header(r, tc.key); got != tc.want || ok != tc.wantOK {
			t.Errorf("Header(%q) = %q, %v; want %q, %v", tc.key, got, ok, tc.want, tc.wantOK)
		}
	}
	if _, ok := Header(&kgo.Record{}, "a"); ok {
		t.Error("Header of a record without headers reports one")
	}
}

func withContentType(value []byte, ct *string) *kgo.Record {
	r := &kgo.Record{Topic: kafka.TopicInbound, Value: value}
	if ct != nil {
		r.Headers = []kgo.RecordHeader{{Key: HeaderContentType, Value: []byte(*ct)}}
	}
	return r
}

func strPtr(s string) *string { return &s }

func TestDecodeInboundContentTypes(t *testing.T) {
	m := validMessage()
	pb, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	js, err := protojson.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	jsProtoNames, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	withUnknown := `{"id":"` + testULID + `","tenantId":"tenant-1","body":"hi","futureField":42,` +
		`"future_nested":{"a":[1,2,{"b":null}]},"metadata":{"lang":"en"}}`
	for _, tc := range []struct {
		name  string
		value []byte
		ct    *string // nil: no content-type header
		want  *platformv1.InboundMessage
	}{
		{"no content-type is protobuf", pb, nil, m},
		{"empty content-type is protobuf", pb, strPtr(""), m},
		{"blank content-type is protobuf", pb, strPtr("  "), m},
		{"application/x-protobuf", pb, strPtr(ContentTypeProtobuf), m},
		{"application/protobuf", pb, strPtr("application/protobuf"), m},
		{"application/vnd.google.protobuf", pb, strPtr("application/vnd.google.protobuf"), m},
		{"application/octet-stream", pb, strPtr("application/octet-stream"), m},
		{"protobuf with parameters", pb, strPtr("application/x-protobuf; messageType=platform.v1.InboundMessage"), m},
		{"protobuf upper-case", pb, strPtr("Application/X-Protobuf"), m},
		{"empty protobuf value", nil, strPtr(ContentTypeProtobuf), &platformv1.InboundMessage{}},
		{"json", js, strPtr(ContentTypeJSON), m},
		{"json with charset", js, strPtr("application/json; charset=utf-8"), m},
		{"json with charset, spaced and upper-case", js, strPtr("Application/JSON ;  Charset=UTF-8"), m},
		{"json with proto field names", jsProtoNames, strPtr(ContentTypeJSON), m},
		{"json with unknown fields", []byte(withUnknown), strPtr("application/json; charset=utf-8"), &platformv1.InboundMessage{
			Id: testULID, TenantId: "tenant-1", Body: "hi", Metadata: map[string]string{"lang": "en"},
		}},
		{"json empty object", []byte("{}"), strPtr(ContentTypeJSON), &platformv1.InboundMessage{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeInbound(withContentType(tc.value, tc.ct))
			if err != nil {
				t.Fatalf("DecodeInbound: %v", err)
			}
			if !proto.Equal(got, tc.want) {
				t.Errorf("decoded %v, want %v", got, tc.want)
			}
		})
	}
}

func TestDecodeUndecodable(t *testing.T) {
	pb, err := proto.Marshal(validMessage())
	if err != nil {
		t.Fatal(err)
	}
	js, err := protojson.Marshal(validMessage())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		value []byte
		ct    string
		says  string // a fragment of the error
	}{
		{"text/plain", []byte("hello"), "text/plain", "unsupported content-type"},
		{"application/xml", []byte("<m/>"), "application/xml", "unsupported content-type"},
		{"application/grpc", pb, "application/grpc", "unsupported content-type"},
		{"json-ish type", js, "application/json-patch+json", "unsupported content-type"},
		{"malformed content-type", pb, "application/json; charset", "content-type"},
		{"malformed content-type: only separators", pb, ";;;", "content-type"},
		{"malformed content-type: no subtype", pb, "application/", "content-type"},
		{"malformed content-type: control character", pb, "application/json\x00", "content-type"},
		{"protobuf bytes declared json", pb, ContentTypeJSON, "protojson"},
		{"json bytes declared protobuf", js, ContentTypeProtobuf, "protobuf"},
		{"protobuf garbage", []byte{0xff, 0xff, 0xff, 0xff}, ContentTypeProtobuf, "protobuf"},
		{"protobuf truncated", pb[:len(pb)-3], ContentTypeProtobuf, "protobuf"},
		{"protobuf invalid UTF-8 string", []byte("\x2a\x02\xff\xfe"), ContentTypeProtobuf, "protobuf"},
		{"json not json", []byte("not json"), ContentTypeJSON, "protojson"},
		{"json truncated", js[:len(js)/2], ContentTypeJSON, "protojson"},
		{"json wrong type", []byte(`{"body": 5}`), ContentTypeJSON, "protojson"},
		{"json array", []byte(`[]`), ContentTypeJSON, "protojson"},
		{"json empty", nil, ContentTypeJSON, "protojson"},
		{"json duplicate field", []byte(`{"body":"a","body":"b"}`), ContentTypeJSON, "protojson"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := withContentType(tc.value, &tc.ct)
			m, err := DecodeInbound(r)
			if err == nil {
				t.Fatalf("DecodeInbound = %v, want an error", m)
			}
			if m != nil {
				t.Errorf("DecodeInbound returned a message with its error")
			}
			if !errors.Is(err, ErrUndecodable) {
				t.Errorf("error %v does not wrap ErrUndecodable", err)
			}
			if !strings.Contains(err.Error(), tc.says) {
				t.Errorf("error %q does not say %q", err, tc.says)
			}
			ev, err := DecodeEvent(r)
			if err == nil {
				// Some bytes are both a valid InboundMessage and Event payload.
				if tc.says == "unsupported content-type" || tc.says == "content-type" {
					t.Errorf("DecodeEvent = %v, want an error for content-type %q", ev, tc.ct)
				}
			} else if !errors.Is(err, ErrUndecodable) {
				t.Errorf("DecodeEvent error %v does not wrap ErrUndecodable", err)
			}
		})
	}
}

func TestDecodeErrorClipsContentType(t *testing.T) {
	huge := "application/" + strings.Repeat("x", 10000)
	for _, ct := range []string{huge, huge + "; a", "text/" + strings.Repeat("\xff", 1000)} {
		_, err := DecodeInbound(withContentType([]byte("v"), &ct))
		if !errors.Is(err, ErrUndecodable) {
			t.Fatalf("DecodeInbound = %v, want ErrUndecodable", err)
		}
		if len(err.Error()) > 500 {
			t.Errorf("error is %d bytes: the content-type is not clipped", len(err.Error()))
		}
	}
}

func TestDecodeEventContentTypes(t *testing.T) {
	ev := testEvent()
	pb, err := proto.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	js, err := protojson.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	withUnknown := `{"id":"e1","type":"EVENT_TYPE_MEMBER_ADDED","conversationId":"c","newField":{"x":true}}`
	for _, tc := range []struct {
		name  string
		value []byte
		ct    *string
		want  *platformv1.Event
	}{
		{"protobuf", pb, strPtr(ContentTypeProtobuf), ev},
		{"no content-type", pb, nil, ev},
		{"json", js, strPtr(ContentTypeJSON), ev},
		{"json with charset", js, strPtr("application/json; charset=utf-8"), ev},
		{"json with unknown fields", []byte(withUnknown), strPtr("application/json; charset=utf-8"), &platformv1.Event{
			Id: "e1", Type: platformv1.EventType_EVENT_TYPE_MEMBER_ADDED, ConversationId: "c",
		}},
		// With unknown fields ignored, an unknown enum name (a newer producer's event type) is too.
		{"json with an unknown enum name", []byte(`{"id":"e1","type":"EVENT_TYPE_FROM_THE_FUTURE"}`), strPtr(ContentTypeJSON),
			&platformv1.Event{Id: "e1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeEvent(withContentType(tc.value, tc.ct))
			if err != nil {
				t.Fatalf("DecodeEvent: %v", err)
			}
			if !proto.Equal(got, tc.want) {
				t.Errorf("decoded %v, want %v", got, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		name, ct string
		value    []byte
	}{
		{"garbage protobuf", ContentTypeProtobuf, []byte{0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}},
		{"enum number out of int32 range", ContentTypeJSON, []byte(`{"type":4294967296}`)},
		{"malformed json", ContentTypeJSON, []byte(`{"id":`)},
		{"unsupported type", "text/csv", []byte("a,b")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev, err := DecodeEvent(withContentType(tc.value, &tc.ct))
			if !errors.Is(err, ErrUndecodable) || ev != nil {
				t.Errorf("DecodeEvent = %v, %v; want nil, ErrUndecodable", ev, err)
			}
		})
	}
}
