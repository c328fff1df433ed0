// Package backlog measures the pipeline process's memory while it drains a large backlog: the production
// binary (services/pipeline) is built and started as a process of its own against kfake, FerretDB and a
// real redis-server on free ports, after messages.inbound was filled, and its peak resident set size is read
// from the kernel (VmHWM) once every record is stored.
package backlog

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/testenv"
)

// Fill writes n realistic inbound messages to messages.inbound on brokers, with the conversations and
// memberships they need in st (the pipeline's authorize stage checks them).
type Fill func(ctx context.Context, st *store.Store, brokers string, n int) error

// Result is one drain of the backlog.
type Result struct {
	Records       int
	PeakRSSMiB    float64 // the kernel's high-water mark of the process's resident set (VmHWM)
	Seconds       float64 // from the process's start to the last record stored
	RecordsPerSec float64
	FillSeconds   float64
}

// MeasureRSS fills messages.inbound with records messages, then runs the pipeline binary until all of them
// are stored (watched through its own platform_pipeline_messages_total), checks MongoDB holds exactly that
// many, stops it with SIGTERM and reports its peak RSS.
func MeasureRSS(tb testing.TB, records int, fill Fill, progress io.Writer) (Result, error) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	brokers, mongoURI, redisURL := testenv.Kafka(tb), testenv.Mongo(tb), testenv.Redis(tb)
	const database = "backlog"

	mc, err := store.Connect(ctx, mongoURI)
	if err != nil {
		return Result{}, fmt.Errorf("connect to FerretDB: %w", err)
	}
	defer func() { _ = mc.Disconnect(context.Background()) }()
	st := store.New(mc.Database(database))
	if err := st.EnsureIndexes(ctx); err != nil {
		return Result{}, fmt.Errorf("create indexes: %w", err)
	}

	start := time.Now()
	if err := fill(ctx, st, brokers, records); err != nil {
		return Result{}, fmt.Errorf("fill the backlog: %w", err)
	}
	res := Result{Records: records, FillSeconds: time.Since(start).Seconds()}
	fmt.Fprintf(progress, "backlog: %d records in messages.inbound after %.0fs\n", records, res.FillSeconds)

	bin, err := buildPipeline(ctx, tb.TempDir())
	if err != nil {
		return Result{}, err
	}
	metricsAddr := testenv.FreeAddr(tb)
	cmd := exec.CommandContext(ctx, bin)
	cmd.Env = append(os.Environ(),
		"KAFKA_BROKERS="+brokers, "MONGO_URI="+mongoURI, "MONGO_DATABASE="+database, "REDIS_URL="+redisURL,
		"HTTP_ADDR="+testenv.FreeAddr(tb), "METRICS_ADDR="+metricsAddr, "LOG_LEVEL=warn",
		"SHUTDOWN_DRAIN_DELAY=0s", "SHUTDOWN_TIMEOUT=30s", "KAFKA_SIGNING_KEYS="+testenv.SigningKeysSpec)
	cmd.Stdout, cmd.Stderr = progress, progress
	started := time.Now()
	if err := cmd.Start(); err != nil {
		return Result{}, fmt.Errorf("start %s: %w", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
	}()

	stored := 0.0
	lastReport := time.Now()
	for stored < float64(records) {
		select {
		case err := <-exited:
			return Result{}, fmt.Errorf("pipeline exited after storing %.0f of %d records: %v", stored, records, err)
		case <-ctx.Done():
			return Result{}, fmt.Errorf("pipeline stored %.0f of %d records before the deadline", stored, records)
		case <-time.After(250 * time.Millisecond):
		}
		if n, err := storedCount(ctx, metricsAddr); err == nil {
			stored = n
		}
		if time.Since(lastReport) >= 10*time.Second {
			lastReport = time.Now()
			rss, _ := memoryMiB(cmd.Process.Pid, "VmRSS")
			fmt.Fprintf(progress, "backlog: %.0f/%d stored after %.0fs, RSS %.0f MiB\n", stored, records, time.Since(started).Seconds(), rss)
		}
	}
	res.Seconds = time.Since(started).Seconds()
	res.RecordsPerSec = float64(records) / res.Seconds
	if res.PeakRSSMiB, err = memoryMiB(cmd.Process.Pid, "VmHWM"); err != nil {
		return Result{}, err
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return Result{}, fmt.Errorf("stop the pipeline: %w", err)
	}
	select {
	case err := <-exited:
		if err != nil {
			return Result{}, fmt.Errorf("pipeline exit after SIGTERM: %w", err)
		}
	case <-time.After(time.Minute):
		return Result{}, errors.New("pipeline still running a minute after SIGTERM")
	}
	n, err := mc.Database(database).Collection(store.MessagesCollection).EstimatedDocumentCount(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("count stored messages: %w", err)
	}
	if n != int64(records) {
		return Result{}, fmt.Errorf("%d messages in MongoDB after draining %d records", n, records)
	}
	return res, nil
}

// buildPipeline builds services/pipeline into dir, from the module this package belongs to.
func buildPipeline(ctx context.Context, dir string) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(out)))
	bin := filepath.Join(dir, "pipeline")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./services/pipeline")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build services/pipeline: %w\n%s", err, out)
	}
	return bin, nil
}

// storedCount sums platform_pipeline_messages_total (stored and duplicate) from the process's /metrics.
func storedCount(ctx context.Context, addr string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	total := 0.0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "platform_pipeline_messages_total{") {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			return 0, fmt.Errorf("parse %q: %w", line, err)
		}
		total += v
	}
	return total, sc.Err()
}

// memoryMiB reads one of the kernel's memory figures of pid (VmRSS now, VmHWM the peak) in MiB.
func memoryMiB(pid int, field string) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read the process's memory: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(rest) // "123456 kB"
			kb, err := strconv.ParseFloat(f[0], 64)
			if err != nil {
				return 0, fmt.Errorf("parse %s: %w", line, err)
			}
			return kb / 1024, nil
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}
