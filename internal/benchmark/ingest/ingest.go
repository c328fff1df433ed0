// Package ingest measures what a user runs: the production pipeline binary (services/pipeline) draining
// a pre-filled messages.inbound, each server and each measured system in a process of its own, against
// the store's own ceiling and a bare consumer, side by side.
//
// Processes of one measurement (binaries built once, with `go build`, into a temporary directory):
//
//   - `devstack -servers kafka` (kfake) and `devstack -servers mongodb` (FerretDB on SQLite), new for
//     every scenario, on free ports, and a real redis-server (testenv.Redis);
//   - pipeline: services/pipeline with the production configuration (config.FromEnv), a fresh
//     MONGO_DATABASE holding the workload's conversations and memberships, a cold membership cache (Redis
//     flushed) and its consumer group deleted, so it drains the backlog from the start. It is timed from
//     its exec to the moment its /metrics counter platform_pipeline_messages_total reaches the backlog
//     (scraped every 50 ms; the first moment it is above 0 is its time to first stored record); its CPU
//     time is read from /proc/<pid>/stat right then. It is then stopped with SIGTERM, must exit 0, and
//     its database must hold exactly the backlog;
//   - ceiling: `storebench ceiling`, the store's best: the same documents built before its clock starts,
//     one writer, unordered InsertMany of 500, into a database of its own;
//   - consumer: `storebench consumer`, a bare franz-go consumer group decoding, converting and storing
//     with unordered InsertMany of 500, a commit after each, timed from its exec;
//   - insert_one (one scenario): `storebench consumer -batch 1 -poll 1000`, one insert per record, on a
//     sample of the backlog.
//
// A scenario is an encoding and a backlog size; every round runs its systems in an order that rotates
// from round to round, and the reported values are medians over rounds, the ratios medians of each
// round's own ratio (side by side, so the machine's noise cancels out as much as it can).
package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/msgplatform/platform/internal/benchmark/ingest/workload"
	"github.com/msgplatform/platform/internal/benchmark/scrape"
	"github.com/msgplatform/platform/internal/devstack"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/testenv"
)

// Scenario names of DefaultScenarios.
const (
	ScenarioProtoJSON30k = "protojson_30k"
	ScenarioProtoJSON50k = "protojson_50k"
	ScenarioProtobuf50k  = "protobuf_50k"
)

// Defaults of Options.
const (
	DefaultInsertOneRecords = 3_000
	DefaultRounds           = 3
	DefaultCeilingChunk     = store.DefaultBulkMaxDocs // 500
	DefaultConsumerBatch    = store.DefaultBulkMaxDocs // 500
	// The workload's shape: 300 conversations of 5 members over 3 tenants.
	DefaultTenants       = workload.DefaultTenants
	DefaultConversations = workload.DefaultConversations
	DefaultMembers       = workload.DefaultMembers
)

// Systems measured, as in Round.Order.
const (
	SystemPipeline  = "pipeline"
	SystemCeiling   = "ceiling"
	SystemConsumer  = "consumer"
	SystemInsertOne = "insert_one"
)

const (
	// runTimeout bounds one measured run, so a stuck process fails the measurement instead of hanging.
	runTimeout = 3 * time.Minute
	// The pipeline's /metrics is read every scrapeFirst until its first write (to time it closely), then
	// every scrapeEvery while it drains: each scrape costs the measured process CPU (writing the page),
	// so not more often than the time resolution needs (about 1% of a 10-second drain).
	scrapeFirst = 20 * time.Millisecond
	scrapeEvery = 100 * time.Millisecond
	// settle is the pause before every run, for the previous process's exit and the store's writes to
	// finish.
	settle = time.Second
)

// Scenario is one backlog: its encoding and size.
type Scenario struct {
	Name     string
	Encoding workload.Encoding
	Records  int
	// Seed is the workload's seed (0: the scenario's position in Options.Scenarios, from 1).
	Seed uint64
	// InsertOne adds the one-insert-per-record consumer (Options.InsertOneRecords records) to the rounds.
	InsertOne bool
	// Headline makes this scenario the source of Result's top-level fields (default: the first).
	Headline bool
}

