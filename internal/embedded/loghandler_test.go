package embedded

import (
	"bytes"
	"log/slog"
	"testing"
)

// TestMinLevelHandler checks that records below the level are dropped and that attributes and groups
// recorded lazily come out as an eager handler would write them.
func TestMinLevelHandler(t *testing.T) {
	var buf bytes.Buffer
	inner := slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug, ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}})
	l := slog.New(minLevelHandler{Handler: inner, min: slog.LevelError}).With("sql", "INSERT …").WithGroup("g").With("n", 3)
	l.Warn("dropped", "k", "v")
	if buf.Len() != 0 {
		t.Fatalf("a warning passed an error-level handler: %q", buf.String())
	}
	l.Error("kept", "k", "v")
	if got, want := buf.String(), "level=ERROR msg=kept sql=\"INSERT …\" g.n=3 g.k=v\n"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}
