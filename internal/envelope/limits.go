package envelope

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// Limits of a message and of the ids around it. One definition: the API enforces them on requests and
// tokens, the pipeline on records.
const (
	// MaxIDBytes bounds every id: tenant, conversation, user (token sub), message, request.
	MaxIDBytes = 128
	// MaxBodyBytes bounds a body, as sent and after normalisation (NFC can expand some scripts).
	MaxBodyBytes = 16 << 10
	// MaxMetadata entries of at most MaxMetadataKey and MaxMetadataValue bytes.
	MaxMetadata      = 16
	MaxMetadataKey   = 64
	MaxMetadataValue = 512
	// MaxClientMessageIDBytes bounds a client_message_id (the sender's idempotency key).
	MaxClientMessageIDBytes = 128
	// MaxRoles platform roles of at most MaxRoleBytes each (token roles claim, envelope sender_roles).
	MaxRoles     = 16
	MaxRoleBytes = 64
	// MaxRequestBytes bounds a request to the API, protobuf over gRPC or JSON over REST, enforced while it
	// is read: a little above the largest legal one, a SendMessage with the largest body and metadata
	// whose every character JSON escapes to six bytes (\u0001), about 150 KiB.
	MaxRequestBytes = 256 << 10
)

// ErrInvalidID is wrapped by CheckID's errors.
var ErrInvalidID = errors.New("invalid id")

// CheckID returns nil when v is a usable id: 1 to MaxIDBytes bytes of valid UTF-8, every character
// printable (letters, marks, numbers, punctuation, symbols and the ASCII space) and visible: no control,
// format or default-ignorable character (variation selectors, the combining grapheme joiner, Hangul
// fillers…), which would let two different ids look the same in a log or a UI. The error says which
// rule failed, never repeating v.
func CheckID(v string) error {
	switch {
	case v == "":
		return fmt.Errorf("%w: must not be empty", ErrInvalidID)
	case len(v) > MaxIDBytes:
		return fmt.Errorf("%w: at most %d bytes (got %d)", ErrInvalidID, MaxIDBytes, len(v))
	case printableASCII(v):
		return nil // the usual id, checked without decoding runes
	case !utf8.ValidString(v):
		return fmt.Errorf("%w: must be UTF-8", ErrInvalidID)
	case strings.IndexFunc(v, invisible) >= 0:
		return fmt.Errorf("%w: must be printable (no control or invisible characters)", ErrInvalidID)
	}
	return nil
}

// printableASCII reports whether v is only printable ASCII (space to tilde).
func printableASCII(v string) bool {
	for i := 0; i < len(v); i++ {
		if v[i] < 0x20 || v[i] > 0x7e {
			return false
		}
	}
	return true
}

// invisible reports a character that is not printable, or prints as nothing: the Unicode
// default-ignorable code points outside the format category (which IsPrint already excludes).
func invisible(r rune) bool {
	return !unicode.IsPrint(r) || unicode.Is(unicode.Variation_Selector, r) || unicode.Is(unicode.Other_Default_Ignorable_Code_Point, r)
}

// NormalizeBody is the body as stored: Unicode NFC (so "é" typed as e + U+0301 and as U+00E9 are the
// same text), surrounding white space trimmed.
func NormalizeBody(body string) string { return strings.TrimSpace(norm.NFC.String(body)) }

// CheckBody returns nil when body is acceptable: valid UTF-8, at most MaxBodyBytes as sent and once
// normalised, and not empty once normalised.
func CheckBody(body string) error {
	switch {
	case len(body) > MaxBodyBytes:
		return fmt.Errorf("at most %d bytes (got %d)", MaxBodyBytes, len(body))
	case !utf8.ValidString(body):
		return errors.New("must be UTF-8")
	}
	switch n := NormalizeBody(body); {
	case n == "":
		return errors.New("must not be empty")
	case len(n) > MaxBodyBytes:
		return fmt.Errorf("at most %d bytes once normalised to NFC (got %d)", MaxBodyBytes, len(n))
	}
	return nil
}

// CheckRoles returns nil when roles is an acceptable list of platform roles: at most MaxRoles, each
// 1 to MaxRoleBytes bytes of printable UTF-8.
func CheckRoles(roles []string) error {
	if len(roles) > MaxRoles {
		return fmt.Errorf("at most %d roles (got %d)", MaxRoles, len(roles))
	}
	for _, r := range roles {
		if len(r) > MaxRoleBytes {
			return fmt.Errorf("each role is at most %d bytes", MaxRoleBytes)
		}
		if err := CheckID(r); err != nil {
			return fmt.Errorf("each role: %w", err)
		}
	}
	return nil
}

// Clip makes s valid UTF-8 (invalid bytes become U+FFFD) and shortens it to at most n bytes without
// splitting a character, appending "…" when it cut. For untrusted text in headers, logs and errors.
func Clip(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
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
	return s
}