// DefaultScenarios are protojson at 30,000 and 50,000 records and protobuf at 50,000; the headline is
// protojson at 50,000, which also runs the one-insert-per-record consumer.
func DefaultScenarios() []Scenario {
	return []Scenario{
		{Name: ScenarioProtoJSON30k, Encoding: workload.ProtoJSON, Records: 30_000},
		{Name: ScenarioProtoJSON50k, Encoding: workload.ProtoJSON, Records: 50_000, InsertOne: true, Headline: true},
		{Name: ScenarioProtobuf50k, Encoding: workload.Protobuf, Records: 50_000},
	}
}

// Options tunes MeasureIngest; zero values take the defaults.
type Options struct {
	Scenarios []Scenario // DefaultScenarios()
	Rounds    int        // DefaultRounds
	// InsertOneRecords is the sample the one-insert-per-record consumer stores per round (the first
	// records of the backlog): its rate is a rate, and a full backlog at its speed would blow the budget.
	InsertOneRecords int
	CeilingChunk     int // documents per InsertMany of the ceiling
	ConsumerBatch    int // records per InsertMany of the bare consumer
	Shape            workload.Shape
	// PipelineEnv adds KEY=VALUE variables to the pipeline's environment (e.g. PIPELINE_* tuning); by
	// default it runs with the configuration's defaults.
	PipelineEnv []string
	// Binaries are prebuilt (BuildBinaries); nil builds them into the test's temporary directory.
	Binaries *Binaries
	// Progress receives a line per run (nil: the test's log).
	Progress io.Writer
}

func (o Options) withDefaults() Options {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	if len(o.Scenarios) == 0 {
		o.Scenarios = DefaultScenarios()
	}
	o.Scenarios = slices.Clone(o.Scenarios)
	for i := range o.Scenarios {
		if o.Scenarios[i].Seed == 0 {
			o.Scenarios[i].Seed = uint64(i + 1)
		}
		if o.Scenarios[i].Encoding == "" {
			o.Scenarios[i].Encoding = workload.Protobuf
		}
		if o.Scenarios[i].Name == "" {
			o.Scenarios[i].Name = fmt.Sprintf("%s_%d", o.Scenarios[i].Encoding, o.Scenarios[i].Records)
		}
	}
	def(&o.Rounds, DefaultRounds)
	def(&o.InsertOneRecords, DefaultInsertOneRecords)
	def(&o.CeilingChunk, DefaultCeilingChunk)
	def(&o.ConsumerBatch, DefaultConsumerBatch)
	o.Shape = o.Shape.WithDefaults()
	return o
}

// Run is one system's run.
type Run struct {
	Records int
	// Seconds is the measured time: from exec to the last record stored for the pipeline and the
	// consumers, from the first write to the last for the ceiling.
	Seconds float64
	PerSec  float64
	// CPUSeconds is the process's user+system time until its last record was stored.
	CPUSeconds float64
	// FirstStoredSeconds is when its first record was stored, from the same start as Seconds.
	FirstStoredSeconds float64
	// KafkaCPUSeconds and MongoCPUSeconds are what the kfake and FerretDB processes spent meanwhile (from
	// the run's start to its end, the stop included): on a machine with few cores, the store's share of
	// the CPU is what its writers leave it.
	KafkaCPUSeconds, MongoCPUSeconds float64
}

// CPUPer10k is the process's CPU seconds per 10,000 records.
func (r Run) CPUPer10k() float64 {
	if r.Records == 0 {
		return 0
	}
	return r.CPUSeconds / float64(r.Records) * 10_000
}

// Round is what one round measured, in records per second.
type Round struct {
	Pipeline  float64
	Ceiling   float64
	Consumer  float64
	InsertOne float64 // 0 when the scenario does not run it
	// Order is the order the systems ran in this round.
	Order []string
	// Runs are the details, by system.
	Runs map[string]Run
}

