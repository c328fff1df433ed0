package tracing_test

import (
	"bytes"
	"context"
	"log/slog"
	"slices"
	"strings"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/testenv"
	"github.com/msgplatform/platform/internal/tracing"
	"github.com/msgplatform/platform/internal/tracing/tracingtest"
)

func TestEnabled(t *testing.T) {
	if tracing.Enabled(nil) || tracing.Enabled(noop.NewTracerProvider()) {
		t.Error("nil or no-op provider reported as recording")
	}
	if !tracing.Enabled(sdktrace.NewTracerProvider()) {
		t.Error("SDK provider reported as not recording")
	}
}

// The producer hook adds traceparent after signing: the signature covers topic, key, content-type and
// value, not this header, so the record still verifies; a record carrying one already keeps it.
func TestProduceHookKeepsSignatureValid(t *testing.T) {
	keys := testenv.SigningKeys(t)
	rec, err := envelope.EventRecord(&platformv1.Event{Id: "e1", TenantId: "t", ConversationId: "c"}, keys)
	if err != nil {
		t.Fatal(err)
	}
	tp := sdktrace.NewTracerProvider()
	ctx, span := tp.Tracer("test").Start(context.Background(), "rpc")
	defer span.End()
	rec.Context = ctx
	tracing.ProduceHook{}.OnProduceRecordBuffered(rec)
	want := span.SpanContext()
	got := trace.SpanContextFromContext(tracing.RecordContext(context.Background(), rec))
	if got.TraceID() != want.TraceID() || got.SpanID() != want.SpanID() {
		t.Fatalf("record carries %v, want %v", got, want)
	}
	if err := keys.Verify(rec); err != nil {
		t.Fatalf("signed record with traceparent no longer verifies: %v", err)
	}
	// A second produce (a dead letter's retry, say) under another span keeps the original trace, once.
	ctx2, other := tp.Tracer("test").Start(context.Background(), "other")
	defer other.End()
	rec.Context = ctx2
	tracing.ProduceHook{}.OnProduceRecordBuffered(rec)
	n := 0
	for _, h := range rec.Headers {
		if h.Key == tracing.HeaderTraceparent {
			n++
		}
	}
	if got := trace.SpanContextFromContext(tracing.RecordContext(context.Background(), rec)); n != 1 || got.TraceID() != want.TraceID() {
		t.Fatalf("%d traceparent headers, trace %v: want one, of %v", n, got.TraceID(), want.TraceID())
	}
	if err := keys.Verify(rec); err != nil {
		t.Fatal(err)
	}
	// Without a span, nothing is added.
	bare, _ := envelope.EventRecord(&platformv1.Event{Id: "e2", TenantId: "t", ConversationId: "c"}, keys)
	bare.Context = context.Background()
	tracing.ProduceHook{}.OnProduceRecordBuffered(bare)
	if _, ok := envelope.Header(bare, tracing.HeaderTraceparent); ok {
		t.Error("traceparent added without a span")
	}
}

func TestLogHandlerAddsTraceID(t *testing.T) {
	var buf bytes.Buffer
	logger := tracing.Logger(slog.New(slog.NewTextHandler(&buf, nil))).With("component", "x")
	ctx, span := sdktrace.NewTracerProvider().Tracer("test").Start(context.Background(), "op")
	defer span.End()
	logger.InfoContext(ctx, "traced")
	logger.InfoContext(context.Background(), "untraced")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d lines: %q", len(lines), buf.String())
	}
	if !strings.Contains(lines[0], "trace_id="+span.SpanContext().TraceID().String()) || !strings.Contains(lines[0], "span_id=") {
		t.Errorf("traced line without its ids: %s", lines[0])
	}
	if strings.Contains(lines[1], "trace_id") {
		t.Errorf("untraced line with a trace id: %s", lines[1])
	}
}

func TestKeyed(t *testing.T) {
	tp := sdktrace.NewTracerProvider()
	_, a := tp.Tracer("test").Start(context.Background(), "a")
	defer a.End()
	ctx, cancel := context.WithCancel(context.Background())
	ctx = tracing.WithKeyed(ctx, map[string]trace.SpanContext{"m1": a.SpanContext()})
	if got := trace.SpanContextFromContext(tracing.Keyed(ctx, "m1")); got.SpanID() != a.SpanContext().SpanID() {
		t.Errorf("Keyed(m1) = %v", got)
	}
	if got := trace.SpanContextFromContext(tracing.Keyed(ctx, "m2")); got.IsValid() {
		t.Errorf("Keyed(m2) = %v, want none", got)
	}
	k := tracing.Keyed(ctx, "m1")
	cancel()
	if k.Err() == nil {
		t.Error("Keyed's context does not follow the batch context's cancellation")
	}
}

// NewProvider exports over either OTLP transport to the endpoint the standard variables name, with the
// service name given (or OTEL_SERVICE_NAME's).
func TestNewProviderExportsOverEachProtocol(t *testing.T) {
	sink := tracingtest.Start(t)
	for _, tc := range []struct {
		protocol, endpoint, service string
		env                         map[string]string
	}{
		{"grpc", "http://" + sink.GRPCAddr, "svc-grpc", nil},
		{"http/protobuf", sink.HTTPURL, "svc-http", nil},
		{"grpc", "http://" + sink.GRPCAddr, "svc-from-env", map[string]string{"OTEL_SERVICE_NAME": "svc-from-env"}},
	} {
		t.Run(tc.protocol+" "+tc.service, func(t *testing.T) {
			t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", tc.endpoint)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			before := sink.Spans()
			tp, shutdown, err := tracing.NewProvider(context.Background(), "svc-"+strings.Split(tc.protocol, "/")[0], tc.protocol)
			if err != nil {
				t.Fatal(err)
			}
			_, span := tp.Tracer("test").Start(context.Background(), "one")
			span.End()
			if err := shutdown(context.Background()); err != nil { // flushes
				t.Fatal(err)
			}
			if got := sink.Spans() - before; got != 1 {
				t.Errorf("%d spans received, want 1", got)
			}
			if !slices.Contains(sink.Services(), tc.service) {
				t.Errorf("service names %v, want %s among them", sink.Services(), tc.service)
			}
		})
	}
	if _, _, err := tracing.NewProvider(context.Background(), "x", "http/json"); err == nil {
		t.Error("protocol http/json accepted")
	}
}
