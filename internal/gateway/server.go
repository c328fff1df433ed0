// Package gateway is the API's edge: one gRPC server (platform.v1 services, grpc.health.v1, reflection,
// the interceptor chain), the REST gateway that reaches it through a gRPC client connection (so REST runs
// every interceptor too), /healthz and /readyz, and /metrics on its own port. It receives its
// dependencies; internal/app wires it for services/gateway and the devstack.
package gateway

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"slices"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/msgplatform/platform/gen/openapiv3"
	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/apidocs"
	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/authz"
	"github.com/msgplatform/platform/internal/health"
	"github.com/msgplatform/platform/internal/lifecycle"
	"github.com/msgplatform/platform/internal/observability"
	"github.com/msgplatform/platform/internal/requestid"
)

// Services are the platform.v1 handlers. A nil one is served by the generated Unimplemented type.
type Services struct {
	Conversations platformv1.ConversationServiceServer
	Messages      platformv1.MessageServiceServer
	DeadLetters   platformv1.DeadLetterServiceServer
}

// Options are what New needs; the process's composition root (internal/app) provides them.
type Options struct {
	GRPCAddr, HTTPAddr, MetricsAddr string
	// ShutdownTimeout bounds how long in-flight calls may take to finish once the server stops.
	ShutdownTimeout time.Duration
	Logger          *slog.Logger
	Registry        *prometheus.Registry
	// Checker holds the dependency checks: readiness, grpc.health.v1 and HealthService answer from it.
	Checker  *health.Checker
	Services Services
	// Verifier authenticates bearer tokens; Authorizer decides by the access rules.
	Verifier   authz.TokenVerifier
	Authorizer *authz.Authorizer
	// OnUnauthenticated hears of every call refused for want of a valid token (besides the gateway's own
	// counter, platform_unauthenticated_total, and its rate-limited log line).
	OnUnauthenticated func(ctx context.Context, method string, err error)
	// Quota charges every authenticated call to its principal's and tenant's quotas; Audit records every
	// mutation and operator read. Nil: none.
	Quota, Audit Interceptors
	// GRPCTLS and HTTPTLS make the listeners serve TLS (nil: plain text); InternalTLS is what the REST
	// gateway's own connection to the gRPC listener dials with when GRPCTLS is set.
	GRPCTLS, HTTPTLS, InternalTLS *tls.Config
	// StreamKeepAlive is the period of the keep-alive comment of REST server-sent event streams (≤ 0: 15 s).
	StreamKeepAlive time.Duration
	// TracerProvider, when it records (tracing.Enabled), gives every RPC a server span (otelgrpc) and the
	// REST gateway's calls a client span, so a REST request is one trace. Nil: no tracing, no cost.
	TracerProvider trace.TracerProvider
}

// Interceptors are a unary and a stream server interceptor doing one job.
type Interceptors interface {
	UnaryServerInterceptor() grpc.UnaryServerInterceptor
	StreamServerInterceptor() grpc.StreamServerInterceptor
}

// platformServices are the platform.v1 services the gateway serves (and REST exposes).
var platformServices = []string{
	platformv1.ConversationService_ServiceDesc.ServiceName, platformv1.MessageService_ServiceDesc.ServiceName,
	platformv1.DeadLetterService_ServiceDesc.ServiceName, platformv1.HealthService_ServiceDesc.ServiceName,
}

// ServiceNeeds maps each gRPC service name to the dependencies it cannot work without; grpc.health.v1
// reports it NOT_SERVING while any of them is down.
var ServiceNeeds = map[string][]string{
	platformv1.ConversationService_ServiceDesc.ServiceName: {health.MongoDB, health.Redis},
	platformv1.MessageService_ServiceDesc.ServiceName:      {health.MongoDB, health.Redis, health.Kafka},
	platformv1.DeadLetterService_ServiceDesc.ServiceName:   {health.MongoDB, health.Kafka},
	platformv1.HealthService_ServiceDesc.ServiceName:       {},
}

