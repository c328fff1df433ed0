package app_test

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/msgplatform/platform/"

// importRules are the directions dependencies may take. Each rule names packages (a path, or a path
// ending in "/..." for a tree) that must not import the packages it lists. Dependencies point down:
// mains → app → gateway, handlers and pipeline stages → authz, dlq → store, auth, kafka, envelope.
var importRules = []struct {
	why       string
	packages  []string
	forbidden []string
}{
	{
		why:      "the store knows no policy: it is the bottom of the data path, and imports none of the policy, formats or wiring above it",
		packages: []string{"internal/store/..."},
		forbidden: []string{"gen/...", "internal/api", "internal/authz", "internal/auth", "internal/events", "internal/protoconv",
			"internal/pipeline", "internal/dlq", "internal/watchers", "internal/gateway", "internal/envelope", "internal/app/...",
			"internal/config", "internal/stream", "internal/health"},
	},
	{
		why:       "libraries receive their dependencies: only the composition root (app), the devstack, tools and tests read the configuration or wire processes",
		packages:  libraries,
		forbidden: []string{"internal/config", "internal/app/...", "internal/devstack", "internal/testenv/...", "internal/benchmark/...", "internal/loadgen"},
	},
	{
		why:       "the record formats are a leaf: envelope encodes, checks and signs, it decides nothing",
		packages:  []string{"internal/envelope", "internal/kafka", "internal/secret", "internal/tracing"},
		forbidden: []string{"internal/auth", "internal/authz", "internal/store/...", "internal/api", "internal/pipeline", "internal/dlq", "internal/events", "internal/stream"},
	},
	{
		why:       "the edge and the consumers are parallel layers: the gateway serves whatever handlers it is given, and handlers, stages and the DLQ do not reach into each other's processes",
		packages:  []string{"internal/gateway"},
		forbidden: []string{"internal/api", "internal/pipeline", "internal/dlq", "internal/watchers", "internal/stream", "internal/store/..."},
	},
	{
		why:       "the ingest pipeline is a library of its own: it does not depend on the API's handlers, the gateway, the DLQ's processes or the watchers",
		packages:  []string{"internal/pipeline"},
		forbidden: []string{"internal/api", "internal/gateway", "internal/dlq", "internal/watchers", "internal/stream"},
	},
	{
		why:       "authorization decides, it does not reach back into the call chain (logging, request ids) or the formats",
		packages:  []string{"internal/authz", "internal/auth"},
		forbidden: []string{"internal/requestid", "internal/gateway", "internal/api", "internal/pipeline", "internal/events"},
	},
}

// libraries are the packages that do one job each and are wired by app: everything but the composition
// root, the devstack, the tools (loadgen, benchmarks) and the test helpers.
var libraries = []string{"internal/api", "internal/apidocs", "internal/audit", "internal/auth", "internal/authz", "internal/dlq", "internal/envelope", "internal/events",
	"internal/gateway", "internal/health", "internal/kafka", "internal/lifecycle", "internal/observability", "internal/pipeline",
	"internal/protoconv", "internal/requestid", "internal/secret", "internal/store/...", "internal/stream", "internal/ttlcache",
	"internal/watchers", "internal/embedded", "internal/tracing"}

// mayImportApp are the only packages allowed to import the composition root.
var mayImportApp = []string{"services/...", "internal/devstack", "internal/app/apptest", "internal/benchmark/..."}

func matches(pattern, pkg string) bool {
	if tree, ok := strings.CutSuffix(pattern, "/..."); ok {
		return pkg == tree || strings.HasPrefix(pkg, tree+"/")
	}
	return pkg == pattern
}

func matchesAny(patterns []string, pkg string) bool {
	return slices.ContainsFunc(patterns, func(p string) bool { return matches(p, pkg) })
}

// TestImportDirection checks every direct import of the module's packages against importRules.
func TestImportDirection(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}}:{{join .Imports \",\"}}", module+"...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	checked := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, imports, _ := strings.Cut(line, ":")
		pkg = strings.TrimPrefix(pkg, module)
		for _, imp := range strings.Split(imports, ",") {
			dep, ours := strings.CutPrefix(imp, module)
			if !ours {
				continue
			}
			checked++
			if matches("internal/app", dep) && !matchesAny(mayImportApp, pkg) && !matches("internal/app/...", pkg) {
				t.Errorf("%s imports %s: only %v may import the composition root", pkg, dep, mayImportApp)
			}
			for _, r := range importRules {
				if matchesAny(r.packages, pkg) && matchesAny(r.forbidden, dep) {
					t.Errorf("%s imports %s: %s", pkg, dep, r.why)
				}
			}
		}
	}
	if checked < 50 {
		t.Fatalf("only %d imports checked: go list output not understood", checked)
	}
}
