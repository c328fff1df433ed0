package testenv

import (
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/config"
)

// TestHMACSecret is the AUTH_HMAC_SECRET of Config: tests mint tokens with it.
const TestHMACSecret = "platform-test-hmac-secret-0123456789abcdef"

// Config returns the platform's configuration as a test runs it, loaded through config.Load (so it is
// validated exactly as in production): every listener on a free loopback port, the test signing keys and
// HMAC secret, no drain delay, short timeouts and health interval, no quotas. vars add or override variables
// (KAFKA_BROKERS, MONGO_URI, REDIS_URL in particular; an empty value restores the default).
func Config(tb testing.TB, vars map[string]string) config.Config {
	tb.Helper()
	env := map[string]string{
		"GRPC_ADDR": "127.0.0.1:0", "HTTP_ADDR": "127.0.0.1:0", "METRICS_ADDR": "127.0.0.1:0",
		"DEVSTACK_KAFKA_ADDR": "127.0.0.1:0", "DEVSTACK_MONGO_ADDR": "127.0.0.1:0", "DEVSTACK_REDIS_ADDR": "127.0.0.1:0",
		"KAFKA_SIGNING_KEYS": SigningKeysSpec, "AUTH_HMAC_SECRET": TestHMACSecret,
		"SHUTDOWN_DRAIN_DELAY": "0s", "SHUTDOWN_TIMEOUT": "5s", "KAFKA_PRODUCE_TIMEOUT": "5s",
		"HEALTH_CHECK_INTERVAL": "1s",
		// No quotas: tests call as fast as they can; the quota tests set their own.
		"RATE_LIMIT_PRINCIPAL_RPS": "0", "RATE_LIMIT_TENANT_RPS": "0",
	}
	maps.Copy(env, vars)
	cfg, err := config.Load(func(k string) string { return env[k] })
	if err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	return cfg
}

// Eventually polls cond every 10 ms until it holds, failing the test after limit (0: 30 s). The limit only
// bounds a hang; it asserts nothing about time.
func Eventually(tb testing.TB, what string, limit time.Duration, cond func() bool) {
	tb.Helper()
	if limit <= 0 {
		limit = 30 * time.Second
	}
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("still waiting for %s after %v", what, limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var (
	buildMu  sync.Mutex
	builtDir string
	built    = map[string]string{}
)

// Binary builds the main package at pkg (a path relative to the module root, e.g. "services/pipeline")
// once per test binary and returns the executable's path: tests that run what users run (a process, a
// SIGKILL) use it.
func Binary(tb testing.TB, pkg string) string {
	tb.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if path, ok := built[pkg]; ok {
		return path
	}
	if builtDir == "" {
		removeStaleBinDirs()
		dir, err := os.MkdirTemp("", "platform-bin-")
		if err != nil {
			tb.Fatalf("testenv: %v", err)
		}
		builtDir = dir
	}
	root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		tb.Fatalf("testenv: find the module root: %v", err)
	}
	path := filepath.Join(builtDir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", path, "./"+pkg)
	cmd.Dir = strings.TrimSpace(string(root))
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("testenv: go build %s: %v\n%s", pkg, err, out)
	}
	built[pkg] = path
	return path
}

// removeStaleBinDirs removes the binaries earlier test runs left behind (a test binary has no hook to
// remove its own at exit); an hour is far longer than any test binary runs.
func removeStaleBinDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "platform-bin-*"))
	for _, d := range dirs {
		if fi, err := os.Stat(d); err == nil && time.Since(fi.ModTime()) > time.Hour {
			_ = os.RemoveAll(d)
		}
	}
}

// Token mints an hour-long bearer token for sub of tenant with roles ("user" when none), signed with
// TestHMACSecret: what a process started from Config accepts.
func Token(tb testing.TB, sub, tenant string, roles ...string) string {
	tb.Helper()
	if len(roles) == 0 {
		roles = []string{"user"}
	}
	tok, err := auth.MintHS256([]byte(TestHMACSecret), auth.Principal{Subject: sub, TenantID: tenant, Roles: roles}, time.Hour, "", "")
	if err != nil {
		tb.Fatalf("testenv: mint a token: %v", err)
	}
	return tok
}

// Clock is a settable time source for code that takes a clock (a func() time.Time): tests move it on
// instead of sleeping. Safe for concurrent use.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a Clock reading t.
func NewClock(t time.Time) *Clock { return &Clock{now: t} }

// Now is the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock on by d and returns the new time.
func (c *Clock) Advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	return c.now
}