// Server is the gateway: one gRPC server (platform.v1, grpc.health.v1, reflection, the interceptor
// chain), the REST gateway reaching it through a gRPC client connection, /healthz and /readyz, and
// /metrics on its own port. The composition root runs ServeREST, ServeGRPC and ServeMetrics as actors of
// the process's lifecycle group, in that stop order.
type Server struct {
	opts    Options
	logger  *slog.Logger
	grpc    *grpc.Server
	http    *http.Server
	metrics *http.Server
	conn    *grpc.ClientConn // the REST gateway's connection to grpc

	grpcLis, httpLis, metricsLis net.Listener
}

// New builds the server and binds its three listeners, so a port clash fails here, before anything runs.
func New(ctx context.Context, opts Options) (*Server, error) {
	s := &Server{opts: opts, logger: opts.Logger}
	var err error
	if s.grpcLis, err = net.Listen("tcp", opts.GRPCAddr); err != nil {
		return nil, fmt.Errorf("GRPC_ADDR %s: %w", opts.GRPCAddr, err)
	}
	if s.httpLis, err = net.Listen("tcp", opts.HTTPAddr); err != nil {
		s.Close()
		return nil, fmt.Errorf("HTTP_ADDR %s: %w", opts.HTTPAddr, err)
	}
	s.httpLis = listenHTTPTLS(opts, s.httpLis)
	if s.metricsLis, err = net.Listen("tcp", opts.MetricsAddr); err != nil {
		s.Close()
		return nil, fmt.Errorf("METRICS_ADDR %s: %w", opts.MetricsAddr, err)
	}

	grpcMetrics := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram())
	if err := opts.Registry.Register(grpcMetrics); err != nil {
		s.Close()
		return nil, fmt.Errorf("register grpc metrics: %w", err)
	}
	rejected, err := newRejections(opts.Registry, s.logger, opts.OnUnauthenticated)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("register rejection metrics: %w", err)
	}
	access := authz.NewInterceptor(opts.Verifier, opts.Authorizer)
	access.OnUnauthenticated = rejected.grpc
	s.grpc = newGRPCServer(s.logger, grpcMetrics, access, opts.Quota, opts.Audit, append(grpcServerTLS(opts), serverTracing(opts.TracerProvider)...)...)
	registerServices(s.grpc, opts.Services, opts.Checker)
	hs := grpchealth.NewServer()
	healthpb.RegisterHealthServer(s.grpc, newBoundedHealth(hs))
	health.FollowChecker(opts.Checker, hs, ServiceNeeds)
	reflection.Register(s.grpc)
	grpcMetrics.InitializeMetrics(s.grpc)
	// Default deny: refuse to start when any registered method lacks an access rule.
	if err := access.LoadRules(s.grpc.GetServiceInfo()); err != nil {
		s.Close()
		return nil, err
	}

	restMetrics, err := newRESTMetrics(opts.Registry)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("register REST metrics: %w", err)
	}
	routes, err := restRoutes(platformServices...)
	if err != nil {
		s.Close()
		return nil, err
	}
	edge := &restEdge{routes: routes, verifier: opts.Verifier, isPublic: access.IsPublic, onUnauthenticated: rejected.rest}
	creds, err := internalCredentials(opts)
	if err != nil {
		s.Close()
		return nil, err
	}
	sse := &sseStreams{method: edge.method, keepAlive: opts.StreamKeepAlive, onUnauthenticated: rejected.rest}
	rest, conn, err := newRESTGateway(ctx, dialTarget(s.grpcLis.Addr()), restMetrics, edge, sse, creds, clientTracing(opts.TracerProvider)...)
	if err != nil {
		s.Close()
		return nil, err
	}
	s.conn = conn
	mux := http.NewServeMux()
	healthHTTP := health.HTTPHandler(opts.Checker, nil) // /healthz and /readyz: statuses only
	mux.Handle("GET /healthz", healthHTTP)
	mux.Handle("GET /readyz", healthHTTP)
	// GET /openapi.json and GET /docs (the API explorer): public, outside the REST edge; they hold no data.
	apidocs.Register(mux, openapiv3.Document)
	mux.Handle("/", restTracing(opts.TracerProvider, rest))
	// No ReadTimeout or WriteTimeout: they would cut live streams. The edge bounds each request body's
	// read instead (bodyTimeout), the headers and idle connections are bounded here.
	s.http = &http.Server{Handler: mux, ReadHeaderTimeout: readHeaderTimeout, IdleTimeout: idleTimeout,
		MaxHeaderBytes: maxHeaderBytes, ErrorLog: slog.NewLogLogger(s.logger.Handler(), slog.LevelWarn)}
	s.metrics = &http.Server{Handler: observability.MetricsHandler(opts.Registry), ReadHeaderTimeout: 10 * time.Second}
	return s, nil
}

