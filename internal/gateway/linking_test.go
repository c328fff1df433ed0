package gateway

import (
	"os/exec"
	"strings"
	"testing"
)

// TestProductionBinariesLinkNoEmbeddedServers keeps FerretDB, kfake and miniredis (and the packages that
// wrap them) out of the gateway, pipeline and load generator binaries: they are for the devstack and tests only.
func TestProductionBinariesLinkNoEmbeddedServers(t *testing.T) {
	forbidden := []string{
		"github.com/FerretDB/FerretDB",
		"github.com/twmb/franz-go/pkg/kfake",
		"github.com/alicebob/miniredis",
		"github.com/msgplatform/platform/internal/embedded",
		"github.com/msgplatform/platform/internal/testenv",
		"github.com/msgplatform/platform/internal/devstack",
		"github.com/msgplatform/platform/internal/benchmark",
	}
	for _, main := range []string{"../../services/gateway", "../../services/pipeline", "../../services/loadgen"} {
		out, err := exec.Command("go", "list", "-deps", main).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", main, err, out)
		}
		for _, pkg := range strings.Fields(string(out)) {
			for _, f := range forbidden {
				if strings.HasPrefix(pkg, f) {
					t.Errorf("%s links %s", main, pkg)
				}
			}
		}
	}
}
