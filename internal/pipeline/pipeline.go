package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/msgplatform/platform/internal/convcache"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/observability"
	"github.com/msgplatform/platform/internal/store"
)

// Deps are what the pipeline works with; the process's composition root (internal/app) provides them.
type Deps struct {
	// Kafka are the consumer's connection options (seed brokers, TLS, SASL).
	Kafka []kgo.Opt
	// Keys verify the records' signatures (authenticate).
	Keys Verifier
	// Store is read for the batch's conversations and memberships (tenant, authorize).
	Store *store.Store
	// Active remembers conversations seen active (tenant), so they are not read again for every poll;
	// nil reads them every time.
	Active *convcache.Cache
	// Authorizer decides whether a sender may send (authorize): *authz.Authorizer.
	Authorizer Authorizer
	// Members is primed with the memberships the batches read (*authz.MembershipCache, the one behind
	// Authorizer); nil primes nothing.
	Members MemberPrimer
	// Writer stores the messages (persist): *store.BulkWriter.
	Writer Writer
	// Events publishes the persisted events (notify): *events.Publisher.
	Events Events
	// Producer produces the dead letters to messages.dlq; DeadLetters stores those Kafka refuses for good.
	Producer    Producer
	DeadLetters DeadLetterStore
	Registry    prometheus.Registerer
	Logger      *slog.Logger
}

// stages returns the pipeline's stages, in order. Adding a stage is one line here.
func stages(d Deps) ([]Stage, error) {
	metrics, err := newMetricsStage(d.Registry)
	if err != nil {
		return nil, err
	}
	var convs Conversations
	if d.Store != nil {
		convs = d.Store.Conversations
	}
	return []Stage{
		authenticateStage{keys: d.Keys},
		deserializeStage{},
		validateStage{},
		tenantStage{convs: convs, active: d.Active},
		authorizeStage{authz: d.Authorizer},
		transformStage{},
		persistStage{w: d.Writer, st: d.Store},
		notifyStage{events: d.Events},
		metrics,
	}, nil
}

// Pipeline consumes messages.inbound in the consumer group and runs the records through the stages.
type Pipeline struct {
	cfg    Config
	client *kgo.Client
	runner *runner
	dlq    *deadLetterer
	logger *slog.Logger

	batchRecords  prometheus.Histogram
	inFlight      prometheus.Gauge
	progress      *progress
	batchDuration prometheus.Histogram
	commits       *prometheus.CounterVec
	closeOnce     sync.Once
	store         *store.Store
	members       MemberPrimer
	tracker       *tracker

	// The stages by phase of the pipelined loop: up to persist, persist, and from notify on.
	prepareStages, persistStages, finishStages []Stage
}

