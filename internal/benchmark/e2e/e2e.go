// Package e2e measures the platform end to end: it starts the whole platform in-process (devstack.Run,
// the production wiring of the gateway and the pipeline) over the same embedded servers as the tests
// (kfake via testenv.Kafka, FerretDB via testenv.Mongo, a real redis-server via testenv.Redis), all on
// free ports, and runs the load generator (internal/loadgen) against it. Its headline number is
// send_to_persisted_p99_ms_at_2000: the p99 time from SendMessage returning to the message being
// readable (its persisted event arriving on StreamMessages), at 2,000 messages/s for 30 s. At the end of
// the run it also reads the pipeline's mean time per batch of each stage from the platform's /metrics.
//
// The load generator runs in the same process as the platform, so both share the machine's cores, as a
// client on the same host would; its goroutines carry the pprof label component=loadgen (kfake and
// FerretDB carry theirs), so a CPU profile tells the platform's share apart.
package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"runtime/pprof"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/benchmark/scrape"
	"github.com/msgplatform/platform/internal/config"
	"github.com/msgplatform/platform/internal/devstack"
	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/loadgen"
	"github.com/msgplatform/platform/internal/testenv"
)

// Defaults of Options: the workload behind send_to_persisted_p99_ms_at_2000.
const (
	DefaultConversations = 100
	DefaultSenders       = 200
	DefaultGrace         = 10 * time.Second
)

// startTimeout bounds the platform's start-up.
const startTimeout = 90 * time.Second

// Platform is a running in-process platform.
type Platform struct {
	Addrs devstack.Addresses
	// Secret is the HS256 secret its tokens are checked with.
	Secret string
}

// StartPlatform starts kfake, FerretDB and redis-server on free ports and the platform (gateway and
// pipeline, devstack.Run) over them; t.Cleanup shuts it down in order. Logs at WARN and above go to the
// test's output.
func StartPlatform(tb testing.TB) *Platform {
	tb.Helper()
	vars := map[string]string{
		"KAFKA_BROKERS": testenv.Kafka(tb), "MONGO_URI": testenv.Mongo(tb), "REDIS_URL": testenv.Redis(tb), "KAFKA_SIGNING_KEYS": testenv.SigningKeysSpec,
		"GRPC_ADDR": "127.0.0.1:0", "HTTP_ADDR": "127.0.0.1:0", "METRICS_ADDR": "127.0.0.1:0",
		"AUTH_HMAC_SECRET":     auth.DevHMACSecret,
		"SHUTDOWN_DRAIN_DELAY": "100ms", "SHUTDOWN_TIMEOUT": "10s",
		"LOG_FORMAT": "text", "LOG_LEVEL": "warn",
		// Quotas on, as in production, but far above the offered load: every call pays the Redis check,
		// none is refused.
		"RATE_LIMIT_PRINCIPAL_RPS": "1000000", "RATE_LIMIT_PRINCIPAL_BURST": "2000000",
		"RATE_LIMIT_TENANT_RPS": "1000000", "RATE_LIMIT_TENANT_BURST": "2000000",
	}
	cfg, err := config.Load(func(k string) string { return vars[k] })
	if err != nil {
		tb.Fatalf("e2e: config: %v", err)
	}
	logger := slog.New(slog.NewTextHandler(tb.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan devstack.Addresses, 1)
	done := make(chan error, 1)
	go func() { done <- devstack.Run(ctx, cfg, logger, func(a devstack.Addresses) { ready <- a }) }()
	tb.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				tb.Errorf("e2e: platform stopped with %v", err)
			}
		case <-time.After(30 * time.Second):
			tb.Errorf("e2e: platform not stopped 30s after cancel")
		}
	})
	select {
	case a := <-ready:
		return &Platform{Addrs: a, Secret: auth.DevHMACSecret}
	case err := <-done:
		tb.Fatalf("e2e: platform stopped before serving: %v", err)
	case <-time.After(startTimeout):
		tb.Fatalf("e2e: platform not serving after %s", startTimeout)
	}
	return nil
}

// LoadConfig is the load generator's configuration against p: rate messages/s for d, over
// DefaultConversations conversations and DefaultSenders senders, watching persistence.
func (p *Platform) LoadConfig(rate int, d time.Duration) loadgen.Config {
	return loadgen.Config{
		Target: p.Addrs.GRPC, HMACSecret: p.Secret, Rate: rate, Duration: d,
		Conversations: DefaultConversations, Senders: DefaultSenders, Persist: true, Grace: DefaultGrace,
	}
}

// Options tunes Measure; zero values take the defaults.
type Options struct {
	Rate     int
	Duration time.Duration
	// Conversations and Senders default to DefaultConversations and DefaultSenders.
	Conversations, Senders int
	// Progress receives the load generator's progress lines (nil: none).
	Progress io.Writer
	// CPUProfile, when set, is a file the CPU profile of the whole process (platform and load generator)
	// during the load is written to. Look at the platform alone with
	// go tool pprof -tagignore component=loadgen FILE.
	CPUProfile string
}

