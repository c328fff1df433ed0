package pipeline

import (
	"context"
	"errors"
	"fmt"
	"mime"
	"strings"
	"unicode/utf8"

	"github.com/oklog/ulid/v2"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/resources"
)

// MaxIDLen bounds the tenant, conversation and sender ids of an envelope (bytes). The body and metadata
// limits are the API's own (internal/resources), so a message SendMessage accepted is never refused here.
const MaxIDLen = 128

// HeaderContentType names the payload encoding of an inbound record.
const HeaderContentType = "content-type"

// errInvalid is wrapped by every validation failure.
var errInvalid = errors.New("invalid envelope")

// deserializeStage decodes the record's value into a platform.v1.InboundMessage: protojson when the
// content-type header is application/json, protobuf binary when it is absent or a protobuf type.
type deserializeStage struct{}

func (deserializeStage) Name() string { return StageDeserialize }

func (deserializeStage) Process(_ context.Context, batch []*Item) {
	for _, it := range batch {
		msg, err := decode(it.Record)
		if err != nil {
			it.Fail(Permanent, err)
			continue
		}
		it.Inbound = msg
	}
}

func decode(r *kgo.Record) (*platformv1.InboundMessage, error) {
	mediaType := "application/x-protobuf"
	if ct, ok := header(r, HeaderContentType); ok && strings.TrimSpace(ct) != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil {
			return nil, fmt.Errorf("content-type %q: %w", clip(ct, 64), err)
		}
		mediaType = mt // lower-cased by ParseMediaType
	}
	msg := &platformv1.InboundMessage{}
	switch mediaType {
	case "application/json":
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(r.Value, msg); err != nil {
			return nil, fmt.Errorf("decode protojson InboundMessage: %w", err)
		}
	case "application/x-protobuf", "application/protobuf", "application/vnd.google.protobuf", "application/octet-stream":
		if err := proto.Unmarshal(r.Value, msg); err != nil {
			return nil, fmt.Errorf("decode protobuf InboundMessage: %w", err)
		}
	default:
		return nil, fmt.Errorf("unsupported content-type %q (want application/x-protobuf or application/json)", clip(mediaType, 64))
	}
	return msg, nil
}

// validateStage checks the envelope as the API checks a SendMessage request, plus what the API fills in
// itself: a ULID message id, tenant, conversation and sender ids, a well-formed send time.
type validateStage struct{}

func (validateStage) Name() string { return StageValidate }

func (validateStage) Process(_ context.Context, batch []*Item) {
	for _, it := range batch {
		if err := validate(it.Inbound); err != nil {
			it.Fail(Permanent, err)
		}
	}
}

func validate(m *platformv1.InboundMessage) error {
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	if _, err := ulid.ParseStrict(m.GetId()); err != nil {
		add("id: want a ULID")
	}
	for _, f := range []struct{ name, v string }{
		{"tenant_id", m.GetTenantId()}, {"conversation_id", m.GetConversationId()}, {"sender_id", m.GetSenderId()},
	} {
		switch {
		case f.v == "":
			add("%s: must not be empty", f.name)
		case len(f.v) > MaxIDLen:
			add("%s: at most %d bytes", f.name, MaxIDLen)
		case !utf8.ValidString(f.v) || strings.ContainsFunc(f.v, func(r rune) bool { return r < 0x20 || r == 0x7f }):
			add("%s: must be printable UTF-8", f.name)
		}
	}
	body := m.GetBody()
	switch {
	case strings.TrimSpace(body) == "":
		add("body: must not be empty")
	case len(body) > resources.MaxBodyBytes:
		add("body: at most %d bytes (got %d)", resources.MaxBodyBytes, len(body))
	case !utf8.ValidString(body):
		add("body: must be UTF-8")
	}
	if len(m.GetClientMessageId()) > resources.MaxClientMessageIDLen {
		add("client_message_id: at most %d bytes", resources.MaxClientMessageIDLen)
	}
	if n := len(m.GetMetadata()); n > resources.MaxMetadata {
		add("metadata: at most %d entries (got %d)", resources.MaxMetadata, n)
	}
	for k, v := range m.GetMetadata() {
		switch {
		case k == "" || len(k) > resources.MaxMetadataKey:
			add("metadata: keys are 1 to %d bytes", resources.MaxMetadataKey)
		case len(v) > resources.MaxMetadataValue:
			add("metadata: values are at most %d bytes", resources.MaxMetadataValue)
		}
	}
	if ts := m.GetSendTime(); ts != nil {
		if err := ts.CheckValid(); err != nil {
			add("send_time: %v", err)
		}
	}
	if len(problems) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", errInvalid, strings.Join(problems, "; "))
}

// header returns the first value of the record header key.
func header(r *kgo.Record, key string) (string, bool) {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value), true
		}
	}
	return "", false
}

// clip shortens s to at most n bytes without splitting a UTF-8 sequence, and makes it valid UTF-8.
func clip(s string, n int) string {
	if len(s) > n {
		cut := 0
		for i := range s { // rune starts
			if i > n {
				break
			}
			cut = i
		}
		s = s[:cut] + "…"
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}