func newGRPCServer(logger *slog.Logger, metrics *grpcprom.ServerMetrics, access *authz.Interceptor, quota, audit Interceptors, extra ...grpc.ServerOption) *grpc.Server {
	logOpts := []logging.Option{
		logging.WithLogOnEvents(logging.FinishCall),
		// A call refused by a limit (too many streams or health watches) is counted by grpc_server_handled_total
		// {grpc_code="ResourceExhausted"}, not logged each: whoever hits a limit would otherwise fill the logs.
		logging.WithLevels(func(c codes.Code) logging.Level {
			if c == codes.ResourceExhausted {
				return logging.LevelDebug
			}
			return logging.DefaultServerCodeToLevel(c)
		}),
		// Authentication runs before logging, so the caller is in the context the logger sees.
		logging.WithFieldsFromContext(func(ctx context.Context) logging.Fields {
			p, _ := auth.PrincipalFrom(ctx)
			return logging.Fields{"request_id", requestid.From(ctx), "principal", p.Subject, "tenant", p.TenantID}
		}),
	}
	rpcLogger := logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		logger.Log(ctx, slog.Level(lvl), msg, fields...)
	})
	recoveryOpt := recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		logger.ErrorContext(ctx, "panic in handler", "panic", fmt.Sprint(p), "request_id", requestid.From(ctx), "stack", string(debug.Stack()))
		return status.Error(codes.Internal, "internal error")
	})
	// Order matters: the request id first so every later interceptor sees it; metrics before everything
	// so every call is counted; authentication before the quota (charged to the caller it names) and
	// logging, so the log line names the caller (a call refused for want of a token is not logged per
	// call: it is counted, see OnUnauthenticated); the audit before the access check, so refused calls
	// are recorded too; recovery last so a panic becomes INTERNAL before metrics and logs record the call.
	unary := []grpc.UnaryServerInterceptor{
		requestid.UnaryServerInterceptor(),
		metrics.UnaryServerInterceptor(),
		access.AuthenticateUnary(),
	}
	stream := []grpc.StreamServerInterceptor{
		requestid.StreamServerInterceptor(),
		metrics.StreamServerInterceptor(),
		access.AuthenticateStream(),
	}
	if quota != nil {
		unary, stream = append(unary, quota.UnaryServerInterceptor()), append(stream, quota.StreamServerInterceptor())
	}
	unary = append(unary, logging.UnaryServerInterceptor(rpcLogger, logOpts...))
	stream = append(stream, logging.StreamServerInterceptor(rpcLogger, logOpts...))
	if audit != nil {
		unary, stream = append(unary, audit.UnaryServerInterceptor()), append(stream, audit.StreamServerInterceptor())
	}
	// Ids are checked before the access check, which reads the conversation id (and looks it up in Redis).
	unary = append(unary, idsUnary(), access.AuthorizeUnary(), recovery.UnaryServerInterceptor(recoveryOpt))
	stream = append(stream, idsStream(), access.AuthorizeStream(), recovery.StreamServerInterceptor(recoveryOpt))
	return grpc.NewServer(append(append(transportLimits(), extra...),
		grpc.ChainUnaryInterceptor(unary...), grpc.ChainStreamInterceptor(stream...))...)
}

