// Package tracingtest is an OTLP trace receiver for tests and benchmarks: it speaks OTLP over gRPC and
// over HTTP (protobuf), as a collector does on 4317 and 4318, counts the spans it is sent and keeps
// their service names, and stores nothing else.
package tracingtest

import (
	"compress/gzip"
	"context"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// Sink is a running receiver.
type Sink struct {
	coltracepb.UnimplementedTraceServiceServer
	GRPCAddr string // host:port of the OTLP/gRPC receiver
	HTTPURL  string // base URL of the OTLP/HTTP receiver (the exporter appends /v1/traces)

	spans    atomic.Int64
	mu       sync.Mutex
	services []string
}

// Start starts both receivers on loopback ports; they stop when tb ends.
func Start(tb testing.TB) *Sink {
	tb.Helper()
	s := &Sink{}
	glis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("tracingtest: %v", err)
	}
	gs := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(gs, s)
	go func() { _ = gs.Serve(glis) }()
	tb.Cleanup(gs.Stop)
	s.GRPCAddr = glis.Addr().String()

	hlis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("tracingtest: %v", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/traces", s.serveHTTP)
	hs := &http.Server{Handler: mux}
	go func() { _ = hs.Serve(hlis) }()
	tb.Cleanup(func() { _ = hs.Close() })
	s.HTTPURL = "http://" + hlis.Addr().String()
	return s
}

// Spans is how many spans were received.
func (s *Sink) Spans() int64 { return s.spans.Load() }

// Services are the service.name values of the spans received, each once.
func (s *Sink) Services() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.services)
}

// Export is the OTLP/gRPC receiver.
func (s *Sink) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	s.count(req)
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

// serveHTTP is the OTLP/HTTP receiver (binary protobuf, optionally gzipped).
func (s *Sink) serveHTTP(w http.ResponseWriter, r *http.Request) {
	var body io.Reader = r.Body
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body = zr
	}
	b, err := io.ReadAll(body)
	req := &coltracepb.ExportTraceServiceRequest{}
	if err == nil {
		err = proto.Unmarshal(b, req)
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.count(req)
	out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

func (s *Sink) count(req *coltracepb.ExportTraceServiceRequest) {
	for _, rs := range req.GetResourceSpans() {
		for _, a := range rs.GetResource().GetAttributes() {
			if a.GetKey() == "service.name" {
				s.mu.Lock()
				if name := a.GetValue().GetStringValue(); !slices.Contains(s.services, name) {
					s.services = append(s.services, name)
				}
				s.mu.Unlock()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			s.spans.Add(int64(len(ss.GetSpans())))
		}
	}
}
