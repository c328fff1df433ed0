package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/app"
	"github.com/msgplatform/platform/internal/app/apptest"
	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/testenv"
	"github.com/msgplatform/platform/internal/tracing"
)

// One SendMessage is one trace, through the real process (gateway and pipeline, app.Run): the RPC's
// server span is the parent of the message's authorize, persist and notify spans in the pipeline (the
// record's traceparent header carried it over Kafka); each stage's batch span, in a trace of its own,
// links to it; the persisted event on messages.events carries the notify span as its traceparent and
// still verifies; the process's log lines about the call carry its trace_id. A REST call is one trace too,
// continuing the caller's traceparent.
func TestOneTracePerMessage(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })

	kafkaAddr := testenv.Kafka(t)
	mongoURI := testenv.SharedMongo(t)
	cfg := testenv.Config(t, map[string]string{
		"KAFKA_BROKERS": kafkaAddr, "MONGO_URI": mongoURI, "MONGO_DATABASE": testenv.MongoDatabase(t, mongoURI),
		"REDIS_URL": testenv.Redis(t),
	})
	logs := &testenv.LockedBuffer{}
	p := apptest.Start(t, cfg, app.Roles{Gateway: true, Pipeline: true}, slog.New(slog.NewTextHandler(logs, nil)),
		app.WithTracerProvider(tp))
	conn, err := grpc.NewClient(p.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	tok := testenv.Token(t, "alice", "tr")
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
	conv, err := platformv1.NewConversationServiceClient(conn).CreateConversation(ctx, &platformv1.CreateConversationRequest{Title: "traced"})
	if err != nil {
		t.Fatal(err)
	}
	sent, err := platformv1.NewMessageServiceClient(conn).SendMessage(ctx, &platformv1.SendMessageRequest{ConversationId: conv.GetConversation().GetId(), Body: "hello"})
	if err != nil {
		t.Fatal(err)
	}

	// The RPC's server span, and the message's spans in its trace.
	var rpc sdktrace.ReadOnlySpan
	byName := map[string]tracetest.SpanStub{}
	testenv.Eventually(t, "the message's notify span", 20*time.Second, func() bool {
		spans := exp.GetSpans()
		for _, s := range spans {
			if s.Name == "platform.v1.MessageService/SendMessage" && s.SpanKind == trace.SpanKindServer {
				rpc = s.Snapshot()
			}
		}
		if rpc == nil {
			return false
		}
		clear(byName)
		for _, s := range spans {
			if s.SpanContext.TraceID() == rpc.SpanContext().TraceID() && strings.HasPrefix(s.Name, "pipeline.") {
				byName[s.Name] = s
			}
		}
		return len(byName) == 3
	})
	traceID := rpc.SpanContext().TraceID()
	for _, name := range []string{"pipeline.authorize", "pipeline.persist", "pipeline.notify"} {
		s, ok := byName[name]
		if !ok {
			t.Fatalf("no %s span in trace %s", name, traceID)
		}
		if s.Parent.SpanID() != rpc.SpanContext().SpanID() || !s.Parent.IsRemote() {
			t.Errorf("%s: parent %s, want the RPC span %s (remote, through the record's traceparent)", name, s.Parent.SpanID(), rpc.SpanContext().SpanID())
		}
		if s.Status.Code.String() == "Error" {
			t.Errorf("%s: status %v", name, s.Status)
		}
		// Its batch span: another trace, linked to this message's.
		batch := spanByID(exp.GetSpans(), s.Links)
		if batch == nil || batch.Name != name || batch.SpanContext.TraceID() == traceID || !linksTo(batch.Links, rpc.SpanContext()) {
			t.Errorf("%s: no batch span of the same name linking back to the RPC span (got %+v)", name, batch)
		}
	}

	// The persisted event carries the notify span's context and still verifies.
	ev := consumeEvent(t, kafkaAddr, sent.GetMessageId())
	if err := cfg.KafkaSigningKeys.Verify(ev); err != nil {
		t.Errorf("the event with its traceparent does not verify: %v", err)
	}
	got := trace.SpanContextFromContext(tracing.RecordContext(context.Background(), ev))
	if got.TraceID() != traceID || got.SpanID() != byName["pipeline.notify"].SpanContext.SpanID() {
		t.Errorf("event traceparent %s/%s, want the notify span %s/%s", got.TraceID(), got.SpanID(), traceID, byName["pipeline.notify"].SpanContext.SpanID())
	}

	// The call's log lines carry its trace id.
	if !strings.Contains(logs.String(), "trace_id="+traceID.String()) {
		t.Errorf("no log line with trace_id=%s:\n%s", traceID, logs.String())
	}

	// REST: the caller's traceparent is continued through the REST gateway's client span to the server span.
	const callerTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	body, _ := json.Marshal(map[string]string{"body": "over rest"})
	req, _ := http.NewRequest(http.MethodPost, "http://"+p.HTTP+"/v1/conversations/"+conv.GetConversation().GetId()+"/messages", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("traceparent", "00-"+callerTrace+"-00f067aa0ba902b7-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("REST SendMessage: %s", resp.Status)
	}
	testenv.Eventually(t, "the REST call's client, server and pipeline spans in the caller's trace", 20*time.Second, func() bool {
		kinds := map[string]bool{}
		for _, s := range exp.GetSpans() {
			if s.SpanContext.TraceID().String() == callerTrace {
				kinds[s.SpanKind.String()+" "+s.Name] = true
			}
		}
		return kinds["client platform.v1.MessageService/SendMessage"] && kinds["server platform.v1.MessageService/SendMessage"] &&
			kinds["internal pipeline.notify"]
	})
}

// spanByID returns the span the first link points to.
func spanByID(spans tracetest.SpanStubs, links []sdktrace.Link) *tracetest.SpanStub {
	if len(links) == 0 {
		return nil
	}
	for i := range spans {
		if spans[i].SpanContext.SpanID() == links[0].SpanContext.SpanID() {
			return &spans[i]
		}
	}
	return nil
}

func linksTo(links []sdktrace.Link, sc trace.SpanContext) bool {
	for _, l := range links {
		if l.SpanContext.TraceID() == sc.TraceID() && l.SpanContext.SpanID() == sc.SpanID() {
			return true
		}
	}
	return false
}

// consumeEvent reads messages.events from the start until the event with id.
func consumeEvent(t *testing.T, brokers, id string) *kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers), kgo.ConsumeTopics(kafka.TopicEvents), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		var found *kgo.Record
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			if ev, err := envelope.DecodeEvent(r); err == nil && ev.GetId() == id && ev.GetType() == platformv1.EventType_EVENT_TYPE_MESSAGE_PERSISTED {
				found = r
			}
		})
		if found != nil {
			return found
		}
	}
	t.Fatalf("no persisted event %s on %s", id, kafka.TopicEvents)
	return nil
}

