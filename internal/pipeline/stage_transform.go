package pipeline

import (
	"context"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/store"
)

// Mention limits.
const (
	MaxMentions     = 50 // further mentions in a body are ignored
	MaxMentionBytes = 64 // a longer run after "@" is not a mention
)

// transformStage normalises the body and enriches the message, building what persist stores:
//   - the body is normalised (envelope.NormalizeBody: Unicode NFC, surrounding white space trimmed); the
//     validate stage already checked that the result is neither empty nor too long;
//   - @mentions are extracted into mentions (see Mentions for the syntax).
type transformStage struct{}

func (transformStage) Name() string { return StageTransform }

func (transformStage) Process(_ context.Context, b *Batch) {
	for _, it := range b.Items {
		in := it.Inbound
		body := envelope.NormalizeBody(in.GetBody())
		m := store.Message{
			ID:              in.GetId(),
			TenantID:        in.GetTenantId(),
			ConversationID:  in.GetConversationId(),
			SenderID:        in.GetSenderId(),
			Body:            body,
			ClientMessageID: in.GetClientMessageId(),
			Metadata:        in.GetMetadata(),
			Mentions:        Mentions(body),
			State:           store.MessagePersisted,
			RequestID:       in.GetRequestId(),
			ThreadID:        in.GetThreadId(),
		}
		if ts := in.GetSendTime(); ts != nil {
			m.CreateTime = ts.AsTime()
		}
		it.Message = m
	}
}

// Mentions returns the user ids mentioned in body, in order of first appearance, without duplicates, at
// most MaxMentions. The syntax:
//
//   - a mention is "@" followed by an id of 1 to MaxMentionBytes bytes made of Unicode letters and digits,
//     "_", "-" and "."; a longer run is not a mention;
//   - the "@" starts the body or follows a character that is none of those nor "@", so e-mail addresses
//     ("bob@example.com") and "@@x" are not mentions;
//   - trailing "." and "-" are not part of the id ("thanks @bob." mentions "bob");
//   - ids are case-sensitive and kept as written; no markup (code spans, quotes) is recognised, and
//     whether the id is a member of the conversation is not checked.
func Mentions(body string) []string {
	var out []string
	seen := map[string]bool{}
	prev := rune(-1) // the rune before position i; -1 at the start
	for i := 0; i < len(body) && len(out) < MaxMentions; {
		r, size := utf8.DecodeRuneInString(body[i:])
		if r != '@' || (prev != -1 && (idRune(prev) || prev == '@')) {
			prev = r
			i += size
			continue
		}
		start := i + size
		end := start
		for end < len(body) {
			c, n := utf8.DecodeRuneInString(body[end:])
			if !idRune(c) {
				break
			}
			end += n
		}
		if id := strings.TrimRight(body[start:end], ".-"); id != "" && end-start <= MaxMentionBytes && !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
		prev, _ = utf8.DecodeLastRuneInString(body[:end]) // '@' itself when no id follows
		i = end
	}
	return out
}

func idRune(r rune) bool {
	return unicode.IsLetter(r) || unicode.IsDigit(r) || r == '_' || r == '-' || r == '.'
}
