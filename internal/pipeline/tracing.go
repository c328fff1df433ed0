package pipeline

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/msgplatform/platform/internal/tracing"
)

// Tracing. A record carries its trace in the W3C traceparent header (put there by the gateway's
// producer, kept by dead letters and their retries). Every attempt of a stage over a partition's batch
// is a span "pipeline.<stage>" of its own trace (one batch serves many traces), linked to each record's
// trace. The stages on a record's own path (recordSpanStages: authorize, persist with its bulk write,
// notify) add, per traced record, a child span of the record's trace with the same name, linked back to
// the batch span, marked as an error when the record failed there. notify's events carry the record's
// notify span in their traceparent header (tracing.WithKeyed, by message id), so the trace goes on to
// whoever reads messages.events.

// maxBatchLinks caps the links of a batch span: the SDK keeps 128 by default (OTEL_SPAN_LINK_COUNT_LIMIT)
// and evicts the others at a cost per link; every record's own spans link back to the batch span anyway.
const maxBatchLinks = 128

// recordSpanStages are the stages that get a span per record, in the record's own trace.
var recordSpanStages = map[string]bool{StageAuthorize: true, StagePersist: true, StageNotify: true}

// stageSpans are the spans of one attempt of a stage: the batch's, and the traced records'.
type stageSpans struct {
	batch   trace.Span
	records []trace.Span // per item, nil for an untraced record (or all nil)
}

// recordSpanContext is the trace it's record carries (its remote parent), extracted once and kept as the
// record's Context.
func recordSpanContext(it *Item) trace.SpanContext {
	r := it.Record
	if r.Context == nil {
		r.Context = tracing.RecordContext(context.Background(), r)
	}
	return trace.SpanContextFromContext(r.Context)
}

// startSpans starts the spans of an attempt of stage over items and returns the stage's context, which
// holds the batch span (and, for the records' spans, tracing.WithKeyed by message id).
func (r *runner) startSpans(ctx context.Context, stage string, partition int32, items []*Item, attempt int) (context.Context, *stageSpans) {
	links := make([]trace.Link, 0, min(len(items), maxBatchLinks))
	traced := 0
	for _, it := range items {
		if sc := recordSpanContext(it); sc.IsValid() {
			if traced++; len(links) < maxBatchLinks {
				links = append(links, trace.Link{SpanContext: sc})
			}
		}
	}
	ctx, batch := r.tracer.Start(ctx, "pipeline."+stage, trace.WithLinks(links...), trace.WithAttributes(
		attribute.Int("messaging.kafka.partition", int(partition)), attribute.Int("pipeline.records", len(items)),
		attribute.Int("pipeline.attempt", attempt), attribute.Int("pipeline.traced_records", traced)))
	s := &stageSpans{batch: batch}
	if !recordSpanStages[stage] || traced == 0 {
		return ctx, s
	}
	s.records = make([]trace.Span, len(items))
	keyed := make(map[string]trace.SpanContext, traced)
	back := trace.WithLinks(trace.Link{SpanContext: batch.SpanContext()})
	for i, it := range items {
		if !trace.SpanContextFromContext(it.Record.Context).IsValid() {
			continue
		}
		_, sp := r.tracer.Start(it.Record.Context, "pipeline."+stage, back, tracing.RecordAttributes(it.Record))
		s.records[i] = sp
		if id := it.Message.ID; id != "" {
			keyed[id] = sp.SpanContext()
		}
	}
	return tracing.WithKeyed(ctx, keyed), s
}

// end ends the spans, marking the records that failed (and the batch span when any did). Nil s: no-op.
func (s *stageSpans) end(items []*Item) {
	if s == nil {
		return
	}
	failed := 0
	for i, it := range items {
		if it.Failed() {
			failed++
		}
		if s.records == nil || s.records[i] == nil {
			continue
		}
		if it.Failed() {
			s.records[i].SetStatus(codes.Error, string(it.Class())+": "+it.Err().Error())
		}
		s.records[i].End()
	}
	if failed > 0 {
		s.batch.SetAttributes(attribute.Int("pipeline.failed", failed))
		s.batch.SetStatus(codes.Error, "records failed")
	}
	s.batch.End()
}