// BenchmarkTracingOverhead measures what tracing costs on the API's latency: two processes (gateway and
// pipeline, each on its own kfake and database), one without tracing and one tracing every call (always-on
// sampler, spans batched to an exporter that drops them), called in alternating blocks; it reports the
// median over rounds of the p50 ratio traced/untraced for SendMessage (gRPC: the RPC span and the
// traceparent header; the pipeline traces the records meanwhile), GetConversation over gRPC, and
// GetConversation over REST (client and server spans). Run it with
//
//	go test -run '^$' -bench TracingOverhead -benchtime 1x ./internal/app/
func BenchmarkTracingOverhead(b *testing.B) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithBatcher(tracetest.NewNoopExporter()))
	b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	off, on := benchProcess(b), benchProcess(b, app.WithTracerProvider(tp))
	const rounds, calls, block = 3, 200, 50
	type path struct {
		name    string
		off, on func() error
	}
	paths := []path{
		{"send_grpc", off.send, on.send},
		{"get_grpc", off.getGRPC, on.getGRPC},
		{"get_rest", off.getREST, on.getREST},
	}
	for _, p := range paths {
		for range 20 { // warm-up
			if err := errors.Join(p.off(), p.on()); err != nil {
				b.Fatal(err)
			}
		}
		var ratios, p50Off, p50On []float64
		for range rounds {
			dOff, dOn := make([]float64, 0, calls), make([]float64, 0, calls)
			for i := 0; i < calls; i += block {
				first, second := &dOff, &dOn
				f1, f2 := p.off, p.on
				if (i/block)%2 == 1 {
					first, second, f1, f2 = second, first, f2, f1
				}
				for _, run := range []struct {
					d *[]float64
					f func() error
				}{{first, f1}, {second, f2}} {
					for range block {
						start := time.Now()
						if err := run.f(); err != nil {
							b.Fatal(err)
						}
						*run.d = append(*run.d, float64(time.Since(start).Microseconds()))
					}
				}
			}
			mOff, mOn := medianOf(dOff), medianOf(dOn)
			ratios, p50Off, p50On = append(ratios, mOn/mOff), append(p50Off, mOff), append(p50On, mOn)
		}
		b.ReportMetric(medianOf(ratios), p.name+"_on/off")
		b.Logf("%s: p50 %.0f µs untraced, %.0f µs traced: ratio %.3f", p.name, medianOf(p50Off), medianOf(p50On), medianOf(ratios))
	}
}

func medianOf(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// benchProc is a process of BenchmarkTracingOverhead with a conversation to call about.
type benchProc struct {
	msgs  platformv1.MessageServiceClient
	convs platformv1.ConversationServiceClient
	ctx   context.Context
	rest  string
	tok   string
	conv  string
}

func benchProcess(b *testing.B, opts ...app.Option) *benchProc {
	mongoURI := testenv.SharedMongo(b)
	cfg := testenv.Config(b, map[string]string{
		"KAFKA_BROKERS": testenv.Kafka(b), "MONGO_URI": mongoURI, "MONGO_DATABASE": testenv.MongoDatabase(b, mongoURI),
		"REDIS_URL": testenv.Redis(b), "RATE_LIMIT_PRINCIPAL_RPS": "0", "RATE_LIMIT_TENANT_RPS": "0",
	})
	p := apptest.Start(b, cfg, app.Roles{Gateway: true, Pipeline: true}, nil, opts...)
	conn, err := grpc.NewClient(p.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = conn.Close() })
	tok := testenv.Token(b, "alice", "tb")
	bp := &benchProc{msgs: platformv1.NewMessageServiceClient(conn), convs: platformv1.NewConversationServiceClient(conn),
		ctx: metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok), rest: "http://" + p.HTTP, tok: tok}
	c, err := bp.convs.CreateConversation(bp.ctx, &platformv1.CreateConversationRequest{Title: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	bp.conv = c.GetConversation().GetId()
	return bp
}

func (p *benchProc) send() error {
	_, err := p.msgs.SendMessage(p.ctx, &platformv1.SendMessageRequest{ConversationId: p.conv, Body: "bench"})
	return err
}

func (p *benchProc) getGRPC() error {
	_, err := p.convs.GetConversation(p.ctx, &platformv1.GetConversationRequest{ConversationId: p.conv})
	return err
}

func (p *benchProc) getREST() error {
	req, _ := http.NewRequest(http.MethodGet, p.rest+"/v1/conversations/"+p.conv, nil)
	req.Header.Set("Authorization", "Bearer "+p.tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("REST GetConversation: %s", resp.Status)
	}
	return nil
}
