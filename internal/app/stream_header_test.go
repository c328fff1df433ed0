package app_test

import (
	"testing"

	"github.com/msgplatform/platform/internal/api"
	"github.com/msgplatform/platform/internal/gateway"
)

// StreamMessages announces its start with a header the REST gateway waits for; the two packages may not
// import each other, so each names it, and they must agree.
func TestStreamStartedHeaderAgrees(t *testing.T) {
	if api.StreamStartedHeader != gateway.StreamStartedHeader {
		t.Fatalf("api.StreamStartedHeader %q != gateway.StreamStartedHeader %q", api.StreamStartedHeader, gateway.StreamStartedHeader)
	}
}
