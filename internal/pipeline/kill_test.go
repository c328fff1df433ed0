package pipeline

import (
	"bufio"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/msgplatform/platform/internal/testenv"
)

// TestKillWithBatchesInFlight runs the production pipeline binary, SIGKILLs it while at least two polled
// batches are in hand (platform_pipeline_polls_in_flight), starts it again, and checks that every message
// is stored exactly once, in send order per conversation, with every event published.
func TestKillWithBatchesInFlight(t *testing.T) {
	e := newEnv(t)
	w := e.workload("t1", 12, 3)
	const n = 10000
	e.produce(w.next(n)...)
	bin := testenv.Binary(t, "services/pipeline")

	first, url := e.startBinary(t, bin, 200) // small polls, so several are in hand at once
	killWithBatchesInFlight(t, first, url, n)

	second, _ := e.startBinary(t, bin, 200)
	e.waitStored(n)
	if err := second.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := second.Wait(); err != nil {
		t.Fatalf("graceful stop after the restart: %v", err)
	}
	e.checkStored(w)
	e.checkEvents(w, false)
	if got := e.dlqCount(); got != 0 {
		t.Fatalf("%d dead letters, want 0", got)
	}
}

// startBinary runs the pipeline binary at bin on the test's Kafka, store and Redis, polling at most
// pollRecords at a time, and returns it and its /metrics URL; it is killed when the test ends. A killed
// member is dropped (and its partitions reassigned) after 6 s, not 45.
func (e *env) startBinary(t *testing.T, bin string, pollRecords int) (*exec.Cmd, string) {
	t.Helper()
	metrics := testenv.FreeAddr(t)
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(),
		"KAFKA_BROKERS="+strings.Join(e.cfg.KafkaBrokers, ","), "MONGO_URI="+e.cfg.MongoURI, "MONGO_DATABASE="+e.cfg.MongoDatabase,
		"REDIS_URL="+e.cfg.RedisURL, "KAFKA_SIGNING_KEYS="+testSigningKID+"="+testSigningSecret,
		"HTTP_ADDR="+testenv.FreeAddr(t), "METRICS_ADDR="+metrics, "LOG_LEVEL=warn", "SHUTDOWN_DRAIN_DELAY=0s",
		"PIPELINE_MAX_POLL_RECORDS="+strconv.Itoa(pollRecords), "WATCHERS_ENABLED=false", "KAFKA_SESSION_TIMEOUT=6s")
	cmd.Stdout, cmd.Stderr = testWriter{t}, testWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd, "http://" + metrics + "/metrics"
}

// killWithBatchesInFlight SIGKILLs cmd once at least two polled batches are in hand
// (platform_pipeline_polls_in_flight) and some messages stored, and fails the test if all n were stored
// before the kill (it would prove nothing).
func killWithBatchesInFlight(t *testing.T, cmd *exec.Cmd, metricsURL string, n int) {
	t.Helper()
	var inFlight, stored float64
	testenv.Eventually(t, "two batches in flight, some stored", time.Minute, func() bool {
		m := scrapeMetrics(metricsURL)
		inFlight, stored = m["platform_pipeline_polls_in_flight"], m["platform_pipeline_messages_total"]
		return inFlight >= 2 && stored > 0
	})
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	t.Logf("killed with %.0f batches in flight, %.0f of %d messages stored", inFlight, stored, n)
	if stored >= float64(n) {
		t.Fatal("everything was stored before the kill; the test proves nothing")
	}
}

// scrapeMetrics returns the sum of each metric's samples on a /metrics page (nil on error).
func scrapeMetrics(url string) map[string]float64 {
	resp, err := http.Get(url)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if i := strings.IndexByte(name, '{'); i >= 0 {
			name = name[:i]
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(value), 64); err == nil {
			out[name] += v
		}
	}
	return out
}

// testWriter sends a child process's output to the test log (shown when the test fails or runs -v).
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
