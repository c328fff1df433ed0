// Package browser runs tests in a real headless Chromium (Debian's `chromium`), driven over the DevTools
// protocol by chromedp: pages a person would use are tested as a person would use them.
package browser

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Executable returns the path of a Chromium on PATH. Without one the test is skipped with a notice
// (install it with `apt-get install chromium`), except under CI=true, where it fails: .ci/run installs it.
func Executable(tb testing.TB) string {
	tb.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if path, err := exec.LookPath(name); err == nil {
			return path
		}
	}
	if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
		tb.Fatal("browser: CI=true but no chromium on PATH (.ci/run installs Debian's chromium)")
	}
	tb.Skip("NOTICE: no chromium on PATH, so this browser test does not run here (apt-get install chromium)")
	return ""
}

// New starts a headless Chromium with a fresh profile and returns the context of one tab, valid until
// the test ends (or timeout passes: a hung page fails the test rather than hanging it). The browser is
// closed when the test ends.
func New(tb testing.TB, timeout time.Duration) context.Context {
	tb.Helper()
	exe := Executable(tb)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		chromedp.NoSandbox, // tests run as root on CI
		chromedp.DisableGPU,
		chromedp.UserDataDir(tb.TempDir()),
		chromedp.WindowSize(1280, 1600),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	browserCtx, cancelBrowser := chromedp.NewContext(allocCtx)
	// The first Do binds the browser's life to its context: start it without the timeout, then bound the
	// test's actions with a context derived from it.
	if err := chromedp.Do(browserCtx); err != nil {
		cancelBrowser()
		cancelAlloc()
		tb.Fatalf("browser: start %s: %v", exe, err)
	}
	ctx, cancelTimeout := context.WithTimeout(browserCtx, timeout)
	tb.Cleanup(func() {
		cancelTimeout()
		cancelBrowser()
		cancelAlloc()
	})
	return ctx
}

// ArtifactDir returns a directory outside the repository for what a test leaves to be looked at
// (screenshots): $TEST_ARTIFACTS_DIR, or platform-test-artifacts under the system's temporary directory.
func ArtifactDir(tb testing.TB) string {
	tb.Helper()
	dir := os.Getenv("TEST_ARTIFACTS_DIR")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "platform-test-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatalf("browser: %v", err)
	}
	return dir
}