// New returns the pipeline over d. It joins the group when Run starts polling.
func New(cfg Config, d Deps) (*Pipeline, error) {
	cfg = cfg.withDefaults()
	logger := d.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "pipeline")
	reg := d.Registry
	st, err := stages(d)
	if err != nil {
		return nil, err
	}
	if cfg.stages != nil {
		st = cfg.stages(slices.Clone(st))
	}
	r, err := newRunner(st, cfg, reg, logger)
	if err != nil {
		return nil, err
	}
	persistAt, notifyAt := len(st), len(st)
	for i, s := range st {
		switch s.Name() {
		case StagePersist:
			persistAt = i
		case StageNotify:
			notifyAt = i
		}
	}
	notifyAt = max(notifyAt, persistAt)
	dlq, err := newDeadLetterer(d.Producer, d.DeadLetters, cfg, reg, logger)
	if err != nil {
		return nil, err
	}
	p := &Pipeline{
		cfg: cfg, runner: r, dlq: dlq, logger: logger, store: d.Store, members: d.Members, tracker: newTracker(),
		prepareStages: st[:persistAt], persistStages: st[persistAt:notifyAt], finishStages: st[notifyAt:],
		batchRecords: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: observability.Namespace, Subsystem: "pipeline", Name: "batch_records",
			Help:    "Records per polled batch.",
			Buckets: []float64{1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000},
		}),
		batchDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: observability.Namespace, Subsystem: "pipeline", Name: "batch_duration_seconds",
			Help:    "Time from polling a batch to committing it.",
			Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
		commits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: observability.Namespace, Subsystem: "pipeline", Name: "commits_total",
			Help: "Offset commits by result (ok, error). A failed commit means redelivery, never loss.",
		}, []string{"result"}),
	}
	p.inFlight = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: observability.Namespace, Subsystem: "pipeline", Name: "polls_in_flight",
		Help: "Polled batches in hand (preparing, waiting to be written, being written, finishing): at most 4.",
	})
	for _, c := range []prometheus.Collector{p.batchRecords, p.batchDuration, p.commits, p.inFlight} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register pipeline metrics: %w", err)
		}
	}
	if p.progress, err = newProgress(reg); err != nil {
		return nil, fmt.Errorf("register pipeline progress metrics: %w", err)
	}
	r.onRetry = p.progress.retried
	p.client, err = kgo.NewClient(append(slices.Clone(d.Kafka), p.clientOpts()...)...)
	if err != nil {
		return nil, fmt.Errorf("kafka consumer of %s: %w", kafka.TopicInbound, err)
	}
	return p, nil
}

func (p *Pipeline) clientOpts() []kgo.Opt {
	logPartitions := func(event string, track func([]int32)) func(context.Context, *kgo.Client, map[string][]int32) {
		return func(_ context.Context, _ *kgo.Client, parts map[string][]int32) {
			if len(parts) > 0 {
				p.logger.Info("partitions "+event, "partitions", parts[kafka.TopicInbound])
				track(parts[kafka.TopicInbound])
			}
		}
	}
	// A revocation waits for the in-flight polls of the revoked partitions (bounded by the drain
	// timeout), whose finish phase commits them, before the partitions change hands.
	revoked := func(parts []int32) {
		ctx, cancel := context.WithTimeout(context.Background(), p.cfg.DrainTimeout)
		defer cancel()
		if err := p.tracker.revoked(ctx, parts); err != nil {
			p.logger.Warn("partitions revoked with work in flight; it will be redelivered to their next owner", "error", err)
		}
		p.progress.revoked(parts)
	}
	lost := func(parts []int32) {
		p.tracker.lost(parts)
		p.progress.revoked(parts)
	}
	assigned := func(parts []int32) {
		p.tracker.assigned(parts)
		p.progress.assigned(parts)
	}
	return []kgo.Opt{
		kgo.ClientID("platform-pipeline"),
		kgo.ConsumerGroup(p.cfg.GroupID),
		kgo.SessionTimeout(p.cfg.SessionTimeout),
		kgo.ConsumeTopics(kafka.TopicInbound),
		kgo.Balancers(kgo.CooperativeStickyBalancer()),
		kgo.DisableAutoCommit(),
		// A new group starts at the beginning: messages accepted before its first start are not skipped.
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxBytes(p.cfg.FetchMaxBytes),
		kgo.FetchMaxPartitionBytes(p.cfg.FetchMaxPartitionBytes),
		kgo.MaxConcurrentFetches(p.cfg.MaxConcurrentFetches),
		kgo.OnPartitionsAssigned(logPartitions("assigned", assigned)),
		kgo.OnPartitionsRevoked(logPartitions("revoked", revoked)),
		kgo.OnPartitionsLost(logPartitions("lost", lost)),
		kgo.WithLogger(kafka.Logger(p.logger)),
	}
}

