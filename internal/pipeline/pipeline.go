// Package pipeline is the ingest pipeline: a franz-go consumer group on messages.inbound that runs each
// record through a list of stages (deserialize, validate, tenant, authorize, transform, persist, notify,
// metrics) into MongoDB, at least once and without duplicates.
//
// # Consuming
//
// One poll loop takes a batch of at most MaxPollRecords records across the member's partitions, runs
// each partition's records through the stages (partitions concurrently, each in offset order), produces
// the dead letters of the batch, commits the last offset of every partition of the batch, and only then
// polls again. Offsets are committed manually (auto-commit off), never past a record that is not stored
// or dead-lettered.
//
// Rebalances are blocked while a batch is in hand (kgo.BlockRebalanceOnPoll) and allowed again after its
// commit (AllowRebalance): a partition is never revoked mid-batch, so the loop cannot commit for a
// partition it no longer owns, and nothing needs doing on revocation. This costs rebalance latency (a
// rebalance waits for the batch in hand, which the poll size bounds), which is why the alternative,
// committing from OnPartitionsRevoked while the batch may still be running, was not chosen: it needs a
// second synchronisation between the callback and the loop, for no gain at these batch sizes. If a
// rebalance is requested while a batch is stuck retrying an outage for longer than the group's rebalance
// timeout, the member is dropped from the group; its commit then fails, and the new owner starts from the
// last committed offset (redelivery, no duplicate).
//
// Memory is bounded whatever the backlog: at most MaxPollRecords records are in hand, and what franz-go
// buffers ahead is bounded by MaxConcurrentFetches × FetchMaxBytes.
//
// # Reads per batch
//
// The tenant and authorize stages read the store through batchReads: the conversations of the whole
// polled batch (its record keys) with one query, and on the membership cache's first miss for a tenant,
// that tenant's memberships of those conversations with one more. A read per partition, conversation or
// sender would cost a round trip each, and on FerretDB a collection scan each (see directory.go).
//
// # Order
//
// A conversation's records share a partition (the record key is the conversation id), and a partition's
// records go through each stage in offset order, the next batch only after this one is committed (the
// bulk writer runs two InsertMany at once, but a partition has one Write in flight, and the commands of
// one Write run one after the other). Message
// ids are ULIDs assigned at send time, so listing by id is send order whatever happens here. Storage and
// events follow send order too, except when a transient error hits only some records of one stage call
// (say, one write error among a bulk insert's documents): those are retried after the others went on.
// Consumers that need strict order sort by message id (the persisted event's id is the message id).
//
// # Errors
//
// A stage marks a record failed with a class. Permanent failures (undecodable, invalid, unknown or
// archived conversation, unauthorized sender, a document the store refuses) send that record to
// messages.dlq with the dlq.* headers, and the others go on. Transient failures (store, Redis or Kafka
// unavailable, timeouts) retry the stage for the failed records with capped exponential backoff and
// jitter; no further poll happens meanwhile, so consumption pauses (franz-go keeps heartbeating the group
// in the background). A batch whose dead letters cannot be produced is not committed.
//
// # Shutdown
//
// When Run's context ends, polling stops; the batch in hand finishes (within Config.DrainTimeout),
// its dead letters are produced and its offsets committed. A batch that cannot finish by then is
// abandoned uncommitted: its records are redelivered to the next owner and stored at most once, the
// message id being the document _id.
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

	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/observability"
)

// Deps are what the stages use.
type Deps struct {
	Keys          *envelope.Keys // records must carry a valid signature; events are signed
	Conversations Conversations  // store.Store.Conversations
	Authorizer    Authorizer     // *authz.Authorizer
	Writer        Writer         // *store.BulkWriter
	Producer      Producer       // events (and, in New, dead letters)
	Registry      prometheus.Registerer
}

