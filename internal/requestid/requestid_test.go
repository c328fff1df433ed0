package requestid

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/metadata"
)

func TestFromMetadata(t *testing.T) {
	tests := []struct {
		name   string
		sent   []string
		keep   bool
		wanted string
	}{
		{"caller's id kept", []string{"abc-123"}, true, "abc-123"},
		{"first valid of several", []string{"bad id", "ok-1"}, true, "ok-1"},
		{"none sent", nil, false, ""},
		{"spaces replaced", []string{"has space"}, false, ""},
		{"newline (log injection) replaced", []string{"a\nlevel=ERROR"}, false, ""},
		{"too long replaced", []string{strings.Repeat("x", maxLen+1)}, false, ""},
		{"non-ASCII replaced", []string{"idé"}, false, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			md := metadata.MD{}
			for _, v := range tc.sent {
				md.Append(Header, v)
			}
			got := fromMetadata(metadata.NewIncomingContext(context.Background(), md))
			if tc.keep && got != tc.wanted {
				t.Errorf("got %q, want %q", got, tc.wanted)
			}
			if !tc.keep && (len(got) != 26 || !valid(got)) {
				t.Errorf("got %q, want a fresh ULID", got)
			}
		})
	}
}

func TestContextRoundTrip(t *testing.T) {
	if From(context.Background()) != "" {
		t.Error("empty context has an id")
	}
	if got := From(With(context.Background(), "r1")); got != "r1" {
		t.Errorf("From(With(r1)) = %q", got)
	}
	if a, b := New(), New(); a == b {
		t.Error("New returned the same id twice")
	}
}