// ScenarioResult is one scenario's medians over its rounds.
type ScenarioResult struct {
	Scenario Scenario

	PipelinePerSec, CeilingPerSec, ConsumerPerSec, InsertOnePerSec float64
	// Ratios are medians of each round's own ratio.
	PipelineVsCeiling, ConsumerVsCeiling, PipelineVsInsertOne float64
	// CPU seconds per 10,000 records of each process.
	PipelineCPUPer10k, CeilingCPUPer10k, ConsumerCPUPer10k, InsertOneCPUPer10k float64
	// Time to the first stored record: from exec for the pipeline and the consumer, from the first
	// write for the ceiling.
	PipelineFirstStoredMs, CeilingFirstStoredMs, ConsumerFirstStoredMs, InsertOneFirstStoredMs float64
	// FillSeconds is how long producing the backlog took (not measured against anything).
	FillSeconds float64
	Rounds      []Round
}

// Result is the measurement. The top-level numbers are the headline scenario's (DefaultScenarios:
// protojson at 50,000 records).
type Result struct {
	Records          int // per round, the headline's backlog
	InsertOneRecords int // per round, one-insert-per-record consumer

	PipelinePerSec  float64
	CeilingPerSec   float64
	InsertOnePerSec float64
	ConsumerPerSec  float64
	// Ratios are medians of each round's own ratio.
	PipelineVsCeiling   float64
	PipelineVsInsertOne float64
	ConsumerVsCeiling   float64
	// PipelineCPUPer10k is the pipeline process's CPU seconds per 10,000 records.
	PipelineCPUPer10k float64
	// PipelineFirstStoredMs is the time from the pipeline's exec to its first stored record.
	PipelineFirstStoredMs float64

	Rounds    []Round // the headline's
	Scenarios []ScenarioResult
}

// Scenario returns the result of the scenario named name.
func (r Result) Scenario(name string) (ScenarioResult, bool) {
	for _, s := range r.Scenarios {
		if s.Scenario.Name == name {
			return s, true
		}
	}
	return ScenarioResult{}, false
}

// measurement is what the scenarios of one MeasureIngest share.
type measurement struct {
	tb    testing.TB
	opts  Options
	bins  Binaries
	redis *redis.Client
	url   string // REDIS_URL
	logf  func(format string, args ...any)
}

// MeasureIngest builds the binaries, starts the servers and measures every scenario (see the package
// comment). It fails (returns an error) if any run does not store exactly its records, or any process
// does not exit cleanly.
func MeasureIngest(tb testing.TB, opts Options) (Result, error) {
	tb.Helper()
	opts = opts.withDefaults()
	m := &measurement{tb: tb, opts: opts, logf: tb.Logf}
	if opts.Progress != nil {
		m.logf = func(format string, args ...any) { fmt.Fprintf(opts.Progress, format+"\n", args...) }
	}
	if opts.Binaries != nil {
		m.bins = *opts.Binaries
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		start := time.Now()
		bins, err := BuildBinaries(ctx, tb.TempDir())
		if err != nil {
			return Result{}, err
		}
		m.bins = bins
		m.logf("ingest: built pipeline, devstack and storebench in %v", time.Since(start).Round(100*time.Millisecond))
	}
	m.url = testenv.Redis(tb)
	ro, err := redis.ParseURL(m.url)
	if err != nil {
		return Result{}, fmt.Errorf("redis url: %w", err)
	}
	m.redis = redis.NewClient(ro)
	defer m.redis.Close()

	var res Result
	headline := 0
	for i, sc := range opts.Scenarios {
		if sc.Headline {
			headline = i
			break
		}
	}
	for _, sc := range opts.Scenarios {
		runtime.GC()
		sr, err := m.scenario(sc)
		if err != nil {
			return res, fmt.Errorf("ingest scenario %s: %w", sc.Name, err)
		}
		res.Scenarios = append(res.Scenarios, sr)
	}
	h := res.Scenarios[headline]
	res.Records, res.InsertOneRecords = h.Scenario.Records, opts.InsertOneRecords
	res.PipelinePerSec, res.CeilingPerSec, res.ConsumerPerSec, res.InsertOnePerSec = h.PipelinePerSec, h.CeilingPerSec, h.ConsumerPerSec, h.InsertOnePerSec
	res.PipelineVsCeiling, res.PipelineVsInsertOne, res.ConsumerVsCeiling = h.PipelineVsCeiling, h.PipelineVsInsertOne, h.ConsumerVsCeiling
	res.PipelineCPUPer10k, res.PipelineFirstStoredMs = h.PipelineCPUPer10k, h.PipelineFirstStoredMs
	res.Rounds = h.Rounds
	return res, nil
}

