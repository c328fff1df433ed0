package envelope

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/oklog/ulid/v2"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
)

// ErrInvalid is wrapped by every validation failure (an *InvalidError).
var ErrInvalid = errors.New("invalid envelope")

// Violation is one field that breaks a rule. Field is the InboundMessage field name (snake_case), e.g.
// "body" or "metadata[lang]".
type Violation struct {
	Field       string
	Description string
}

// InvalidError lists every violation of one message.
type InvalidError struct{ Violations []Violation }

func (e *InvalidError) Error() string {
	parts := make([]string, len(e.Violations))
	for i, v := range e.Violations {
		parts[i] = v.Field + ": " + v.Description
	}
	return ErrInvalid.Error() + ": " + strings.Join(parts, "; ")
}

// Is makes errors.Is(err, ErrInvalid) true.
func (e *InvalidError) Is(target error) bool { return target == ErrInvalid }

// Violations returns the violations of an error returned by Validate, nil for other errors.
func Violations(err error) []Violation {
	var ie *InvalidError
	if errors.As(err, &ie) {
		return ie.Violations
	}
	return nil
}

// Validate checks an inbound message against every rule of the platform. SendMessage validates the
// message it is about to publish with it, and the pipeline's validate stage the message it consumed, so
// what one accepts the other accepts. It returns nil or an *InvalidError.
func Validate(m *platformv1.InboundMessage) error {
	var vs []Violation
	add := func(field, format string, args ...any) {
		vs = append(vs, Violation{Field: field, Description: fmt.Sprintf(format, args...)})
	}
	if _, err := ulid.ParseStrict(m.GetId()); err != nil {
		add("id", "want a ULID")
	}
	for _, f := range []struct{ name, v string }{
		{"tenant_id", m.GetTenantId()}, {"conversation_id", m.GetConversationId()}, {"sender_id", m.GetSenderId()},
	} {
		if err := CheckID(f.v); err != nil {
			add(f.name, "%s", strings.TrimPrefix(err.Error(), ErrInvalidID.Error()+": "))
		}
	}
	if err := CheckRoles(m.GetSenderRoles()); err != nil {
		add("sender_roles", "%v", err)
	}
	if err := CheckBody(m.GetBody()); err != nil {
		add("body", "%v", err)
	}
	switch cmid := m.GetClientMessageId(); {
	case len(cmid) > MaxClientMessageIDBytes:
		add("client_message_id", "at most %d bytes", MaxClientMessageIDBytes)
	case !utf8.ValidString(cmid):
		add("client_message_id", "must be UTF-8")
	}
	if th := m.GetThreadId(); th != "" {
		if _, err := ulid.ParseStrict(th); err != nil {
			add("thread_id", "want a ULID")
		} else if th == m.GetId() {
			add("thread_id", "a message cannot reply to itself")
		}
	}
	if n := len(m.GetMetadata()); n > MaxMetadata {
		add("metadata", "at most %d entries (got %d)", MaxMetadata, n)
	}
	for _, k := range slices.Sorted(maps.Keys(m.GetMetadata())) { // sorted: the same message, the same error
		v := m.GetMetadata()[k]
		switch {
		case k == "" || len(k) > MaxMetadataKey || !utf8.ValidString(k):
			add("metadata", "keys are 1 to %d bytes of UTF-8", MaxMetadataKey)
		case len(v) > MaxMetadataValue || !utf8.ValidString(v):
			add("metadata["+k+"]", "at most %d bytes of UTF-8", MaxMetadataValue)
		}
	}
	if rid := m.GetRequestId(); rid != "" {
		if err := CheckID(rid); err != nil {
			add("request_id", "%s", strings.TrimPrefix(err.Error(), ErrInvalidID.Error()+": "))
		}
	}
	if ts := m.GetSendTime(); ts != nil {
		if err := ts.CheckValid(); err != nil {
			add("send_time", "%v", err)
		}
	}
	if len(vs) == 0 {
		return nil
	}
	return &InvalidError{Violations: vs}
}