// Stages returns the pipeline's stages, in order. Adding a stage is one line here.
func Stages(d Deps) ([]Stage, error) {
	notify, err := newNotifyStage(d.Producer, d.Keys, d.Registry)
	if err != nil {
		return nil, err
	}
	metrics, err := newMetricsStage(d.Registry)
	if err != nil {
		return nil, err
	}
	return []Stage{
		authenticateStage{keys: d.Keys},
		deserializeStage{},
		validateStage{},
		tenantStage{convs: d.Conversations},
		authorizeStage{authz: d.Authorizer},
		transformStage{},
		persistStage{w: d.Writer},
		notify,
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

	// newReads, when set (Service sets it), makes the reads shared by a polled batch's partitions.
	newReads func(keys []string) *batchReads
}

// New returns a pipeline over brokers running stages, producing dead letters with producer (and storing
// those Kafka refuses for good in fallback). It joins the group when Run starts polling.
func New(cfg Config, brokers []string, stages []Stage, producer Producer, fallback DeadLetterStore, reg prometheus.Registerer, logger *slog.Logger) (*Pipeline, error) {
	cfg = cfg.withDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "pipeline")
	if cfg.stages != nil {
		stages = cfg.stages(slices.Clone(stages))
	}
	r, err := newRunner(stages, cfg, reg, logger)
	if err != nil {
		return nil, err
	}
	dlq, err := newDeadLetterer(producer, fallback, cfg, reg, logger)
	if err != nil {
		return nil, err
	}
	p := &Pipeline{
		cfg: cfg, runner: r, dlq: dlq, logger: logger,
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
	p.client, err = kgo.NewClient(p.clientOpts(brokers)...)
	if err != nil {
		return nil, fmt.Errorf("kafka consumer for %v: %w", brokers, err)
	}
	return p, nil
}

func (p *Pipeline) clientOpts(brokers []string) []kgo.Opt {
	logPartitions := func(event string, track func([]int32)) func(context.Context, *kgo.Client, map[string][]int32) {
		return func(_ context.Context, _ *kgo.Client, parts map[string][]int32) {
			if len(parts) > 0 {
				p.logger.Info("partitions "+event, "partitions", parts[kafka.TopicInbound])
				track(parts[kafka.TopicInbound])
			}
		}
	}
	return []kgo.Opt{
		kgo.SeedBrokers(brokers...),
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

// partitionBatch is one partition's records of a batch, in offset order.
type partitionBatch struct {
	partition int32
	items     []*Item
}

// runBatch processes, dead-letters and commits one polled batch. It returns an error only if some of it
// could not be finished, which only a shutdown (drain timeout passed) causes; the poll loop then stops,
// since franz-go's fetch positions have moved past records that are not done.
func (p *Pipeline) runBatch(ctx context.Context, fetches kgo.Fetches) error {
	start := time.Now()
	bctx, cancel := kafka.DrainContext(ctx, p.cfg.DrainTimeout)
	defer cancel()

	var parts []partitionBatch
	index := map[int32]int{}
	var keys []string
	seenKey := map[string]bool{}
	fetches.EachRecord(func(r *kgo.Record) {
		i, ok := index[r.Partition]
		if !ok {
			i = len(parts)
			index[r.Partition] = i
			parts = append(parts, partitionBatch{partition: r.Partition})
		}
		parts[i].items = append(parts[i].items, newItem(r))
		if k := string(r.Key); k != "" && !seenKey[k] {
			seenKey[k] = true
			keys = append(keys, k)
		}
	})
	if p.newReads != nil {
		bctx = withBatchReads(bctx, p.newReads(keys))
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
	for i, pb := range parts {
		wg.Go(func() { errs[i] = p.runner.process(bctx, pb.items) })
	}
	wg.Wait()

	var dead []*Item
	var commit []*kgo.Record
	for i, pb := range parts {
		if errs[i] != nil {
			p.progress.abandoned(pb.partition)
			p.logger.WarnContext(ctx, "batch abandoned uncommitted; its records will be redelivered",
				"partition", pb.partition, "records", len(pb.items), "error", errs[i])
			continue
		}
		for _, it := range pb.items {
			if it.Failed() {
				dead = append(dead, it)
			}
		}
		commit = append(commit, pb.items[len(pb.items)-1].Record)
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
// caller's to flush and close.
func (p *Pipeline) Close() {
	p.closeOnce.Do(p.client.CloseAllowingRebalance)
}
