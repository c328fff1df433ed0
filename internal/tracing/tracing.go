// Package tracing is the platform's OpenTelemetry tracing: the SDK set up from the standard OTEL_*
// variables (off by default), the W3C trace-context propagation through Kafka record headers, and the
// trace id in the logs.
//
// Whether tracing is on is decided by internal/config (Config.Tracing); the composition root then calls
// NewProvider, whose OTLP exporter, sampler and resource read the OTEL_* variables themselves (the
// SDK's own environment support, as every OpenTelemetry SDK does), so the standard names keep their
// standard meaning. Libraries receive a trace.TracerProvider (nil or a no-op one when tracing is off) and
// never build one.
package tracing

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/msgplatform/platform/internal/envelope"
)

// Scope is the instrumentation scope (tracer name) of the platform's own spans.
const Scope = "github.com/msgplatform/platform"

// Propagator is the propagation format of every hop: W3C trace context (the traceparent and tracestate
// headers), in gRPC metadata and in Kafka record headers alike.
var Propagator propagation.TextMapPropagator = propagation.TraceContext{}

// HeaderTraceparent is the W3C header a traced Kafka record carries (the envelope's definition).
const HeaderTraceparent = envelope.HeaderTraceparent

// NewProvider returns an SDK tracer provider exporting over OTLP, in batches, with protocol "grpc" or
// "http/protobuf" (config.OTLPProtocols). The exporter reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT,
// _HEADERS, _INSECURE, _TIMEOUT…; the sampler OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG (default
// parentbased_always_on); the resource OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, with service.name
// defaulting to serviceName. shutdown flushes the spans in hand and stops the exporter.
func NewProvider(ctx context.Context, serviceName, protocol string) (tp trace.TracerProvider, shutdown func(context.Context) error, err error) {
	var exp sdktrace.SpanExporter
	switch protocol {
	case "grpc":
		exp, err = otlptracegrpc.New(ctx)
	case "http/protobuf":
		exp, err = otlptracehttp.New(ctx)
	default:
		err = fmt.Errorf("protocol %q: want grpc or http/protobuf", protocol)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("otlp trace exporter: %w", err)
	}
	// Later resources win a merge: the environment's (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES)
	// overrides the default service name.
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(attribute.String("service.name", serviceName)))
	if err == nil {
		res, err = resource.Merge(res, resource.Environment())
	}
	if err != nil {
		return nil, nil, fmt.Errorf("trace resource: %w", err)
	}
	sdk := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	return sdk, sdk.Shutdown, nil
}

// Enabled reports whether tp records anything: false for nil and for the no-op provider, so callers can
// skip the work of tracing (header extraction, span creation) altogether when it is off.
func Enabled(tp trace.TracerProvider) bool {
	if tp == nil {
		return false
	}
	_, isNoop := tp.(noop.TracerProvider)
	return !isNoop
}

// Tracer is tp's tracer of the platform's own spans (Scope), or nil when tp records nothing: callers then
// skip the work of tracing altogether.
func Tracer(tp trace.TracerProvider) trace.Tracer {
	if !Enabled(tp) {
		return nil
	}
	return tp.Tracer(Scope)
}

// RecordAttributes are the attributes of a span about one Kafka record: its partition and offset.
func RecordAttributes(r *kgo.Record) trace.SpanStartOption {
	return trace.WithAttributes(attribute.Int("messaging.kafka.partition", int(r.Partition)),
		attribute.Int64("messaging.kafka.offset", r.Offset))
}

// OrNoop returns tp, or the no-op provider when tp is nil.
func OrNoop(tp trace.TracerProvider) trace.TracerProvider {
	if tp == nil {
		return noop.NewTracerProvider()
	}
	return tp
}

// RecordCarrier adapts a Kafka record's headers to the propagator.
type RecordCarrier struct{ R *kgo.Record }

// Get returns the value of the first header named key.
func (c RecordCarrier) Get(key string) string {
	for _, h := range c.R.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// Set replaces the header named key (or adds it), so a record never carries two trace contexts.
func (c RecordCarrier) Set(key, value string) {
	for i, h := range c.R.Headers {
		if h.Key == key {
			c.R.Headers[i].Value = []byte(value)
			return
		}
	}
	c.R.Headers = append(c.R.Headers, kgo.RecordHeader{Key: key, Value: []byte(value)})
}

// Keys returns the header names.
func (c RecordCarrier) Keys() []string {
	keys := make([]string, len(c.R.Headers))
	for i, h := range c.R.Headers {
		keys[i] = h.Key
	}
	return keys
}

// RecordContext returns ctx with the span context r's headers carry (a remote parent), or ctx unchanged
// when they carry none.
func RecordContext(ctx context.Context, r *kgo.Record) context.Context {
	return Propagator.Extract(ctx, RecordCarrier{r})
}

// ProduceHook is a franz-go hook (kgo.WithHooks) that writes the trace context of a produced record's
// context (Produce's ctx, or the record's own Context) into its headers, unless the record carries one
// already (a dead letter keeps its original's). The envelope signature does not cover these headers, so
// a signed record still verifies.
type ProduceHook struct{}

// OnProduceRecordBuffered implements kgo.HookProduceRecordBuffered.
func (ProduceHook) OnProduceRecordBuffered(r *kgo.Record) {
	if r.Context == nil || !trace.SpanContextFromContext(r.Context).IsValid() {
		return
	}
	c := RecordCarrier{r}
	if c.Get(HeaderTraceparent) != "" {
		return
	}
	Propagator.Inject(r.Context, c)
}

var _ kgo.HookProduceRecordBuffered = ProduceHook{}

// LogHandler wraps a slog handler so every record logged with a context holding a valid span carries
// trace_id and span_id, to jump from a log line to its trace.
type LogHandler struct{ slog.Handler }

// Handle adds trace_id and span_id when ctx holds a span.
func (h LogHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r = r.Clone()
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return h.Handler.Handle(ctx, r)
}

// WithAttrs keeps the wrapper.
func (h LogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return LogHandler{h.Handler.WithAttrs(attrs)}
}

// WithGroup keeps the wrapper.
func (h LogHandler) WithGroup(name string) slog.Handler { return LogHandler{h.Handler.WithGroup(name)} }

// Logger returns logger with trace ids added to its records (LogHandler), unless it has them already.
func Logger(logger *slog.Logger) *slog.Logger {
	if _, ok := logger.Handler().(LogHandler); ok {
		return logger
	}
	return slog.New(LogHandler{logger.Handler()})
}

// keyedKey is the context key of WithKeyed.
type keyedKey struct{}

// WithKeyed returns ctx carrying, for some keys (message ids), the span each key's work belongs to, so a
// batch call made with one ctx (one produce of many events) can put each record in its own trace: see
// Keyed.
func WithKeyed(ctx context.Context, spans map[string]trace.SpanContext) context.Context {
	if len(spans) == 0 {
		return ctx
	}
	return context.WithValue(ctx, keyedKey{}, spans)
}

// Keyed returns ctx with key's span (WithKeyed) as its current span, or ctx when it has none. The result
// keeps ctx's deadline and cancellation.
func Keyed(ctx context.Context, key string) context.Context {
	spans, _ := ctx.Value(keyedKey{}).(map[string]trace.SpanContext)
	if sc, ok := spans[key]; ok && sc.IsValid() {
		return trace.ContextWithSpanContext(ctx, sc)
	}
	return ctx
}