// Run consumes until ctx ends, then finishes and commits the batch in hand (see the package doc). It
// returns nil after a graceful stop, an error when the batch in hand had to be abandoned. Call Close
// afterwards.
func (p *Pipeline) Run(ctx context.Context) error {
	p.logger.Info("pipeline consuming", "topic", kafka.TopicInbound, "group", p.cfg.GroupID,
		"max_poll_records", p.cfg.MaxPollRecords, "bulk_max_docs", p.cfg.BulkMaxDocs, "bulk_max_delay", p.cfg.BulkMaxDelay.String())
	refreshCtx, stopRefresh := context.WithCancel(ctx)
	defer stopRefresh()
	go p.progress.runRefresh(refreshCtx, kadm.NewClient(p.client), p.cfg.GroupID, kafka.TopicInbound, p.logger)

	// Three phases, each a goroutine, each handling one poll at a time, in poll order: while one poll is
	// written, the next one is prepared and the one before is finished. Unbuffered hand-offs bound the
	// polls in hand to four (preparing, waiting, persisting, finishing).
	prepared := make(chan *poll)
	persisted := make(chan *poll, 1)
	phases := sync.WaitGroup{}
	phases.Go(func() {
		defer close(persisted)
		for pl := range prepared {
			p.runPhase(pl, p.persistStages)
			persisted <- pl
		}
	})
	phases.Go(func() {
		for pl := range persisted {
			p.finish(ctx, pl)
		}
	})
	p.pollAndPrepare(ctx, prepared)
	close(prepared)
	phases.Wait()
	return p.tracker.err()
}

// pollAndPrepare polls until ctx ends (or a poll had to be abandoned), runs each poll's stages up to
// persist and hands it on.
func (p *Pipeline) pollAndPrepare(ctx context.Context, prepared chan<- *poll) {
	// Slow start: after a start or an idle moment the first polls are small, so the first write begins
	// after a few hundred records are prepared rather than thousands; each poll with records doubles the
	// size, up to MaxPollRecords.
	size := min(firstPollRecords, p.cfg.MaxPollRecords)
	for ctx.Err() == nil && p.tracker.err() == nil {
		fetches := p.client.PollRecords(ctx, size)
		if fetches.IsClientClosed() {
			return
		}
		fetchErrs := 0
		fetches.EachError(func(topic string, partition int32, err error) {
			if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
				return
			}
			fetchErrs++
			p.logger.ErrorContext(ctx, "fetch error", "topic", topic, "partition", partition, "error", err)
		})
		if fetches.NumRecords() == 0 {
			size = min(firstPollRecords, p.cfg.MaxPollRecords)
			if fetchErrs > 0 && ctx.Err() == nil { // do not spin on a persistent fetch error
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
			continue
		}
		size = min(2*size, p.cfg.MaxPollRecords)
		pl := p.newPoll(ctx, fetches)
		p.runPhase(pl, p.prepareStages)
		prepared <- pl
	}
}

// firstPollRecords is the size of the first poll after a start or an idle moment (see pollAndPrepare).
const firstPollRecords = 250

// poll is one PollRecords' records on their way: a batch per partition, in offset order.
type poll struct {
	start   time.Time
	records int
	parts   []*Batch
	errs    []error // per part: abandoned (ctx ended during transient retries)
	ctx     context.Context
	cancel  context.CancelFunc
}

func (p *Pipeline) newPoll(ctx context.Context, fetches kgo.Fetches) *poll {
	// The poll's work goes on after ctx ends (a graceful stop finishes it), for at most the drain timeout.
	pctx, cancel := kafka.DrainContext(ctx, p.cfg.DrainTimeout)
	pl := &poll{start: time.Now(), records: fetches.NumRecords(), ctx: pctx, cancel: cancel}
	index := map[int32]int{}
	var keys []string
	seenKey := map[string]bool{}
	fetches.EachRecord(func(r *kgo.Record) {
		i, ok := index[r.Partition]
		if !ok {
			i = len(pl.parts)
			index[r.Partition] = i
			pl.parts = append(pl.parts, &Batch{Partition: r.Partition})
		}
		pl.parts[i].Items = append(pl.parts[i].Items, newItem(r))
		if k := string(r.Key); k != "" && !seenKey[k] {
			seenKey[k] = true
			keys = append(keys, k)
		}
	})
	pl.errs = make([]error, len(pl.parts))
	if p.store != nil {
		reads := NewReads(p.store, keys, p.members) // one set of reads for the poll's partitions
		for _, b := range pl.parts {
			b.Reads = reads
		}
	}
	p.batchRecords.Observe(float64(pl.records))
	fetches.EachPartition(func(fp kgo.FetchTopicPartition) {
		if len(fp.Records) > 0 {
			first := fp.Records[0]
			p.progress.fetched(fp.Partition, first.Offset, first.Timestamp, fp.HighWatermark)
		}
	})
	parts := make([]int32, len(pl.parts))
	for i, b := range pl.parts {
		parts[i] = b.Partition
	}
	p.tracker.taken(parts)
	p.inFlight.Inc()
	return pl
}