func registerServices(s *grpc.Server, svc Services, checker *health.Checker) {
	if svc.Conversations == nil {
		svc.Conversations = platformv1.UnimplementedConversationServiceServer{}
	}
	if svc.Messages == nil {
		svc.Messages = platformv1.UnimplementedMessageServiceServer{}
	}
	if svc.DeadLetters == nil {
		svc.DeadLetters = platformv1.UnimplementedDeadLetterServiceServer{}
	}
	platformv1.RegisterConversationServiceServer(s, svc.Conversations)
	platformv1.RegisterMessageServiceServer(s, svc.Messages)
	platformv1.RegisterDeadLetterServiceServer(s, svc.DeadLetters)
	platformv1.RegisterHealthServiceServer(s, health.NewService(checker, operatorCaller))
}

// operatorCaller reports whether the call carries a valid token of an operator role: GetHealth is public,
// and shows the dependencies' errors (internal addresses) to them only.
func operatorCaller(ctx context.Context) bool {
	p, ok := auth.PrincipalFrom(ctx)
	return ok && slices.ContainsFunc(p.Roles, func(r string) bool { return slices.Contains(authz.OperatorRoles, r) })
}

// dialTarget turns a listener address into one the gateway can dial: an unspecified host (":9090",
// "[::]:9090") becomes loopback.
func dialTarget(addr net.Addr) string {
	tcp, ok := addr.(*net.TCPAddr)
	if !ok || tcp.IP.IsUnspecified() {
		_, port, _ := net.SplitHostPort(addr.String())
		return net.JoinHostPort("127.0.0.1", port)
	}
	return tcp.String()
}

// GRPCAddr, HTTPAddr and MetricsAddr return the bound addresses (useful with port 0).
func (s *Server) GRPCAddr() string    { return s.grpcLis.Addr().String() }
func (s *Server) HTTPAddr() string    { return s.httpLis.Addr().String() }
func (s *Server) MetricsAddr() string { return s.metricsLis.Addr().String() }

// ServeREST serves REST, /healthz and /readyz until ctx ends, then lets in-flight requests finish
// (within ShutdownTimeout). Stop it before ServeGRPC: its requests still need the gRPC server.
func (s *Server) ServeREST(ctx context.Context) error {
	return lifecycle.ServeHTTP(ctx, s.http, s.httpLis, s.opts.ShutdownTimeout)
}

// ServeGRPC serves gRPC until ctx ends, then stops accepting and lets in-flight calls finish
// (GracefulStop), cancelling what still runs after ShutdownTimeout. Live streams should have been ended
// before (the stream hub stops first), or they hold GracefulStop up to the timeout.
func (s *Server) ServeGRPC(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.grpc.Serve(s.grpcLis) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve grpc: %w", err)
	case <-ctx.Done():
	}
	done := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(s.opts.ShutdownTimeout):
		s.logger.Warn("gRPC calls still running at the shutdown deadline; cancelling them")
		s.grpc.Stop()
		<-done
	}
	_ = s.conn.Close()
	<-errc
	return nil
}

// ServeMetrics serves /metrics until ctx ends (stop it last, so a final scrape sees the drain).
func (s *Server) ServeMetrics(ctx context.Context) error {
	return lifecycle.ServeHTTP(ctx, s.metrics, s.metricsLis, time.Second)
}

// Close releases the listeners and the REST connection of a server that will not be served.
func (s *Server) Close() {
	for _, l := range []net.Listener{s.grpcLis, s.httpLis, s.metricsLis} {
		if l != nil {
			_ = l.Close()
		}
	}
	if s.conn != nil {
		_ = s.conn.Close()
	}
}