// Measurement is the load generator's result and the pipeline's stages over the run.
type Measurement struct {
	loadgen.Result
	// Stages are the pipeline's stages, in pipeline order, with their mean time per batch over the run
	// (warm-up included), from its platform_pipeline_stage_duration_seconds histogram.
	Stages []StageTime
}

// StageTime is one pipeline stage's time per batch (one partition's batch, one attempt).
type StageTime struct {
	Stage      string
	Batches    uint64
	MeanMillis float64
}

// MeasureSendToPersisted starts the platform and measures rate messages/s for d against it;
// SustainedP99Millis of the result is send_to_persisted_p99_ms_at_2000 when rate is 2000 and d 30 s.
func MeasureSendToPersisted(tb testing.TB, rate int, d time.Duration) (Measurement, error) {
	tb.Helper()
	return Measure(tb, Options{Rate: rate, Duration: d})
}

// Measure starts the platform, runs the load generator against it with o, then reads the pipeline's
// stage times from the platform's /metrics.
func Measure(tb testing.TB, o Options) (Measurement, error) {
	tb.Helper()
	p := StartPlatform(tb)
	cfg := p.LoadConfig(o.Rate, o.Duration)
	if o.Conversations > 0 {
		cfg.Conversations = o.Conversations
	}
	if o.Senders > 0 {
		cfg.Senders = o.Senders
	}
	res, err := run(cfg, o.Progress, o.CPUProfile)
	if err != nil {
		return Measurement{Result: res}, err
	}
	stages, err := p.StageTimes(context.Background())
	if err != nil {
		return Measurement{Result: res}, err
	}
	return Measurement{Result: res, Stages: stages}, nil
}

// stageOrder is the pipeline's order of stages; a stage not listed comes after them.
var stageOrder = append(slices.Clone(envelope.Stages), "metrics")

// StageTimes scrapes the platform's /metrics for the pipeline's stage durations so far: the mean time
// per batch of each stage (sum ÷ count of platform_pipeline_stage_duration_seconds), in pipeline order.
func (p *Platform) StageTimes(ctx context.Context) ([]StageTime, error) {
	mfs, err := scrape.Fetch(ctx, "http://"+p.Addrs.Metrics+"/metrics")
	if err != nil {
		return nil, fmt.Errorf("e2e: pipeline stage times: %w", err)
	}
	var out []StageTime
	for _, h := range mfs.Histogram("platform_pipeline_stage_duration_seconds", "stage") {
		out = append(out, StageTime{Stage: h.Label, Batches: h.Count, MeanMillis: h.Mean() * 1000})
	}
	rank := func(s string) int {
		if i := slices.Index(stageOrder, s); i >= 0 {
			return i
		}
		return len(stageOrder)
	}
	slices.SortStableFunc(out, func(a, b StageTime) int { return rank(a.Stage) - rank(b.Stage) })
	return out, nil
}

// WriteStages writes the stage times as one Markdown table.
func (m Measurement) WriteStages(w io.Writer) error {
	var b strings.Builder
	b.WriteString("| pipeline stage | batches | mean per batch (ms) |\n|---|---:|---:|\n")
	var total float64
	for _, s := range m.Stages {
		fmt.Fprintf(&b, "| %s | %d | %.2f |\n", s.Stage, s.Batches, s.MeanMillis)
		total += s.MeanMillis
	}
	fmt.Fprintf(&b, "| all stages | | %.2f |\n", total)
	_, err := io.WriteString(w, b.String())
	return err
}

// run runs the load generator under the pprof label component=loadgen, with the CPU profiled to
// profile when it is set.
func run(cfg loadgen.Config, progress io.Writer, profile string) (res loadgen.Result, err error) {
	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			return loadgen.Result{}, fmt.Errorf("e2e: cpu profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return loadgen.Result{}, fmt.Errorf("e2e: cpu profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	pprof.Do(context.Background(), pprof.Labels("component", "loadgen"), func(ctx context.Context) {
		res, err = loadgen.Run(ctx, cfg, progress)
	})
	if err != nil {
		return res, fmt.Errorf("e2e: %w", err)
	}
	return res, nil
}

// SustainedP50Millis is SustainedP99Millis's p50: send_to_persisted_p50_ms_at_2000.
func SustainedP50Millis(r loadgen.Result) float64 {
	if missing := r.Scheduled - r.OK + r.Unseen; missing*100 > r.Scheduled {
		return math.Inf(1)
	}
	return loadgen.Millis(r.SendToPersistedAll.P50)
}

// SustainedP99Millis is the p99 of send→persisted in milliseconds (SendToPersistedAll: messages never seen
// persisted count at their lower bound, so losses cannot flatter it), or +Inf when more than 1% of the
// scheduled messages were not accepted or not seen persisted: the rate was then not sustained and no p99
// of it exists, so a platform that cannot take the rate does not pass on the few it took.
func SustainedP99Millis(r loadgen.Result) float64 {
	if missing := r.Scheduled - r.OK + r.Unseen; missing*100 > r.Scheduled {
		return math.Inf(1)
	}
	return loadgen.Millis(r.SendToPersistedAll.P99)
}
