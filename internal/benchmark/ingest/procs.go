package ingest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/msgplatform/platform/internal/config"
	"github.com/msgplatform/platform/internal/devstack"
)

// Binaries are the executables a measurement runs, built from this module.
type Binaries struct{ Dir string }

// PipelineBinEnv names another pipeline binary to measure in place of this tree's build: an older
// commit's, for a before/after measured side by side against the same ceiling (docs/benchmarks.md).
const PipelineBinEnv = "INGEST_PIPELINE_BIN"

// Pipeline is services/pipeline, the production binary (or $INGEST_PIPELINE_BIN).
func (b Binaries) Pipeline() string {
	if bin := os.Getenv(PipelineBinEnv); bin != "" {
		return bin
	}
	return filepath.Join(b.Dir, "pipeline")
}

// Devstack is services/devstack (its -servers mode runs kfake and FerretDB).
func (b Binaries) Devstack() string { return filepath.Join(b.Dir, "devstack") }

// Storebench is internal/benchmark/cmd/storebench, the ceiling and the bare consumers.
func (b Binaries) Storebench() string { return filepath.Join(b.Dir, "storebench") }

// BuildBinaries builds the pipeline, the devstack and storebench into dir with
// `go build -o dir ./services/pipeline ./services/devstack ./internal/benchmark/cmd/storebench`, run at
// the root of the module this package belongs to.
func BuildBinaries(ctx context.Context, dir string) (Binaries, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return Binaries{}, fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return Binaries{}, errors.New("build the benchmark's binaries: not inside the module")
	}
	build := exec.CommandContext(ctx, "go", "build", "-o", dir+string(filepath.Separator),
		"./services/pipeline", "./services/devstack", "./internal/benchmark/cmd/storebench")
	build.Dir = filepath.Dir(gomod)
	if out, err := build.CombinedOutput(); err != nil {
		return Binaries{}, fmt.Errorf("build the benchmark's binaries: %w\n%s", err, out)
	}
	return Binaries{Dir: dir}, nil
}

// baseEnv is this process's environment without any variable of the platform's configuration, so the
// user's KAFKA_BROKERS, PIPELINE_* or DEVSTACK_* cannot change what is measured; each process gets its
// own on top.
func baseEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if !config.Known(name) {
			env = append(env, kv)
		}
	}
	return env
}

// proc is a child process of the measurement.
type proc struct {
	name    string
	cmd     *exec.Cmd
	output  *tail // stderr, and stdout unless the caller reads it
	started time.Time
	done    chan struct{} // closed once it exited; then err is Wait's
	err     error
}

// startProc starts bin with args and env. stdout, when not nil, receives the child's stdout instead of
// the output tail.
func startProc(name, bin string, args, env []string, stdout io.Writer) (*proc, error) {
	p := &proc{name: name, output: &tail{max: 16 << 10}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = env
	p.cmd.Stderr = p.output
	p.cmd.Stdout = p.output
	if stdout != nil {
		p.cmd.Stdout = stdout
	}
	killWithParent(p.cmd)
	p.started = time.Now()
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits up to limit for the process to exit, and fails unless it exited 0.
func (p *proc) wait(limit time.Duration) error {
	select {
	case <-p.done:
	case <-time.After(limit):
		p.kill()
		return fmt.Errorf("%s still running after %v; killed%s", p.name, limit, p.output.suffix())
	}
	if p.err != nil {
		return fmt.Errorf("%s: %w%s", p.name, p.err, p.output.suffix())
	}
	return nil
}

// stop sends SIGTERM and waits up to a minute for a clean exit (status 0).
func (p *proc) stop() error {
	if !p.exited() {
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("stop %s: %w", p.name, err)
		}
	}
	if err := p.wait(time.Minute); err != nil {
		return fmt.Errorf("after SIGTERM: %w", err)
	}
	return nil
}

// kill kills the process if it still runs and waits for it (failure paths).
func (p *proc) kill() {
	if !p.exited() {
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// cpuSeconds is the process's user+system time so far, read from /proc/<pid>/stat (utime and stime, in
// clock ticks of 1/100 s).
func (p *proc) cpuSeconds() (float64, error) {
	return procCPUSeconds(p.cmd.Process.Pid)
}

// procCPUSeconds reads utime+stime of pid from /proc/<pid>/stat, divided by 100 ticks per second.
func procCPUSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read the CPU time of process %d: %w", pid, err)
	}
	// The command name (field 2) is in parentheses and may hold spaces: count fields after its ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name in %q", pid, b)
	}
	f := strings.Fields(string(b[i+1:])) // f[0] is field 3 (state): utime is field 14, stime 15
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields after the command name", pid, len(f))
	}
	var ticks float64
	for _, s := range f[11:13] {
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		ticks += v
	}
	return ticks / 100, nil
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// suffix is the output for an error message ("" when none).
func (t *tail) suffix() string {
	if s := strings.TrimSpace(t.String()); s != "" {
		return "; its output ends with:\n" + s
	}
	return ""
}

