package pipeline

import (
	"context"
	"fmt"
	"log/slog"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

type nopStage string

func (s nopStage) Name() string                  { return string(s) }
func (nopStage) Process(context.Context, *Batch) {}

// BenchmarkRunnerTracing is the runner's own cost per record over the stages (which do nothing here),
// untraced and traced (every record carrying a traceparent, always-on sampler, spans batched to an
// exporter that drops them): the upper bound of what tracing adds to the pipeline per record.
//
//	go test -run '^$' -bench RunnerTracing ./internal/pipeline/
func BenchmarkRunnerTracing(b *testing.B) {
	var stages []Stage
	for _, n := range []string{StageAuthenticate, StageDeserialize, StageValidate, StageTenant, StageAuthorize, StageTransform, StagePersist, StageNotify, StageMetrics} {
		stages = append(stages, nopStage(n))
	}
	const records = 500
	for _, traced := range []bool{false, true} {
		b.Run(fmt.Sprintf("traced=%v", traced), func(b *testing.B) {
			cfg := Config{}.withDefaults()
			if traced {
				tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithBatcher(tracetest.NewNoopExporter()))
				b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
				cfg.TracerProvider = tp
			}
			r, err := newRunner(stages, cfg, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
			if err != nil {
				b.Fatal(err)
			}
			tid := trace.TraceID{1}
			items := make([]*Item, records)
			for b.Loop() {
				for i := range items {
					sid := trace.SpanID{byte(i), 1}
					items[i] = &Item{Record: &kgo.Record{Partition: 0, Offset: int64(i), Headers: []kgo.RecordHeader{
						{Key: "traceparent", Value: fmt.Appendf(nil, "00-%s-%s-01", tid, sid)}}}}
					items[i].Message.ID = fmt.Sprint(i)
				}
				if err := r.process(context.Background(), &Batch{Items: items}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*records), "ns/record")
		})
	}
}
