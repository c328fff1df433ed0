package scaleout_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/testenv"
)

// proc is one production binary the test runs.
type proc struct {
	name    string
	cmd     *exec.Cmd
	grpc    string // empty for a pipeline
	http    string
	metrics string
	logs    *testenv.LockedBuffer
	exited  chan struct{}
}

// startProc runs bin with the environment env (on top of the test's own) and its listeners on free
// loopback ports; t.Cleanup kills it and, when the test failed, logs the tail of its output.
func startProc(t *testing.T, bin, name string, gateway bool, env ...string) *proc {
	t.Helper()
	p := &proc{name: name, http: testenv.FreeAddr(t), metrics: testenv.FreeAddr(t), logs: &testenv.LockedBuffer{}, exited: make(chan struct{})}
	env = append(env, "HTTP_ADDR="+p.http, "METRICS_ADDR="+p.metrics)
	if gateway {
		p.grpc = testenv.FreeAddr(t)
		env = append(env, "GRPC_ADDR="+p.grpc)
	}
	p.cmd = exec.Command(bin)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			var kept []string
			for _, line := range strings.Split(p.logs.String(), "\n") {
				if !strings.Contains(line, `"msg":"audit"`) {
					kept = append(kept, line)
				}
			}
			out := strings.Join(kept, "\n")
			if len(out) > 16<<10 {
				out = "…" + out[len(out)-16<<10:]
			}
			t.Logf("%s output:\n%s", name, out)
		}
	})
	return p
}

// startServers runs `devstack -servers kafka,mongodb` (a built binary: one kfake and one FerretDB in a
// process of their own, not slowed down by the race detector of the test binary, which would otherwise
// starve the replicas on a two-core machine) and returns the broker address and MongoDB URI it prints.
func startServers(t *testing.T) (broker, mongoURI string) {
	t.Helper()
	cmd := exec.Command(testenv.Binary(t, "services/devstack"), "-servers", "kafka,mongodb")
	cmd.Env = append(os.Environ(), "DEVSTACK_KAFKA_ADDR=127.0.0.1:0", "DEVSTACK_MONGO_ADDR=127.0.0.1:0",
		"DEVSTACK_DATA_DIR="+t.TempDir(), "LOG_LEVEL=warn")
	logs := &testenv.LockedBuffer{}
	cmd.Stderr = logs
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("devstack -servers output:\n%s", logs.String())
		}
	})
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			line <- sc.Text()
		}
		close(line)
		for sc.Scan() { // keep draining
		}
	}()
	var addrs struct {
		Kafka string `json:"kafka"`
		Mongo string `json:"mongodb"`
	}
	select {
	case l := <-line:
		if err := json.Unmarshal([]byte(l), &addrs); err != nil || addrs.Kafka == "" || addrs.Mongo == "" {
			t.Fatalf("devstack -servers printed %q (%v); logs:\n%s", l, err, logs.String())
		}
	case <-time.After(time.Minute):
		t.Fatalf("devstack -servers did not print its addresses within a minute; logs:\n%s", logs.String())
	}
	return addrs.Kafka, addrs.Mongo
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill %s: %v", p.name, err)
	}
	<-p.exited
}

// ready reports whether the process answers /readyz with 200.
func (p *proc) ready() bool {
	resp, err := http.Get("http://" + p.http + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func (p *proc) scrape() samples { return scrape("http://" + p.metrics + "/metrics") }

// samples are the series of one /metrics page: "name{labels}" (or "name") → value.
type samples map[string]float64

// scrape reads a /metrics page (nil on error).
func scrape(url string) samples {
	resp, err := http.Get(url)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	out := samples{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// sum adds every series of the metric name whose labels contain all of match (`result="local_hit"`).
func (s samples) sum(name string, match ...string) float64 {
	var total float64
	for series, v := range s {
		n, labels, _ := strings.Cut(series, "{")
		if n != name {
			continue
		}
		ok := true
		for _, m := range match {
			ok = ok && strings.Contains(labels, m)
		}
		if ok {
			total += v
		}
	}
	return total
}

// byLabel returns the values of the metric name by the value of its label.
func (s samples) byLabel(name, label string) map[string]float64 {
	re := regexp.MustCompile(regexp.QuoteMeta(label) + `="([^"]*)"`)
	out := map[string]float64{}
	for series, v := range s {
		n, labels, _ := strings.Cut(series, "{")
		if n != name {
			continue
		}
		if m := re.FindStringSubmatch(labels); m != nil {
			out[m[1]] += v
		}
	}
	return out
}

func token(t *testing.T, sub, tenant string, roles ...string) string {
	t.Helper()
	tok, err := auth.MintHS256([]byte(testenv.TestHMACSecret), auth.Principal{Subject: sub, TenantID: tenant, Roles: roles}, 2*time.Hour, "", "")
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// as calls with tok within ctx.
func as(ctx context.Context, tok string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
}

// envInt reads a positive integer from the environment, or def.
func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}
