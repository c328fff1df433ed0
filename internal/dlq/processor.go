package dlq

import (
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/tracing"
)

// Processor consumes messages.dlq in its own consumer group and stores every record as a dead letter.
// Offsets are committed only after the batch is stored; a redelivered record is a duplicate insert (the
// entry id is deterministic), so nothing is stored twice. A store outage pauses consumption (the insert is
// retried with backoff) instead of losing records.
type Processor struct {
	cfg     Config
	tracer  trace.Tracer // nil: not traced
	keys    *envelope.Keys
	client  *kgo.Client
	store   *store.DeadLetters
	metrics *Metrics
	logger  *slog.Logger
	once    sync.Once
}

// NewProcessor returns a processor connecting with kafkaOpts (seed brokers, TLS, SASL) and storing into
// st; keys verify the original payloads (see FromRecord). It joins the group when Run starts polling. m
// and logger may be nil.
func NewProcessor(cfg Config, kafkaOpts []kgo.Opt, st *store.DeadLetters, keys *envelope.Keys, m *Metrics, logger *slog.Logger) (*Processor, error) {
	cfg = cfg.withDefaults()
	if m == nil {
		m = discardMetrics()
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	p := &Processor{cfg: cfg, tracer: tracing.Tracer(cfg.TracerProvider), keys: keys, store: st, metrics: m,
		logger: logger.With("component", "dlq-processor")}
	var err error
	p.client, err = kgo.NewClient(append(slices.Clone(kafkaOpts),
		kgo.ClientID("platform-dlq"),
		kgo.ConsumerGroup(cfg.GroupID),
		kgo.SessionTimeout(cfg.SessionTimeout),
		kgo.ConsumeTopics(kafka.TopicDLQ),
		kgo.Balancers(kgo.CooperativeStickyBalancer()),
		kgo.DisableAutoCommit(),
		// A batch is stored and committed before a rebalance may move its partitions.
		kgo.BlockRebalanceOnPoll(),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxBytes(8<<20),
		kgo.MaxConcurrentFetches(2),
		kgo.WithLogger(kafka.Logger(p.logger)),
	)...)
	if err != nil {
		return nil, fmt.Errorf("kafka consumer of %s: %w", kafka.TopicDLQ, err)
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
		dls[i] = FromRecord(r, p.keys, p.cfg.Policy, now)
	}
	spans := p.startSpans(ctx, recs)
	// Until stored, or the drain timeout ends the wait: a store outage pauses consumption, never drops.
	results, err := backoff.Retry(bctx, func() ([]store.InsertResult, error) { return p.store.InsertMany(bctx, dls) },
		backoff.WithBackOff(&backoff.ExponentialBackOff{InitialInterval: 100 * time.Millisecond, RandomizationFactor: 0.5, Multiplier: 2, MaxInterval: 5 * time.Second}),
		backoff.WithMaxElapsedTime(0),
		backoff.WithNotify(func(err error, delay time.Duration) {
			p.logger.ErrorContext(ctx, "cannot store dead letters; consumption paused, retrying", "records", len(recs),
				"retry_in", delay.Round(time.Millisecond).String(), "error", err)
		}))
	if err != nil {
		p.logger.WarnContext(ctx, "dlq batch abandoned uncommitted; it will be redelivered", "records", len(recs), "error", err)
		endSpans(spans, dls, nil, err)
		return fmt.Errorf("store dead letters: %w", err)
	}
	endSpans(spans, dls, results, nil)
	p.account(ctx, recs, dls, results)
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
			p.metrics.RecordsIn.WithLabelValues(envelope.StageLabel(d.Stage), envelope.ClassLabel(d.ErrorClass)).Inc()
			if d.Status == store.DeadLetterParked {
				p.metrics.Parked.Inc()
			}
			p.logger.InfoContext(ctx, "dead letter stored", "id", d.ID, "status", string(d.Status), "stage", d.Stage,
				"class", d.ErrorClass, "attempts", d.Attempts, "tenant_id", d.TenantID, "error", d.Error)
		}
	}
}

// startSpans starts a dlq.store span for each record that carries a trace context, as a child of it (so
// a message's trace shows where it was dead-lettered and stored); nil when not traced.
func (p *Processor) startSpans(ctx context.Context, recs []*kgo.Record) []trace.Span {
	if p.tracer == nil {
		return nil
	}
	spans := make([]trace.Span, len(recs))
	for i, r := range recs {
		rctx := tracing.RecordContext(ctx, r)
		if !trace.SpanContextFromContext(rctx).IsValid() {
			continue
		}
		_, spans[i] = p.tracer.Start(rctx, "dlq.store", trace.WithSpanKind(trace.SpanKindConsumer), tracing.RecordAttributes(r))
	}
	return spans
}

// endSpans ends the spans of startSpans with the outcome of each entry: its id, status, stage and class,
// or the error of its insert (err: the batch's, when it was abandoned).
func endSpans(spans []trace.Span, dls []store.DeadLetter, results []store.InsertResult, err error) {
	for i, s := range spans {
		if s == nil {
			continue
		}
		d := dls[i]
		s.SetAttributes(attribute.String("dead_letter.id", d.ID), attribute.String("dead_letter.status", string(d.Status)),
			attribute.String("dead_letter.stage", d.Stage), attribute.String("dead_letter.error_class", d.ErrorClass))
		failed := err
		if failed == nil && results[i].Err != nil {
			failed = results[i].Err
		}
		if failed != nil {
			s.RecordError(failed)
			s.SetStatus(otelcodes.Error, "not stored")
		} else if results[i].Duplicate {
			s.SetAttributes(attribute.Bool("dead_letter.duplicate", true))
		}
		s.End()
	}
}

