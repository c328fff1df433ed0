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
	// Authorizer decides whether a sender may send (authorize): *authz.Authorizer.
	Authorizer Authorizer
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
		tenantStage{convs: convs},
		authorizeStage{authz: d.Authorizer},
		transformStage{},
		persistStage{w: d.Writer},
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
	progress      *progress
	batchDuration prometheus.Histogram
	commits       *prometheus.CounterVec
	closeOnce     sync.Once
	store         *store.Store
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
	dlq, err := newDeadLetterer(d.Producer, d.DeadLetters, cfg, reg, logger)
	if err != nil {
		return nil, err
	}
	p := &Pipeline{
		cfg: cfg, runner: r, dlq: dlq, logger: logger, store: d.Store,
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
	for _, c := range []prometheus.Collector{p.batchRecords, p.batchDuration, p.commits} {
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
	return []kgo.Opt{
		kgo.ClientID("platform-pipeline"),
		kgo.ConsumerGroup(p.cfg.GroupID),
		kgo.ConsumeTopics(kafka.TopicInbound),
		kgo.Balancers(kgo.CooperativeStickyBalancer()),
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		// A new group starts at the beginning: messages accepted before its first start are not skipped.
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxBytes(p.cfg.FetchMaxBytes),
		kgo.FetchMaxPartitionBytes(p.cfg.FetchMaxPartitionBytes),
		kgo.MaxConcurrentFetches(p.cfg.MaxConcurrentFetches),
		kgo.OnPartitionsAssigned(logPartitions("assigned", p.progress.assigned)),
		kgo.OnPartitionsRevoked(logPartitions("revoked", p.progress.revoked)),
		kgo.OnPartitionsLost(logPartitions("lost", p.progress.revoked)),
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
	return kafka.PollLoop(ctx, p.client, p.cfg.MaxPollRecords, p.logger, p.runBatch)
}

// runBatch processes, dead-letters and commits one polled batch. It returns an error only if some of it
// could not be finished, which only a shutdown (drain timeout passed) causes; the poll loop then stops,
// since franz-go's fetch positions have moved past records that are not done.
func (p *Pipeline) runBatch(ctx context.Context, fetches kgo.Fetches) error {
	start := time.Now()
	bctx, cancel := kafka.DrainContext(ctx, p.cfg.DrainTimeout)
	defer cancel()

	var parts []*Batch
	index := map[int32]int{}
	var keys []string
	seenKey := map[string]bool{}
	fetches.EachRecord(func(r *kgo.Record) {
		i, ok := index[r.Partition]
		if !ok {
			i = len(parts)
			index[r.Partition] = i
			parts = append(parts, &Batch{Partition: r.Partition})
		}
		parts[i].Items = append(parts[i].Items, newItem(r))
		if k := string(r.Key); k != "" && !seenKey[k] {
			seenKey[k] = true
			keys = append(keys, k)
		}
	})
	if p.store != nil {
		reads := NewReads(p.store, keys) // one set of reads for the poll's partitions
		for _, b := range parts {
			b.Reads = reads
		}
	}
	p.batchRecords.Observe(float64(fetches.NumRecords()))
	fetches.EachPartition(func(fp kgo.FetchTopicPartition) {
		if len(fp.Records) > 0 {
			first := fp.Records[0]
			p.progress.fetched(fp.Partition, first.Offset, first.Timestamp, fp.HighWatermark)
		}
	})

	errs := make([]error, len(parts))
	var wg sync.WaitGroup
	for i, b := range parts {
		wg.Go(func() { errs[i] = p.runner.process(bctx, b) })
	}
	wg.Wait()

	var dead []*Item
	var commit []*kgo.Record
	for i, b := range parts {
		if errs[i] != nil {
			p.progress.abandoned(b.Partition)
			p.logger.WarnContext(ctx, "batch abandoned uncommitted; its records will be redelivered",
				"partition", b.Partition, "records", len(b.Items), "error", errs[i])
			continue
		}
		for _, it := range b.Items {
			if it.Failed() {
				dead = append(dead, it)
			}
		}
		commit = append(commit, b.Items[len(b.Items)-1].Record)
	}
	if len(dead) > 0 {
		if err := p.dlq.send(bctx, dead); err != nil {
			return fmt.Errorf("batch not committed: %w", err)
		}
	}
	if len(commit) > 0 {
		if err := p.client.CommitRecords(bctx, commit...); err != nil {
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
	p.batchDuration.Observe(time.Since(start).Seconds())
	p.logger.InfoContext(ctx, "batch done", "records", fetches.NumRecords(), "partitions", len(parts),
		"dead_lettered", len(dead), "committed_partitions", len(commit), "duration_ms", time.Since(start).Milliseconds())
	return errors.Join(errs...)
}

// Close leaves the group and closes the consumer. Call it after Run returned; the producer is the
// caller's to flush and close. It is idempotent.
func (p *Pipeline) Close() {
	p.closeOnce.Do(p.client.CloseAllowingRebalance)
}