// serversProc is a `devstack -servers` process and the addresses it announced.
type serversProc struct {
	*proc
	addrs devstack.ServerAddresses
}

// startServers runs `devstack -servers which` with DEVSTACK_<which>_ADDR on a free port (freeAddr) and
// DEVSTACK_DATA_DIR=dataDir, and waits for the JSON line of its addresses. A port taken between
// freeAddr and the bind makes it exit: it is then tried again on another port, three times at most.
func startServers(bins Binaries, which, dataDir string, freeAddr func() string) (*serversProc, error) {
	addrVar := map[string]string{devstack.ServerKafka: "DEVSTACK_KAFKA_ADDR", devstack.ServerMongo: "DEVSTACK_MONGO_ADDR",
		devstack.ServerRedis: "DEVSTACK_REDIS_ADDR"}[which]
	if addrVar == "" {
		return nil, fmt.Errorf("devstack -servers %s: unknown server", which)
	}
	var lastErr error
	for range 3 {
		env := append(baseEnv(), addrVar+"="+freeAddr(), "DEVSTACK_DATA_DIR="+dataDir, "LOG_LEVEL=warn", "LOG_FORMAT=text")
		lines := &lineWriter{first: make(chan string, 1)}
		p, err := startProc("devstack -servers "+which, bins.Devstack(), []string{"-servers", which}, env, lines)
		if err != nil {
			return nil, err
		}
		select {
		case line := <-lines.first:
			var a devstack.ServerAddresses
			if err := json.Unmarshal([]byte(line), &a); err != nil {
				p.kill()
				return nil, fmt.Errorf("%s printed %q: %w", p.name, line, err)
			}
			return &serversProc{proc: p, addrs: a}, nil
		case <-p.done:
			lastErr = fmt.Errorf("%s exited before serving: %v%s", p.name, p.err, p.output.suffix())
		case <-time.After(time.Minute):
			p.kill()
			return nil, fmt.Errorf("%s not serving after a minute%s", p.name, p.output.suffix())
		}
	}
	return nil, lastErr
}

// lineWriter hands the first line written to it to first and keeps the rest.
type lineWriter struct {
	mu    sync.Mutex
	buf   []byte
	sent  bool
	first chan string
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	if !w.sent {
		if i := bytes.IndexByte(w.buf, '\n'); i >= 0 {
			w.sent = true
			w.first <- string(w.buf[:i])
		}
	}
	if len(w.buf) > 64<<10 {
		w.buf = w.buf[len(w.buf)-(64<<10):]
	}
	return len(p), nil
}

// lastLine is the last non-empty line written.
func (w *lineWriter) lastLine() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	sc := bufio.NewScanner(bytes.NewReader(w.buf))
	last := ""
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			last = l
		}
	}
	return last
}
