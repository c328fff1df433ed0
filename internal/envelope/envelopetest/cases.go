// Package envelopetest holds the table of SendMessage inputs that the API's tests and the pipeline's
// tests both run: the API must accept exactly what the pipeline stores, so both sides assert the same
// expectation for every row.
package envelopetest

import (
	"strings"

	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/types/known/timestamppb"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/envelope"
)

// Outcome is what must become of a case.
type Outcome int

// Outcomes.
const (
	// Accepted: SendMessage answers OK, and the pipeline's checks pass.
	Accepted Outcome = iota
	// InvalidRequest: SendMessage answers INVALID_ARGUMENT; the pipeline's validate stage refuses the same
	// message.
	InvalidRequest
	// BadIdentity: the token's sub, tenant_id or roles break the id rules: SendMessage answers
	// UNAUTHENTICATED; the pipeline's validate stage refuses a message carrying that identity.
	BadIdentity
)

// SendCase is one SendMessage input as a caller makes it: the token's identity and the request's fields.
type SendCase struct {
	Name            string
	Subject, Tenant string
	Roles           []string
	Body            string
	ClientMessageID string
	Metadata        map[string]string
	Want            Outcome
}

// Inbound is the message SendMessage builds from the case for conversation convID (what the pipeline
// receives when the API accepts it).
func (c SendCase) Inbound(convID string) *platformv1.InboundMessage {
	return &platformv1.InboundMessage{
		Id: ulid.Make().String(), TenantId: c.Tenant, ConversationId: convID, SenderId: c.Subject, Body: c.Body,
		ClientMessageId: c.ClientMessageID, Metadata: c.Metadata, RequestId: ulid.Make().String(),
		SendTime: timestamppb.Now(), SenderRoles: c.Roles,
	}
}

// SendCases returns the table. Subjects and tenants are distinct per case where it matters, so each
// case can get its own conversation.
func SendCases() []SendCase {
	ok := func(name string) SendCase {
		return SendCase{Name: name, Subject: "alice", Tenant: "t1", Roles: []string{"user"}, Body: "hello", Want: Accepted}
	}
	edit := func(c SendCase, f func(*SendCase)) SendCase { f(&c); return c }
	id128 := strings.Repeat("u", envelope.MaxIDBytes)
	id129 := strings.Repeat("u", envelope.MaxIDBytes+1)
	meta := func(n int) map[string]string {
		m := map[string]string{}
		for i := range n {
			m["k"+string(rune('a'+i%26))+strings.Repeat("x", i/26)] = "v"
		}
		return m
	}
	return []SendCase{
		ok("plain"),
		edit(ok("unicode body and ids"), func(c *SendCase) { c.Subject, c.Tenant, c.Body = "émilie.d", "tenant-ü", "Grüße 👋 @bob" }),
		edit(ok("subject of 128 bytes"), func(c *SendCase) { c.Subject = id128 }),
		edit(ok("tenant of 128 bytes"), func(c *SendCase) { c.Tenant = "t" + id128[1:] }),
		edit(ok("subject with a space"), func(c *SendCase) { c.Subject = "alice smith" }),
		edit(ok("body of exactly the limit"), func(c *SendCase) { c.Body = strings.Repeat("é", envelope.MaxBodyBytes/2) }),
		edit(ok("body with surrounding blanks"), func(c *SendCase) { c.Body = "  \t hi \n" }),
		edit(ok("16 metadata entries"), func(c *SendCase) { c.Metadata = meta(envelope.MaxMetadata) }),
		edit(ok("client message id of 128 bytes"), func(c *SendCase) { c.ClientMessageID = strings.Repeat("c", envelope.MaxClientMessageIDBytes) }),

		edit(ok("subject of 129 bytes"), func(c *SendCase) { c.Subject, c.Want = id129, BadIdentity }),
		edit(ok("tenant of 129 bytes"), func(c *SendCase) { c.Tenant, c.Want = id129, BadIdentity }),
		edit(ok("subject with U+007F"), func(c *SendCase) { c.Subject, c.Want = "ali\u007fce", BadIdentity }),
		edit(ok("subject with a newline"), func(c *SendCase) { c.Subject, c.Want = "ali\nce", BadIdentity }),
		edit(ok("subject with a zero-width space"), func(c *SendCase) { c.Subject, c.Want = "ali\u200bce", BadIdentity }),
		edit(ok("tenant with U+0085"), func(c *SendCase) { c.Tenant, c.Want = "t\u00851", BadIdentity }),
		edit(ok("role of 65 bytes"), func(c *SendCase) {
			c.Roles, c.Want = []string{"user", strings.Repeat("r", envelope.MaxRoleBytes+1)}, BadIdentity
		}),
		edit(ok("17 roles"), func(c *SendCase) {
			c.Want = BadIdentity
			for i := range envelope.MaxRoles + 1 {
				c.Roles = append(c.Roles, "role"+string(rune('a'+i)))
			}
		}),

		edit(ok("blank body"), func(c *SendCase) { c.Body, c.Want = " \t\n", InvalidRequest }),
		edit(ok("body one byte over"), func(c *SendCase) { c.Body, c.Want = strings.Repeat("x", envelope.MaxBodyBytes+1), InvalidRequest }),
		edit(ok("body over the limit once normalised"), func(c *SendCase) {
			c.Body, c.Want = strings.Repeat("\u0958", envelope.MaxBodyBytes/3), InvalidRequest // 3 bytes, 6 in NFC
		}),
		edit(ok("17 metadata entries"), func(c *SendCase) { c.Metadata, c.Want = meta(envelope.MaxMetadata+1), InvalidRequest }),
		edit(ok("metadata key too long"), func(c *SendCase) {
			c.Metadata, c.Want = map[string]string{strings.Repeat("k", envelope.MaxMetadataKey+1): "v"}, InvalidRequest
		}),
		edit(ok("metadata value too long"), func(c *SendCase) {
			c.Metadata, c.Want = map[string]string{"k": strings.Repeat("v", envelope.MaxMetadataValue+1)}, InvalidRequest
		}),
		edit(ok("client message id too long"), func(c *SendCase) {
			c.ClientMessageID, c.Want = strings.Repeat("c", envelope.MaxClientMessageIDBytes+1), InvalidRequest
		}),
	}
}