// servers are one scenario's Kafka and MongoDB processes and the harness's clients of them.
type servers struct {
	kafka, mongo *serversProc
	producer     *kgo.Client
	admin        *kadm.Client
	client       *mongo.Client
}

// scenario starts the scenario's servers, fills the backlog and runs the rounds.
func (m *measurement) scenario(sc Scenario) (res ScenarioResult, err error) {
	res.Scenario = sc
	dir, err := os.MkdirTemp(m.tb.TempDir(), sc.Name+"-")
	if err != nil {
		return res, fmt.Errorf("data directory: %w", err)
	}
	freeAddr := func() string { return testenv.FreeAddr(m.tb) }
	s := &servers{}
	defer func() {
		// Clients first, then the servers, which must stop cleanly.
		if s.producer != nil {
			s.producer.Close()
		}
		if s.client != nil {
			_ = s.client.Disconnect(context.Background())
		}
		for _, p := range []*serversProc{s.mongo, s.kafka} {
			if p == nil {
				continue
			}
			if stopErr := p.stop(); stopErr != nil && err == nil {
				err = stopErr
			}
		}
	}()
	if s.kafka, err = startServers(m.bins, devstack.ServerKafka, filepath.Join(dir, "kafka"), freeAddr); err != nil {
		return res, err
	}
	if s.mongo, err = startServers(m.bins, devstack.ServerMongo, filepath.Join(dir, "mongodb"), freeAddr); err != nil {
		return res, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	if s.producer, err = kafka.NewProducer([]string{s.kafka.addrs.Kafka}, time.Minute); err != nil {
		return res, fmt.Errorf("kafka producer: %w", err)
	}
	s.admin = kadm.NewClient(s.producer)
	if s.client, err = store.Connect(ctx, s.mongo.addrs.MongoURI); err != nil {
		return res, err
	}

	start := time.Now()
	if err := fill(ctx, s.producer, workload.New(sc.Seed, m.opts.Shape), sc.Encoding, sc.Records); err != nil {
		return res, err
	}
	res.FillSeconds = time.Since(start).Seconds()
	m.logf("ingest %s: %d %s records in messages.inbound after %.1fs (kafka %s, mongodb %s, redis %s)",
		sc.Name, sc.Records, sc.Encoding, res.FillSeconds, s.kafka.addrs.Kafka, s.mongo.addrs.MongoURI, m.url)

	systems := []string{SystemPipeline, SystemCeiling, SystemConsumer}
	if sc.InsertOne {
		systems = append(systems, SystemInsertOne)
	}
	for r := range m.opts.Rounds {
		k := r % len(systems)
		round := Round{Order: append(slices.Clone(systems[k:]), systems[:k]...), Runs: map[string]Run{}}
		for _, system := range round.Order {
			time.Sleep(settle)
			run, err := m.run(s, sc, system, r)
			if err != nil {
				return res, fmt.Errorf("round %d: %s: %w", r+1, system, err)
			}
			round.Runs[system] = run
			m.logf("ingest %s round %d: %-10s %6d records in %6.2fs = %6.0f/s, CPU %5.2fs (%.2f s/10k), first stored %4.0f ms; kfake CPU %.2fs, FerretDB CPU %.2fs",
				sc.Name, r+1, system, run.Records, run.Seconds, run.PerSec, run.CPUSeconds, run.CPUPer10k(), run.FirstStoredSeconds*1000,
				run.KafkaCPUSeconds, run.MongoCPUSeconds)
		}
		round.Pipeline, round.Ceiling = round.Runs[SystemPipeline].PerSec, round.Runs[SystemCeiling].PerSec
		round.Consumer, round.InsertOne = round.Runs[SystemConsumer].PerSec, round.Runs[SystemInsertOne].PerSec
		res.Rounds = append(res.Rounds, round)
	}

	rate := func(system string) func(Round) float64 {
		return func(r Round) float64 { return r.Runs[system].PerSec }
	}
	ratio := func(a, b string) func(Round) float64 {
		return func(r Round) float64 {
			if r.Runs[b].PerSec == 0 {
				return 0
			}
			return r.Runs[a].PerSec / r.Runs[b].PerSec
		}
	}
	cpu := func(system string) func(Round) float64 {
		return func(r Round) float64 { return r.Runs[system].CPUPer10k() }
	}
	first := func(system string) func(Round) float64 {
		return func(r Round) float64 { return r.Runs[system].FirstStoredSeconds * 1000 }
	}
	res.PipelinePerSec, res.CeilingPerSec = median(res.Rounds, rate(SystemPipeline)), median(res.Rounds, rate(SystemCeiling))
	res.ConsumerPerSec = median(res.Rounds, rate(SystemConsumer))
	res.PipelineVsCeiling, res.ConsumerVsCeiling = median(res.Rounds, ratio(SystemPipeline, SystemCeiling)), median(res.Rounds, ratio(SystemConsumer, SystemCeiling))
	res.PipelineCPUPer10k, res.CeilingCPUPer10k, res.ConsumerCPUPer10k = median(res.Rounds, cpu(SystemPipeline)), median(res.Rounds, cpu(SystemCeiling)), median(res.Rounds, cpu(SystemConsumer))
	res.PipelineFirstStoredMs, res.CeilingFirstStoredMs, res.ConsumerFirstStoredMs = median(res.Rounds, first(SystemPipeline)), median(res.Rounds, first(SystemCeiling)), median(res.Rounds, first(SystemConsumer))
	if sc.InsertOne {
		res.InsertOnePerSec = median(res.Rounds, rate(SystemInsertOne))
		res.PipelineVsInsertOne = median(res.Rounds, ratio(SystemPipeline, SystemInsertOne))
		res.InsertOneCPUPer10k, res.InsertOneFirstStoredMs = median(res.Rounds, cpu(SystemInsertOne)), median(res.Rounds, first(SystemInsertOne))
	}
	return res, nil
}

func median(rounds []Round, f func(Round) float64) float64 {
	if len(rounds) == 0 {
		return 0
	}
	vs := make([]float64, len(rounds))
	for i, r := range rounds {
		vs[i] = f(r)
	}
	slices.Sort(vs)
	if n := len(vs); n%2 == 0 {
		return (vs[n/2-1] + vs[n/2]) / 2
	}
	return vs[len(vs)/2]
}

// run runs one system once, in a database of its own that it drops afterwards.
func (m *measurement) run(s *servers, sc Scenario, system string, round int) (Run, error) {
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	db := fmt.Sprintf("%s_%s_r%d", system, sc.Name, round+1)
	st := store.New(s.client.Database(db))
	defer func() {
		dctx, dcancel := context.WithTimeout(context.Background(), time.Minute)
		defer dcancel()
		if err := st.Database().Drop(dctx); err != nil {
			m.logf("ingest: drop database %s: %v", db, err)
		}
	}()
	// Every database is prepared as a deployed one would be: its indexes exist (the processes ensure
	// them again at start-up, which finds them there).
	if err := st.EnsureIndexes(ctx); err != nil {
		return Run{}, fmt.Errorf("indexes of %s: %w", db, err)
	}
	want := sc.Records
	var run Run
	var err error
	kafkaCPU, _ := s.kafka.cpuSeconds()
	mongoCPU, _ := s.mongo.cpuSeconds()
	switch system {
	case SystemPipeline:
		run, err = m.runPipeline(ctx, s, sc, st)
	case SystemCeiling:
		run, err = m.runStorebench(ctx, "ceiling", "-mongo", s.mongo.addrs.MongoURI, "-db", db, "-records", strconv.Itoa(want),
			"-seed", strconv.FormatUint(sc.Seed, 10), "-chunk", strconv.Itoa(m.opts.CeilingChunk),
			"-tenants", strconv.Itoa(m.opts.Shape.Tenants), "-conversations", strconv.Itoa(m.opts.Shape.Conversations),
			"-members", strconv.Itoa(m.opts.Shape.Members))
	case SystemConsumer:
		run, err = m.runStorebench(ctx, "consumer", "-brokers", s.kafka.addrs.Kafka, "-mongo", s.mongo.addrs.MongoURI, "-db", db,
			"-records", strconv.Itoa(want), "-batch", strconv.Itoa(m.opts.ConsumerBatch), "-group", "bench-"+db)
	case SystemInsertOne:
		want = min(m.opts.InsertOneRecords, sc.Records)
		run, err = m.runStorebench(ctx, "consumer", "-brokers", s.kafka.addrs.Kafka, "-mongo", s.mongo.addrs.MongoURI, "-db", db,
			"-records", strconv.Itoa(want), "-batch", "1", "-poll", "1000", "-group", "bench-"+db)
		if err == nil && run.Seconds > run.FirstStoredSeconds && want > 1 {
			// Its rate runs from its first stored record: it is not charged its start nor the group
			// join (the pipeline is), so the ratio errs in the baseline's favour.
			run.PerSec = float64(want-1) / (run.Seconds - run.FirstStoredSeconds)
		}
	default:
		return Run{}, fmt.Errorf("unknown system %q", system)
	}
	if err != nil {
		return Run{}, err
	}
	if k, err := s.kafka.cpuSeconds(); err == nil {
		run.KafkaCPUSeconds = k - kafkaCPU
	}
	if m, err := s.mongo.cpuSeconds(); err == nil {
		run.MongoCPUSeconds = m - mongoCPU
	}
	if run.Records != want {
		return Run{}, fmt.Errorf("reported %d records stored, want %d", run.Records, want)
	}
	if err := checkCount(ctx, st, int64(want)); err != nil {
		return Run{}, err
	}
	return run, nil
}

// runPipeline runs the production pipeline binary over st's database until it has stored the backlog
// (see the package comment).
func (m *measurement) runPipeline(ctx context.Context, s *servers, sc Scenario, st *store.Store) (Run, error) {
	if err := workload.New(sc.Seed, m.opts.Shape).Create(ctx, st); err != nil {
		return Run{}, err
	}
	if err := store.NewDeadLetters(st.Database()).EnsureIndexes(ctx); err != nil {
		return Run{}, fmt.Errorf("dead-letter indexes: %w", err)
	}
	// A cold start: no membership cached, no offset committed.
	if err := m.redis.FlushAll(ctx).Err(); err != nil {
		return Run{}, fmt.Errorf("flush redis: %w", err)
	}
	if err := deleteGroup(ctx, s.admin, kafka.GroupPipeline); err != nil {
		return Run{}, err
	}

	metricsAddr := testenv.FreeAddr(m.tb)
	env := append(baseEnv(),
		"KAFKA_BROKERS="+s.kafka.addrs.Kafka, "MONGO_URI="+s.mongo.addrs.MongoURI, "MONGO_DATABASE="+st.Database().Name(),
		"REDIS_URL="+m.url, "KAFKA_SIGNING_KEYS="+testenv.SigningKeysSpec,
		"HTTP_ADDR="+testenv.FreeAddr(m.tb), "METRICS_ADDR="+metricsAddr, "LOG_LEVEL=warn", "SHUTDOWN_DRAIN_DELAY=0s")
	env = append(env, m.opts.PipelineEnv...)
	p, err := startProc("pipeline", m.bins.Pipeline(), nil, env, nil)
	if err != nil {
		return Run{}, err
	}
	defer p.kill()

	url := "http://" + metricsAddr + "/metrics"
	if dir := os.Getenv("INGEST_PPROF_DIR"); dir != "" {
		// A CPU profile of the pipeline process while it drains (go tool pprof it).
		go profile(ctx, "http://"+metricsAddr, filepath.Join(dir, fmt.Sprintf("pipeline-%s-%d.pprof", sc.Name, time.Now().UnixNano())))
	}
	want := float64(sc.Records)
	run := Run{Records: sc.Records}
	tick := time.NewTicker(scrapeFirst)
	defer tick.Stop()
	for {
		select {
		case <-p.done:
			return Run{}, fmt.Errorf("pipeline exited before storing the backlog: %v%s", p.err, p.output.suffix())
		case <-ctx.Done():
			return Run{}, fmt.Errorf("pipeline did not store %d records within %v%s", sc.Records, runTimeout, p.output.suffix())
		case <-tick.C:
		}
		mfs, err := scrape.Fetch(ctx, url)
		if err != nil {
			continue // not listening yet
		}
		now := time.Since(p.started).Seconds()
		stored := mfs.Sum("platform_pipeline_messages_total")
		inserted := mfs.Sum("platform_bulk_writer_items_total")
		if dead := mfs.Sum("platform_pipeline_dead_letters_total"); dead > 0 {
			return Run{}, fmt.Errorf("pipeline dead-lettered %.0f records; the workload should have none%s", dead, p.output.suffix())
		}
		if inserted > 0 && run.FirstStoredSeconds == 0 {
			run.FirstStoredSeconds = now // the first InsertMany returned
			tick.Reset(scrapeEvery)
		}
		if stored >= want {
			run.Seconds = now
			if run.CPUSeconds, err = p.cpuSeconds(); err != nil {
				return Run{}, err
			}
			break
		}
	}
	run.PerSec = want / run.Seconds
	if err := p.stop(); err != nil {
		return Run{}, err
	}
	if out := strings.TrimSpace(p.output.String()); out != "" {
		m.logf("ingest: the pipeline logged:\n%s", out)
	}
	return run, nil
}

// profile saves a 5-second CPU profile of the process serving base's /debug/pprof to path.
func profile(ctx context.Context, base, path string) {
	for ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/debug/pprof/profile?seconds=5", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		defer resp.Body.Close()
		f, err := os.Create(path)
		if err == nil {
			_, _ = io.Copy(f, resp.Body)
			_ = f.Close()
		}
		return
	}
}

