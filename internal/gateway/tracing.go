package gateway

import (
	"net/http"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"

	"github.com/msgplatform/platform/internal/tracing"
)

// otelOptions are otelgrpc's options: spans only (the RPC metrics are Prometheus's, grpcprom), W3C trace
// context in the metadata.
func otelOptions(tp trace.TracerProvider) []otelgrpc.Option {
	return []otelgrpc.Option{otelgrpc.WithTracerProvider(tp), otelgrpc.WithPropagators(tracing.Propagator),
		otelgrpc.WithMeterProvider(metricnoop.NewMeterProvider())}
}

// serverTracing gives every RPC a server span, continuing the caller's trace (traceparent metadata),
// when tp records; nothing otherwise.
func serverTracing(tp trace.TracerProvider) []grpc.ServerOption {
	if !tracing.Enabled(tp) {
		return nil
	}
	return []grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(otelOptions(tp)...))}
}

// clientTracing gives the REST gateway's calls to the gRPC server a client span whose context the server
// span continues, so a REST request is one trace, when tp records; nothing otherwise.
func clientTracing(tp trace.TracerProvider) []grpc.DialOption {
	if !tracing.Enabled(tp) {
		return nil
	}
	return []grpc.DialOption{grpc.WithStatsHandler(otelgrpc.NewClientHandler(otelOptions(tp)...))}
}

// restTracing continues the trace of a REST request that carries a traceparent header (the REST
// gateway's client span then has it as parent) when tp records; h itself otherwise.
func restTracing(tp trace.TracerProvider, h http.Handler) http.Handler {
	if !tracing.Enabled(tp) {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(tracing.HeaderTraceparent) != "" {
			r = r.WithContext(tracing.Propagator.Extract(r.Context(), propagation.HeaderCarrier(r.Header)))
		}
		h.ServeHTTP(w, r)
	})
}