// runPhase runs stages over every partition of the poll still going, partitions concurrently.
func (p *Pipeline) runPhase(pl *poll, stages []Stage) {
	if len(stages) == 0 {
		return
	}
	var wg sync.WaitGroup
	for i, b := range pl.parts {
		if pl.errs[i] != nil {
			continue
		}
		wg.Go(func() { pl.errs[i] = p.runner.processStages(pl.ctx, b, stages) })
	}
	wg.Wait()
}

// finish runs the last stages (notify, metrics), dead-letters what failed and commits, per partition,
// the last offset of the poll: only for partitions whose records are all stored or dead-lettered, still
// assigned to this member, and with no earlier batch abandoned (committing past abandoned records would
// lose them).
func (p *Pipeline) finish(ctx context.Context, pl *poll) {
	defer pl.cancel()
	p.runPhase(pl, p.finishStages)
	var dead []*Item
	var done []int32
	for i, b := range pl.parts {
		if pl.errs[i] != nil {
			p.progress.abandoned(b.Partition)
			p.tracker.abandon(b.Partition, pl.errs[i])
			p.logger.WarnContext(ctx, "batch abandoned uncommitted; its records will be redelivered",
				"partition", b.Partition, "records", len(b.Items), "error", pl.errs[i])
			continue
		}
		for _, it := range b.Items {
			if it.Failed() {
				dead = append(dead, it)
			}
		}
		done = append(done, b.Partition)
	}
	if len(dead) > 0 {
		if err := p.dlq.send(pl.ctx, dead); err != nil {
			for _, part := range done {
				p.tracker.abandon(part, fmt.Errorf("not committed: %w", err))
			}
			done = nil
		}
	}
	var commit []*kgo.Record
	for _, b := range pl.parts {
		if slices.Contains(done, b.Partition) && p.tracker.committable(b.Partition) {
			commit = append(commit, b.Items[len(b.Items)-1].Record)
		}
	}
	if len(commit) > 0 {
		if err := p.client.CommitRecords(pl.ctx, commit...); err != nil {
			// Not fatal: the records are stored; a later commit covers them, or they are redelivered.
			p.commits.WithLabelValues("error").Inc()
			p.logger.WarnContext(ctx, "offset commit failed; the batch may be redelivered (no duplicates)", "error", err)
		} else {
			p.commits.WithLabelValues("ok").Inc()
			for _, r := range commit {
				p.progress.committed(r.Partition, r.Offset+1)
			}
		}
	}
	parts := make([]int32, len(pl.parts))
	for i, b := range pl.parts {
		parts[i] = b.Partition
	}
	p.tracker.released(parts)
	p.inFlight.Dec()
	p.batchDuration.Observe(time.Since(pl.start).Seconds())
	p.logger.InfoContext(ctx, "batch done", "records", pl.records, "partitions", len(pl.parts),
		"dead_lettered", len(dead), "committed_partitions", len(commit), "duration_ms", time.Since(pl.start).Milliseconds())
}

// Close leaves the group and closes the consumer. Call it after Run returned; the producer is the
// caller's to flush and close. It is idempotent.
func (p *Pipeline) Close() {
	p.closeOnce.Do(p.client.CloseAllowingRebalance)
}
