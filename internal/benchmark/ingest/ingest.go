// Package ingest measures the ingest pipeline's throughput against two baselines on the same embedded
// servers (FerretDB via testenv.Mongo, kfake via testenv.Kafka, a real redis-server via testenv.Redis):
//
//   - pipeline: the production wiring (pipeline.Open and Run with config.Load) draining a pre-filled
//     messages.inbound backlog until every record is stored;
//   - ceiling: the store's own ceiling, one writer doing unordered InsertMany of the very same documents
//     in large chunks, no Kafka, into a database of its own with the same indexes;
//   - insert_one: a plain franz-go consumer storing each record with its own single-document insert.
//
// A round runs the three in an order that rotates from round to round; the reported values are medians
// over rounds, the ratios medians of each round's own ratio (side by side, so the machine's noise
// cancels out as much as it can).
package ingest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"google.golang.org/protobuf/proto"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/app"
	"github.com/msgplatform/platform/internal/config"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/testenv"
)

// Defaults of Options.
const (
	DefaultRecords          = 50_000
	DefaultInsertOneRecords = 3_000
	DefaultRounds           = 3
	DefaultCeilingChunk     = store.DefaultBulkMaxDocs
	DefaultTenants          = 3
	DefaultConversations    = 100 // per tenant
	DefaultMembers          = 5   // per conversation, all of them senders
)

// phaseTimeout bounds one measured phase, so a stuck pipeline fails the measurement instead of hanging.
const phaseTimeout = 3 * time.Minute

// Options tunes MeasureIngest; zero values take the defaults above.
type Options struct {
	// Records is the backlog of each round, drained by the pipeline and written by the ceiling.
	Records int
	// InsertOneRecords is the sample the InsertOne consumer stores per round (the first records of the
	// round's backlog): its rate is a rate, and a full backlog at its speed would blow the time budget.
	InsertOneRecords int
	Rounds           int
	// CeilingChunk is the number of documents per InsertMany of the ceiling.
	CeilingChunk int
	// Tenants, Conversations (per tenant) and Members (per conversation) shape the workload.
	Tenants, Conversations, Members int
	// Logger receives the pipeline's logs (nil: discarded).
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&o.Records, DefaultRecords)
	def(&o.InsertOneRecords, DefaultInsertOneRecords)
	def(&o.Rounds, DefaultRounds)
	def(&o.CeilingChunk, DefaultCeilingChunk)
	def(&o.Tenants, DefaultTenants)
	def(&o.Conversations, DefaultConversations)
	def(&o.Members, DefaultMembers)
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return o
}

// Round is what one round measured, in records per second.
type Round struct {
	Pipeline  float64
	Ceiling   float64
	InsertOne float64
	// Order is the order the three ran in this round.
	Order []string
}

// Result is the measurement: medians over rounds.
type Result struct {
	Records          int // per round, pipeline and ceiling
	InsertOneRecords int // per round, InsertOne consumer

	PipelinePerSec  float64
	CeilingPerSec   float64
	InsertOnePerSec float64
	// PipelineVsCeiling and PipelineVsInsertOne are medians of the rounds' own ratios.
	PipelineVsCeiling   float64
	PipelineVsInsertOne float64

	Rounds []Round
}

// Phase names, as in Round.Order.
const (
	PhasePipeline  = "pipeline"
	PhaseCeiling   = "ceiling"
	PhaseInsertOne = "insert_one"
)

// bench is the servers and clients of one measurement.
type bench struct {
	tb       testing.TB
	opts     Options
	cfg      config.Config
	client   *mongo.Client
	st       *store.Store // the pipeline's database
	ceiling  *store.Store // the ceiling's database, same indexes
	single   *store.Store // the InsertOne consumer's database, same indexes
	producer *kgo.Client
	admin    *kadm.Client
	work     *workload
}

