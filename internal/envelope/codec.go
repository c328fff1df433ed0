package envelope

import (
	"errors"
	"fmt"
	"mime"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/kafka"
)

// Record headers of the platform's own records.
const (
	// HeaderContentType names the value's encoding: ContentTypeProtobuf (also when absent) or ContentTypeJSON.
	HeaderContentType = "content-type"
	// HeaderRequestID carries the request id of the API call that produced the record (informational:
	// the signed payload has its own copy).
	HeaderRequestID = "x-request-id"
	// HeaderTraceparent is the W3C trace context of the record (internal/tracing writes and reads it);
	// not covered by the signature.
	HeaderTraceparent = "traceparent"
)

// Content types of record values.
const (
	ContentTypeProtobuf = "application/x-protobuf"
	ContentTypeJSON     = "application/json"
)

// protobufAliases are the media types accepted as binary protobuf besides ContentTypeProtobuf.
var protobufAliases = []string{ContentTypeProtobuf, "application/protobuf", "application/vnd.google.protobuf", "application/octet-stream"}

// ErrUndecodable is wrapped by decoding failures.
var ErrUndecodable = errors.New("undecodable record")

// Header returns the value of the record's header key and whether it is there (the first one when
// repeated).
func Header(r *kgo.Record, key string) (string, bool) {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value), true
		}
	}
	return "", false
}

// mediaType returns the record's lower-cased media type, ContentTypeProtobuf when the header is absent.
func mediaType(r *kgo.Record) (string, error) {
	ct, ok := Header(r, HeaderContentType)
	if !ok || strings.TrimSpace(ct) == "" {
		return ContentTypeProtobuf, nil
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return "", fmt.Errorf("%w: content-type %q: %w", ErrUndecodable, Clip(ct, 64), err)
	}
	return mt, nil
}

// decode decodes the record's value into m by its content type: protojson for application/json (unknown
// fields ignored, so a newer producer's fields do not break an older consumer), binary protobuf for the
// protobuf types.
func decode(r *kgo.Record, m proto.Message) error {
	mt, err := mediaType(r)
	if err != nil {
		return err
	}
	switch {
	case mt == ContentTypeJSON:
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(r.Value, m); err != nil {
			return fmt.Errorf("%w: protojson %s: %w", ErrUndecodable, m.ProtoReflect().Descriptor().Name(), err)
		}
	case isProtobuf(mt):
		if err := proto.Unmarshal(r.Value, m); err != nil {
			return fmt.Errorf("%w: protobuf %s: %w", ErrUndecodable, m.ProtoReflect().Descriptor().Name(), err)
		}
	default:
		return fmt.Errorf("%w: unsupported content-type %q (want %s or %s)", ErrUndecodable, Clip(mt, 64), ContentTypeProtobuf, ContentTypeJSON)
	}
	return nil
}

func isProtobuf(mt string) bool {
	for _, a := range protobufAliases {
		if mt == a {
			return true
		}
	}
	return false
}

// DecodeInbound decodes a messages.inbound record. It does not validate (see Validate) nor verify (see
// Keys.Verify): verify first, so nothing is decoded from a record nobody vouched for.
func DecodeInbound(r *kgo.Record) (*platformv1.InboundMessage, error) {
	m := &platformv1.InboundMessage{}
	if err := decode(r, m); err != nil {
		return nil, err
	}
	return m, nil
}

// DecodeEvent decodes a messages.events record.
func DecodeEvent(r *kgo.Record) (*platformv1.Event, error) {
	ev := &platformv1.Event{}
	if err := decode(r, ev); err != nil {
		return nil, err
	}
	return ev, nil
}

// InboundRecord encodes m as the messages.inbound record SendMessage produces: binary protobuf, keyed by
// conversation id (so a conversation stays in one partition, in order), signed with keys.
func InboundRecord(m *platformv1.InboundMessage, keys *Keys) (*kgo.Record, error) {
	return record(kafka.TopicInbound, m.GetConversationId(), m.GetRequestId(), m, keys)
}

// EventRecord encodes ev as a messages.events record, keyed by conversation id, signed with keys.
func EventRecord(ev *platformv1.Event, keys *Keys) (*kgo.Record, error) {
	return record(kafka.TopicEvents, ev.GetConversationId(), ev.GetRequestId(), ev, keys)
}

func record(topic, key, requestID string, m proto.Message, keys *Keys) (*kgo.Record, error) {
	value, err := proto.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", m.ProtoReflect().Descriptor().Name(), err)
	}
	r := &kgo.Record{Topic: topic, Key: []byte(key), Value: value, Headers: []kgo.RecordHeader{
		{Key: HeaderContentType, Value: []byte(ContentTypeProtobuf)},
		{Key: HeaderRequestID, Value: []byte(requestID)},
	}}
	if err := keys.Sign(r); err != nil {
		return nil, err
	}
	return r, nil
}
