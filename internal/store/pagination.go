package store

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"hash/fnv"
	"strconv"
	"strings"
)

// Page sizes of every list: the API's contract (default 50, at most 200).
const (
	DefaultPageSize = 50
	MaxPageSize     = 200
)

// MaxPageBytes bounds the content of one page (bodies, metadata, payloads, ids): a page ends early, with
// a next-page token, rather than exceed it, so the largest legal page (200 messages of 16 KiB bodies and
// full metadata would be 5 MB) stays well inside gRPC's default 4 MiB message limit on every client.
const MaxPageBytes = 2 << 20

// pageFit returns how many of the first n items fit one page: at most MaxPageBytes of content by size(i),
// and always at least one (a single item is bounded by the limits of what can be stored).
func pageFit(n int, size func(i int) int) int {
	total := 0
	for i := range n {
		total += size(i)
		if total > MaxPageBytes && i > 0 {
			return i
		}
	}
	return n
}

// PageSize returns the number of items a list returns for a requested page size: 0 (and, defensively,
// a negative value, which the API layer rejects as INVALID_ARGUMENT before it gets here) means
// DefaultPageSize; more than MaxPageSize is clamped to MaxPageSize.
func PageSize(requested int) int {
	switch {
	case requested <= 0:
		return DefaultPageSize
	case requested > MaxPageSize:
		return MaxPageSize
	default:
		return requested
	}
}

// ErrBadPageToken: the page token is not one this store issued, or it was issued for another list
// (another kind, tenant, conversation, user or filter). The API maps it to INVALID_ARGUMENT.
var ErrBadPageToken = errors.New("invalid page token")

// pageToken is the content of an opaque page token: keyset pagination, so it holds the sort key of the
// last item returned (never an offset), plus a fingerprint of the query it belongs to.
type pageToken struct {
	Kind  string `json:"k"` // which list: "c" conversations, "u" members, "m" messages
	Scope string `json:"s"` // fingerprint of the list's parameters
	After string `json:"a"` // sort key of the last item of the previous page
}

// Token kinds.
const (
	tokenConversations = "c"
	tokenMembers       = "u"
	tokenMessages      = "m"
)

// tokenScope fingerprints the parameters a token is bound to, so a token is refused with another tenant,
// conversation, user or filter instead of silently paging through something else.
func tokenScope(parts ...string) string {
	h := fnv.New64a()
	for _, p := range parts {
		_, _ = h.Write([]byte(p))
		_, _ = h.Write([]byte{0})
	}
	return strconv.FormatUint(h.Sum64(), 36)
}

// encodePageToken returns base64url (no padding) of the token's JSON.
func encodePageToken(kind, scope, after string) string {
	b, _ := json.Marshal(pageToken{Kind: kind, Scope: scope, After: after}) // cannot fail: strings only
	return base64.RawURLEncoding.EncodeToString(b)
}

// decodePageToken returns the key to continue after; "" for an empty token (the first page).
func decodePageToken(token, kind, scope string) (string, error) {
	if token == "" {
		return "", nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(token, "="))
	if err != nil {
		return "", ErrBadPageToken
	}
	var pt pageToken
	if err := json.Unmarshal(raw, &pt); err != nil {
		return "", ErrBadPageToken
	}
	if pt.Kind != kind || pt.Scope != scope || pt.After == "" {
		return "", ErrBadPageToken
	}
	return pt.After, nil
}