// MeasureIngest starts the embedded servers, creates the workload's conversations, and runs the rounds.
// It fails (returns an error) if a round does not store every record exactly once.
func MeasureIngest(tb testing.TB, opts Options) (Result, error) {
	tb.Helper()
	opts = opts.withDefaults()
	b, err := setup(tb, opts)
	if err != nil {
		return Result{}, err
	}
	res := Result{Records: opts.Records, InsertOneRecords: opts.InsertOneRecords}
	for r := range opts.Rounds {
		round, err := b.round(r)
		if err != nil {
			return res, fmt.Errorf("round %d: %w", r+1, err)
		}
		tb.Logf("ingest round %d (%v): pipeline %.0f/s, ceiling %.0f/s, insert_one %.0f/s → %.2f of the ceiling, %.1f× insert_one",
			r+1, round.Order, round.Pipeline, round.Ceiling, round.InsertOne, round.Pipeline/round.Ceiling, round.Pipeline/round.InsertOne)
		res.Rounds = append(res.Rounds, round)
	}
	res.PipelinePerSec = median(res.Rounds, func(r Round) float64 { return r.Pipeline })
	res.CeilingPerSec = median(res.Rounds, func(r Round) float64 { return r.Ceiling })
	res.InsertOnePerSec = median(res.Rounds, func(r Round) float64 { return r.InsertOne })
	res.PipelineVsCeiling = median(res.Rounds, func(r Round) float64 { return r.Pipeline / r.Ceiling })
	res.PipelineVsInsertOne = median(res.Rounds, func(r Round) float64 { return r.Pipeline / r.InsertOne })
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

func setup(tb testing.TB, opts Options) (*bench, error) {
	vars := map[string]string{
		"KAFKA_BROKERS": testenv.Kafka(tb), "MONGO_URI": testenv.Mongo(tb), "MONGO_DATABASE": "platform",
		"REDIS_URL": testenv.Redis(tb), "SHUTDOWN_TIMEOUT": "30s", "KAFKA_SIGNING_KEYS": testenv.SigningKeysSpec,
		"HTTP_ADDR": "127.0.0.1:0", "METRICS_ADDR": "127.0.0.1:0", "SHUTDOWN_DRAIN_DELAY": "0s", "WATCHERS_ENABLED": "false",
	}
	cfg, err := config.Load(func(k string) string { return vars[k] })
	if err != nil {
		return nil, fmt.Errorf("configuration: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), phaseTimeout)
	defer cancel()
	client, err := store.Connect(ctx, cfg.MongoURI)
	if err != nil {
		return nil, err
	}
	tb.Cleanup(func() { _ = client.Disconnect(context.Background()) })
	b := &bench{tb: tb, opts: opts, cfg: cfg, client: client,
		st: store.New(client.Database(cfg.MongoDatabase)), ceiling: store.New(client.Database("bench_ceiling")),
		single: store.New(client.Database("bench_insert_one"))}
	for _, s := range []*store.Store{b.st, b.ceiling, b.single} {
		if err := s.EnsureIndexes(ctx); err != nil {
			return nil, fmt.Errorf("indexes: %w", err)
		}
	}
	b.producer, err = kafka.NewProducer(cfg.KafkaBrokers, cfg.ProduceTimeout)
	if err != nil {
		return nil, err
	}
	tb.Cleanup(b.producer.Close)
	b.admin = kadm.NewClient(b.producer)
	b.work, err = createConversations(ctx, b.st, opts.Tenants, opts.Conversations, opts.Members, 1)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// round fills the backlog with opts.Records new messages, then runs the three phases in this round's
// order.
func (b *bench) round(r int) (Round, error) {
	ctx, cancel := context.WithTimeout(context.Background(), phaseTimeout)
	defer cancel()
	starts, err := b.admin.ListEndOffsets(ctx, kafka.TopicInbound)
	if err != nil {
		return Round{}, fmt.Errorf("inbound offsets: %w", err)
	}
	if err := starts.Error(); err != nil {
		return Round{}, fmt.Errorf("inbound offsets: %w", err)
	}
	recs := make([]*kgo.Record, b.opts.Records)
	docs := make([]store.Message, b.opts.Records)
	now := time.Now()
	for i := range recs {
		in := b.work.message(now)
		if recs[i], err = record(in); err != nil {
			return Round{}, err
		}
		docs[i] = storedMessage(in)
	}
	for chunk := range slices.Chunk(recs, 5000) {
		if err := b.producer.ProduceSync(ctx, chunk...).FirstErr(); err != nil {
			return Round{}, fmt.Errorf("fill the backlog: %w", err)
		}
	}

	phases := []string{PhasePipeline, PhaseCeiling, PhaseInsertOne}
	order := append(phases[r%3:], phases[:r%3]...)
	out := Round{Order: order}
	for _, p := range order {
		var err error
		switch p {
		case PhasePipeline:
			out.Pipeline, err = b.runPipeline(r)
		case PhaseCeiling:
			out.Ceiling, err = b.runCeiling(r, docs)
		case PhaseInsertOne:
			out.InsertOne, err = b.runInsertOne(r, starts)
		}
		if err != nil {
			return out, fmt.Errorf("%s: %w", p, err)
		}
	}
	return out, nil
}

// runPipeline runs the pipeline role of the production composition root (app.Run, as services/pipeline
// does) and measures the time from its start until its counter of stored messages, read from its
// /metrics endpoint, reaches the backlog; it then stops it gracefully and checks the count.
func (b *bench) runPipeline(r int) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), phaseTimeout)
	defer cancel()
	runCtx, stop := context.WithCancel(context.Background())
	defer stop()
	ready := make(chan app.Addresses, 1)
	exited := make(chan error, 1)
	logger := b.opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	start := time.Now()
	go func() {
		exited <- app.Run(runCtx, b.cfg, logger, app.Roles{Pipeline: true}, func(a app.Addresses) { ready <- a })
	}()
	var metricsURL string
	select {
	case a := <-ready:
		metricsURL = "http://" + a.Metrics + "/metrics"
	case err := <-exited:
		return 0, fmt.Errorf("pipeline did not start: %w", err)
	}

	want := float64(b.opts.Records)
	var elapsed time.Duration
	for {
		stored, dead, err := pipelineCounts(ctx, metricsURL)
		if err != nil {
			return 0, err
		}
		if stored >= want {
			elapsed = time.Since(start)
			break
		}
		if dead > 0 {
			return 0, fmt.Errorf("%.0f records dead-lettered; the workload should have none", dead)
		}
		select {
		case err := <-exited:
			return 0, fmt.Errorf("pipeline stopped after %.0f of %.0f records: %v", stored, want, err)
		case <-ctx.Done():
			return 0, fmt.Errorf("%.0f of %.0f records stored by the deadline", stored, want)
		case <-time.After(10 * time.Millisecond):
		}
	}
	stop()
	if err := <-exited; err != nil {
		return 0, fmt.Errorf("stop the pipeline: %w", err)
	}
	checkStart := time.Now()
	if err := checkCount(ctx, b.st, int64(r+1)*int64(b.opts.Records)); err != nil {
		return 0, err
	}
	b.tb.Logf("pipeline: %.0f records in %v; counted in %v", want, elapsed.Round(time.Millisecond), time.Since(checkStart).Round(time.Millisecond))
	return want / elapsed.Seconds(), nil
}

// pipelineCounts reads the pipeline's counters from its /metrics: messages through every stage (stored or
// duplicate), and dead letters.
func pipelineCounts(ctx context.Context, url string) (stored, dead float64, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, 0, fmt.Errorf("pipeline metrics: %w", err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return 0, 0, fmt.Errorf("pipeline metrics: %w", err)
	}
	for _, mf := range mfs {
		var sum float64
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue()
		}
		switch mf.GetName() {
		case "platform_pipeline_messages_total":
			stored = sum
		case "platform_pipeline_dead_letters_total":
			dead = sum
		}
	}
	return stored, dead, nil
}

