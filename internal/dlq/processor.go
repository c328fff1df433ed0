package dlq

import (
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/store"
)

// Processor consumes messages.dlq in its own consumer group and stores every record as a dead letter.
// Offsets are committed only after the batch is stored; a redelivered record is a duplicate insert (the
// entry id is deterministic), so nothing is stored twice. A store outage pauses consumption (the insert is
// retried with backoff) instead of losing records.
type Processor struct {
	cfg     Config
	client  *kgo.Client
	store   *store.DeadLetters
	metrics *Metrics
	logger  *slog.Logger
	once    sync.Once
}

// NewProcessor returns a processor over brokers storing into st. It joins the group when Run starts
// polling. m and logger may be nil.
func NewProcessor(cfg Config, brokers []string, st *store.DeadLetters, m *Metrics, logger *slog.Logger) (*Processor, error) {
	cfg = cfg.withDefaults()
	if m == nil {
		m = discardMetrics()
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	p := &Processor{cfg: cfg, store: st, metrics: m, logger: logger.With("component", "dlq-processor")}
	var err error
	p.client, err = kgo.NewClient(
		kgo.SeedBrokers(brokers...),
		kgo.ClientID("platform-dlq"),
		kgo.ConsumerGroup(cfg.GroupID),
		kgo.ConsumeTopics(kafka.TopicDLQ),
		kgo.Balancers(kgo.CooperativeStickyBalancer()),
		kgo.DisableAutoCommit(),
		// A batch is stored and committed before a rebalance may move its partitions.
		kgo.BlockRebalanceOnPoll(),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxBytes(8<<20),
		kgo.MaxConcurrentFetches(2),
		kgo.WithLogger(kafka.Logger(p.logger)),
	)
	if err != nil {
		return nil, fmt.Errorf("kafka consumer of %s for %v: %w", kafka.TopicDLQ, brokers, err)
	}
	return p, nil
}

// Run consumes until ctx ends; the batch in hand is then still stored and committed (within DrainTimeout).
// It returns nil after a graceful stop, an error if the batch in hand had to be abandoned (it will be
// redelivered). Call Close afterwards.
func (p *Processor) Run(ctx context.Context) error {
	p.logger.Info("dlq processor consuming", "topic", kafka.TopicDLQ, "group", p.cfg.GroupID)
	return kafka.PollLoop(ctx, p.client, p.cfg.MaxPollRecords, p.logger, func(ctx context.Context, f kgo.Fetches) error {
		return p.handle(ctx, f.Records())
	})
}

// handle stores a batch (retrying until it is stored or the drain timeout passes) and commits it.
func (p *Processor) handle(ctx context.Context, recs []*kgo.Record) error {
	bctx, cancel := kafka.DrainContext(ctx, p.cfg.DrainTimeout)
	defer cancel()
	now := p.store.Now()
	dls := make([]store.DeadLetter, len(recs))
	for i, r := range recs {
		dls[i] = fromRecord(r, p.cfg.Policy, now)
	}
	b := &backoff.ExponentialBackOff{InitialInterval: 100 * time.Millisecond, RandomizationFactor: 0.5, Multiplier: 2, MaxInterval: 5 * time.Second}
	b.Reset()
	for {
		results, err := p.store.InsertMany(bctx, dls)
		if err == nil {
			p.account(ctx, recs, dls, results)
			break
		}
		if bctx.Err() != nil {
			p.logger.WarnContext(ctx, "dlq batch abandoned uncommitted; it will be redelivered", "records", len(recs), "error", err)
			return fmt.Errorf("store dead letters: %w", err)
		}
		delay := b.NextBackOff()
		p.logger.ErrorContext(ctx, "cannot store dead letters; consumption paused, retrying", "records", len(recs),
			"retry_in", delay.Round(time.Millisecond).String(), "error", err)
		select {
		case <-bctx.Done():
		case <-time.After(delay):
		}
	}
	if err := p.client.CommitRecords(bctx, recs...); err != nil {
		// Not fatal: the entries are stored; a later commit covers them, or they are redelivered (duplicates).
		p.logger.WarnContext(ctx, "dlq offset commit failed; the batch may be redelivered (no duplicates)", "error", err)
	}
	return nil
}

func (p *Processor) account(ctx context.Context, recs []*kgo.Record, dls []store.DeadLetter, results []store.InsertResult) {
	for i, d := range dls {
		res := results[i]
		switch {
		case res.Duplicate:
			p.metrics.Duplicates.Inc()
		case res.Err != nil:
			p.metrics.StoreErrors.Inc()
			p.logger.ErrorContext(ctx, "dead letter refused by the store; skipped", "id", d.ID,
				"dlq_partition", recs[i].Partition, "dlq_offset", recs[i].Offset, "error", res.Err)
		default:
			p.metrics.RecordsIn.WithLabelValues(d.Stage, classLabel(d.ErrorClass)).Inc()
			if d.Status == store.DeadLetterParked {
				p.metrics.Parked.Inc()
			}
			p.logger.InfoContext(ctx, "dead letter stored", "id", d.ID, "status", string(d.Status), "stage", d.Stage,
				"class", d.ErrorClass, "attempts", d.Attempts, "tenant_id", d.TenantID, "error", d.Error)
		}
	}
}

func classLabel(c string) string {
	if c == ClassPermanent || c == ClassTransient {
		return c
	}
	return "unknown"
}

// Close leaves the group and closes the consumer. Call it after Run returned.
func (p *Processor) Close() { p.once.Do(p.client.CloseAllowingRebalance) }

// validTopic matches Kafka's legal topic names.
var validTopic = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,249}$`)

// fromRecord turns a DLQ record into its dead letter. A record without usable dlq.original_* headers (not
// written by the pipeline) is kept under its own DLQ coordinates and parked, never dropped.
func fromRecord(r *kgo.Record, pol Policy, now time.Time) store.DeadLetter {
	h := map[string]string{}
	headers := make([]store.Header, len(r.Headers))
	for i, hd := range r.Headers {
		headers[i] = store.Header{Key: hd.Key, Value: hd.Value}
		if strings.HasPrefix(hd.Key, kafka.DLQHeaderPrefix) || hd.Key == headerContentType {
			h[hd.Key] = clean(string(hd.Value))
		}
	}
	d := store.DeadLetter{
		Key:             nonEmpty(r.Key),
		Payload:         nonEmpty(r.Value),
		Headers:         headers,
		TenantID:        h[kafka.HeaderDLQTenantID],
		Stage:           h[kafka.HeaderDLQStage],
		Error:           h[kafka.HeaderDLQError],
		ErrorClass:      strings.ToLower(h[kafka.HeaderDLQErrorClass]),
		Attempts:        1,
		LastFailureTime: r.Timestamp,
		LastActor:       "processor",
	}
	if d.LastFailureTime.IsZero() {
		d.LastFailureTime = now
	}
	if n, err := strconv.Atoi(h[kafka.HeaderDLQAttempts]); err == nil && n > 0 {
		d.Attempts = n
	}
	if t, err := time.Parse(time.RFC3339Nano, h[kafka.HeaderDLQFirstFailedAt]); err == nil {
		d.FirstFailureTime = t
	}
	topic := h[kafka.HeaderDLQOriginalTopic]
	partition, perr := strconv.ParseInt(h[kafka.HeaderDLQOriginalPartition], 10, 32)
	offset, oerr := strconv.ParseInt(h[kafka.HeaderDLQOriginalOffset], 10, 64)
	wellFormed := validTopic.MatchString(topic) && perr == nil && oerr == nil && partition >= 0 && offset >= 0
	if wellFormed {
		d.OriginalTopic, d.OriginalPartition, d.OriginalOffset = topic, int32(partition), offset
	} else {
		d.OriginalTopic, d.OriginalPartition, d.OriginalOffset = r.Topic, r.Partition, r.Offset
	}
	d.ID = store.DeadLetterID(d.OriginalTopic, d.OriginalPartition, d.OriginalOffset, d.Attempts)
	if d.Stage == "" {
		d.Stage = "unknown"
	}
	if in := decodeInbound(r.Value, h[headerContentType]); in != nil {
		d.MessageID = in.GetId()
		if d.TenantID == "" {
			d.TenantID = in.GetTenantId()
		}
	}

	switch {
	case !wellFormed:
		d.Status, d.Note = store.DeadLetterParked, "not a pipeline DLQ record: dlq.original_topic, _partition or _offset missing or invalid"
	case d.ErrorClass == ClassPermanent:
		d.Status, d.Note = store.DeadLetterParked, "permanent error"
	case d.ErrorClass != ClassTransient:
		d.Status, d.Note = store.DeadLetterParked, "unknown error class"
	case pol.Exhausted(d.Attempts):
		d.Status, d.Note = store.DeadLetterParked, exhaustedNote(d.Attempts, pol.withDefaults().MaxAttempts)
	default:
		next := now.Add(pol.Delay(d.Attempts))
		d.Status, d.NextRetryTime = store.DeadLetterPendingRetry, &next
	}
	return d
}

// decodeInbound decodes an InboundMessage payload (protojson when content-type says JSON), nil when it
// does not decode or carries no id. Best effort: it only fills in the message id and tenant.
func decodeInbound(b []byte, contentType string) *platformv1.InboundMessage {
	if len(b) == 0 {
		return nil
	}
	var in platformv1.InboundMessage
	var err error
	if strings.HasPrefix(strings.ToLower(contentType), "application/json") {
		err = protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(b, &in)
	} else {
		err = proto.Unmarshal(b, &in)
	}
	if err != nil || in.GetId() == "" {
		return nil
	}
	return &in
}

func clean(s string) string { return strings.TrimSpace(strings.ToValidUTF8(s, "\uFFFD")) }

func nonEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}