// Close leaves the group and closes the consumer. Call it after Run returned.
func (p *Processor) Close() { p.once.Do(p.client.CloseAllowingRebalance) }

// validTopic matches Kafka's legal topic names.
var validTopic = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,249}$`)

// FromRecord turns a DLQ record into its dead letter (the processor's view; DirectWriter stores the same).
//
// What a DLQ record says is not trusted: dead-letter records are not signed, so anyone who can produce to
// messages.dlq can write one. The tenant and message id are therefore read only from an original payload
// whose signature verifies with keys (nil keys: never); the stage and class headers are kept as evidence
// but bounded in metrics; a record whose original topic is not a retry target (envelope.RetryTargets) or
// whose payload was truncated is parked, never retried; a record without usable dlq.original_* headers is
// kept under its own DLQ coordinates and parked. Nothing is dropped.
func FromRecord(r *kgo.Record, keys *envelope.Keys, pol Policy, now time.Time) store.DeadLetter {
	h := map[string]string{}
	headers := make([]store.Header, len(r.Headers))
	for i, hd := range r.Headers {
		headers[i] = store.Header{Key: hd.Key, Value: hd.Value}
		if strings.HasPrefix(hd.Key, envelope.DLQHeaderPrefix) {
			h[hd.Key] = clean(string(hd.Value))
		}
	}
	d := store.DeadLetter{
		Key:             nonEmpty(r.Key),
		Payload:         nonEmpty(r.Value),
		Headers:         headers,
		Stage:           envelope.Clip(h[envelope.HeaderDLQStage], 64),
		Error:           h[envelope.HeaderDLQError],
		ErrorClass:      strings.ToLower(envelope.Clip(h[envelope.HeaderDLQErrorClass], 32)),
		Attempts:        1,
		LastFailureTime: r.Timestamp,
		LastActor:       "processor",
	}
	if d.LastFailureTime.IsZero() {
		d.LastFailureTime = now
	}
	if n, err := strconv.Atoi(h[envelope.HeaderDLQAttempts]); err == nil && n > 0 {
		d.Attempts = n
	}
	if t, err := time.Parse(time.RFC3339Nano, h[envelope.HeaderDLQFirstFailedAt]); err == nil {
		d.FirstFailureTime = t
	}
	if h[envelope.HeaderDLQTruncated] == "true" {
		d.PayloadTruncated = true
		d.OriginalSize, _ = strconv.ParseInt(h[envelope.HeaderDLQOriginalSize], 10, 64)
		d.OriginalSHA256 = envelope.Clip(h[envelope.HeaderDLQOriginalSHA256], 64)
	}
	topic := h[envelope.HeaderDLQOriginalTopic]
	partition, perr := strconv.ParseInt(h[envelope.HeaderDLQOriginalPartition], 10, 32)
	offset, oerr := strconv.ParseInt(h[envelope.HeaderDLQOriginalOffset], 10, 64)
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
	if in := verifiedInbound(r, d.OriginalTopic, keys); in != nil {
		d.MessageID, d.TenantID = in.GetId(), in.GetTenantId()
	}

	switch {
	case !wellFormed:
		d.Status, d.Note = store.DeadLetterParked, "not a pipeline DLQ record: dlq.original_topic, _partition or _offset missing or invalid"
	case !envelope.RetryTarget(d.OriginalTopic):
		d.Status, d.Note = store.DeadLetterParked, fmt.Sprintf("original topic %q is not a retry target (only %v): never republished",
			envelope.Clip(d.OriginalTopic, 64), envelope.RetryTargets)
	case d.PayloadTruncated:
		d.Status, d.Note = store.DeadLetterParked, fmt.Sprintf("oversized record (%d bytes, sha256 %s): only its first bytes were kept; it cannot be retried",
			d.OriginalSize, d.OriginalSHA256)
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

// verifiedInbound decodes the dead letter's payload as the original record it was (topic, key, the
// headers without dlq.*) when its signature verifies and it decodes; nil otherwise. Only then are its
// tenant and message id facts rather than claims.
func verifiedInbound(r *kgo.Record, topic string, keys *envelope.Keys) *platformv1.InboundMessage {
	if keys == nil || len(r.Value) == 0 || topic != kafka.TopicInbound {
		return nil
	}
	orig := &kgo.Record{Topic: topic, Key: r.Key, Value: r.Value}
	for _, hd := range r.Headers {
		if !strings.HasPrefix(hd.Key, envelope.DLQHeaderPrefix) {
			orig.Headers = append(orig.Headers, hd)
		}
	}
	if keys.Verify(orig) != nil {
		return nil
	}
	in, err := envelope.DecodeInbound(orig)
	if err != nil || in.GetId() == "" {
		return nil
	}
	return in
}

func clean(s string) string { return strings.TrimSpace(strings.ToValidUTF8(s, "\uFFFD")) }

func nonEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}