// checkCount checks that st's messages collection holds want documents. With _id the message id (unique),
// that is every record stored exactly once.
//
// The count comes from collStats: FerretDB answers it from SQLite's page statistics (its table's leaf
// cells, one per document), where a count command or CountDocuments decodes every document, which takes
// seconds per 50,000 documents and would eat the time budget.
func checkCount(ctx context.Context, st *store.Store, want int64) error {
	var stats struct {
		Count int64 `bson:"count"`
	}
	err := st.Database().RunCommand(ctx, bson.D{{Key: "collStats", Value: store.MessagesCollection}}).Decode(&stats)
	if err != nil {
		return fmt.Errorf("count stored messages: %w", err)
	}
	if stats.Count != want {
		return fmt.Errorf("%d messages stored, want %d", stats.Count, want)
	}
	return nil
}

// runCeiling writes docs with one writer, unordered InsertMany of CeilingChunk documents at a time.
func (b *bench) runCeiling(r int, docs []store.Message) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), phaseTimeout)
	defer cancel()
	start := time.Now()
	for chunk := range slices.Chunk(docs, b.opts.CeilingChunk) {
		n, dups, err := b.ceiling.Messages.InsertMany(ctx, chunk)
		if err != nil {
			return 0, err
		}
		if n != len(chunk) || dups != 0 {
			return 0, fmt.Errorf("%d of %d inserted, %d duplicates", n, len(chunk), dups)
		}
	}
	elapsed := time.Since(start)
	if err := checkCount(ctx, b.ceiling, int64(r+1)*int64(len(docs))); err != nil {
		return 0, err
	}
	return float64(len(docs)) / elapsed.Seconds(), nil
}