// runStorebench runs `storebench mode args…`, timed from its exec (-since), and reads its report.
func (m *measurement) runStorebench(ctx context.Context, mode string, args ...string) (Run, error) {
	out := &lineWriter{first: make(chan string, 1)}
	since := time.Now()
	args = append([]string{mode, "-since", strconv.FormatInt(since.UnixNano(), 10), "-timeout", runTimeout.String()}, args...)
	p, err := startProc("storebench "+mode, m.bins.Storebench(), args, baseEnv(), out)
	if err != nil {
		return Run{}, err
	}
	if err := p.wait(runTimeout + 30*time.Second); err != nil {
		return Run{}, err
	}
	var rep workload.Report
	line := out.lastLine()
	if err := json.Unmarshal([]byte(line), &rep); err != nil {
		return Run{}, fmt.Errorf("%s printed %q: %w", p.name, line, err)
	}
	if rep.Seconds <= 0 {
		return Run{}, fmt.Errorf("%s reported %q", p.name, line)
	}
	return Run{Records: rep.Records, Seconds: rep.Seconds, PerSec: float64(rep.Records) / rep.Seconds,
		CPUSeconds: rep.CPUSeconds, FirstStoredSeconds: rep.FirstStoredSeconds}, nil
}

// deleteGroup deletes a consumer group's committed offsets (the group must be empty: its last member
// left when the previous pipeline stopped); a group that does not exist is fine.
func deleteGroup(ctx context.Context, admin *kadm.Client, group string) error {
	for {
		_, err := admin.DeleteGroup(ctx, group)
		switch {
		case err == nil, errors.Is(err, kerr.GroupIDNotFound):
			return nil
		case errors.Is(err, kerr.NonEmptyGroup):
			select {
			case <-ctx.Done():
				return fmt.Errorf("delete consumer group %s: still has members: %w", group, err)
			case <-time.After(100 * time.Millisecond):
			}
		default:
			return fmt.Errorf("delete consumer group %s: %w", group, err)
		}
	}
}

// checkCount checks that st's messages collection holds want documents. With _id the message id
// (unique), that is every record stored exactly once.
//
// The count comes from collStats: FerretDB answers it from SQLite's page statistics (its table's leaf
// cells, one per document), where a count command or CountDocuments decodes every document, which takes
// seconds per 50,000 documents.
func checkCount(ctx context.Context, st *store.Store, want int64) error {
	var stats struct {
		Count int64 `bson:"count"`
	}
	err := st.Database().RunCommand(ctx, bson.D{{Key: "collStats", Value: store.MessagesCollection}}).Decode(&stats)
	if err != nil {
		return fmt.Errorf("count the messages stored in %s: %w", st.Database().Name(), err)
	}
	if stats.Count != want {
		return fmt.Errorf("%d messages stored in %s, want %d", stats.Count, st.Database().Name(), want)
	}
	return nil
}