// runInsertOne is the naive baseline: a consumer group positioned at the round's start, storing each
// record with its own insert command (a Messages.InsertMany of one message: on the wire the same
// single-document insert as InsertOne) and committing what it polled, until InsertOneRecords are stored.
func (b *bench) runInsertOne(r int, starts kadm.ListedOffsets) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), phaseTimeout)
	defer cancel()
	group := fmt.Sprintf("bench-insert-one-%d", r)
	if err := b.admin.CommitAllOffsets(ctx, group, starts.Offsets()); err != nil {
		return 0, fmt.Errorf("position the group: %w", err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(b.cfg.KafkaBrokers...), kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(kafka.TopicInbound), kgo.DisableAutoCommit())
	if err != nil {
		return 0, fmt.Errorf("consumer: %w", err)
	}
	defer cl.Close()
	want := b.opts.InsertOneRecords
	done := 0
	// The clock starts at the first record, not before the group join: the baseline is not charged for
	// it (the pipeline is), so the ratio errs in the baseline's favour.
	var start time.Time
	for done < want {
		fetches := cl.PollRecords(ctx, 1000)
		if err := ctx.Err(); err != nil {
			return 0, fmt.Errorf("%d of %d stored: %w", done, want, err)
		}
		var handled []*kgo.Record
		if start.IsZero() && fetches.NumRecords() > 0 {
			start = time.Now()
		}
		for _, rec := range fetches.Records() {
			if done == want {
				break
			}
			in := &platformv1.InboundMessage{}
			if err := proto.Unmarshal(rec.Value, in); err != nil {
				return 0, fmt.Errorf("decode: %w", err)
			}
			if _, _, err := b.single.Messages.InsertMany(ctx, []store.Message{storedMessage(in)}); err != nil {
				return 0, err
			}
			handled = append(handled, rec)
			done++
		}
		if len(handled) > 0 {
			if err := cl.CommitRecords(ctx, handled...); err != nil {
				return 0, fmt.Errorf("commit: %w", err)
			}
		}
	}
	elapsed := time.Since(start)
	if err := checkCount(ctx, b.single, int64(r+1)*int64(want)); err != nil {
		return 0, err
	}
	return float64(want) / elapsed.Seconds(), nil
}
