// Package server wires the gateway: one gRPC server (platform.v1 services, grpc.health.v1, reflection,
// the interceptor chain), the REST gateway that reaches it through a gRPC client connection (so REST runs
// every interceptor too), /healthz and /readyz, and /metrics on its own port. services/gateway and
// services/devstack both run exactly this.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	grpchealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/authz"
	"github.com/msgplatform/platform/internal/config"
	"github.com/msgplatform/platform/internal/health"
	"github.com/msgplatform/platform/internal/observability"
	"github.com/msgplatform/platform/internal/requestid"
)

// Services are the platform.v1 handlers. A nil one is served by the generated Unimplemented type, so its
// RPCs answer UNIMPLEMENTED until the issue that builds them lands.
type Services struct {
	Conversations platformv1.ConversationServiceServer
	Messages      platformv1.MessageServiceServer
	DeadLetters   platformv1.DeadLetterServiceServer
}

// Options are what New needs; Config supplies addresses and timeouts.
type Options struct {
	Config       config.Config
	Logger       *slog.Logger
	Registry     *prometheus.Registry
	Dependencies []health.Dependency
	Services     Services
	// Verifier authenticates bearer tokens; Authorizer decides by the access rules.
	Verifier   authz.TokenVerifier
	Authorizer *authz.Authorizer
	// Workers run beside the server (e.g. the stream hub). Their context ends after the drain delay and
	// before the listeners stop, so live streams end cleanly instead of holding up GracefulStop.
	Workers []func(context.Context)
}

// ServiceNeeds maps each gRPC service name to the dependencies it cannot work without; grpc.health.v1
// reports it NOT_SERVING while any of them is down.
var ServiceNeeds = map[string][]string{
	platformv1.ConversationService_ServiceDesc.ServiceName: {"mongodb", "redis"},
	platformv1.MessageService_ServiceDesc.ServiceName:      {"mongodb", "redis", "kafka"},
	platformv1.DeadLetterService_ServiceDesc.ServiceName:   {"mongodb", "kafka"},
	platformv1.HealthService_ServiceDesc.ServiceName:       {},
}

// Server is the running gateway.
type Server struct {
	cfg     config.Config
	logger  *slog.Logger
	checker *health.Checker

	grpc    *grpc.Server
	http    *http.Server
	metrics *http.Server
	conn    *grpc.ClientConn // the REST gateway's connection to grpc

	grpcLis, httpLis, metricsLis net.Listener
	workers                      []func(context.Context)
}

// New builds the server and binds its three listeners, so a port clash fails here, before anything runs.
func New(ctx context.Context, opts Options) (*Server, error) {
	s := &Server{cfg: opts.Config, logger: opts.Logger, workers: opts.Workers}
	s.checker = health.NewChecker(opts.Dependencies, s.cfg.HealthInterval, s.cfg.HealthCheckTimeout, s.logger)

	var err error
	if s.grpcLis, err = net.Listen("tcp", s.cfg.GRPCAddr); err != nil {
		return nil, fmt.Errorf("GRPC_ADDR %s: %w", s.cfg.GRPCAddr, err)
	}
	if s.httpLis, err = net.Listen("tcp", s.cfg.HTTPAddr); err != nil {
		s.closeListeners()
		return nil, fmt.Errorf("HTTP_ADDR %s: %w", s.cfg.HTTPAddr, err)
	}
	if s.metricsLis, err = net.Listen("tcp", s.cfg.MetricsAddr); err != nil {
		s.closeListeners()
		return nil, fmt.Errorf("METRICS_ADDR %s: %w", s.cfg.MetricsAddr, err)
	}

	grpcMetrics := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram())
	if err := opts.Registry.Register(grpcMetrics); err != nil {
		s.closeListeners()
		return nil, fmt.Errorf("register grpc metrics: %w", err)
	}
	access := authz.NewInterceptor(opts.Verifier, opts.Authorizer)
	s.grpc = newGRPCServer(s.logger, grpcMetrics, access)
	registerServices(s.grpc, opts.Services, s.checker)
	hs := grpchealth.NewServer()
	healthpb.RegisterHealthServer(s.grpc, hs)
	health.FollowChecker(s.checker, hs, ServiceNeeds)
	reflection.Register(s.grpc)
	grpcMetrics.InitializeMetrics(s.grpc)
	// Default deny: refuse to start when any registered method lacks an access rule.
	if err := access.LoadRules(s.grpc.GetServiceInfo()); err != nil {
		s.closeListeners()
		return nil, err
	}

	restMetrics, err := newRESTMetrics(opts.Registry)
	if err != nil {
		s.closeListeners()
		return nil, fmt.Errorf("register REST metrics: %w", err)
	}
	rest, conn, err := newRESTGateway(ctx, dialTarget(s.grpcLis.Addr()), restMetrics)
	if err != nil {
		s.closeListeners()
		return nil, err
	}
	s.conn = conn
	mux := http.NewServeMux()
	healthHTTP := health.HTTPHandler(s.checker)
	mux.Handle("GET /healthz", healthHTTP)
	mux.Handle("GET /readyz", healthHTTP)
	mux.Handle("/", rest)
	s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(s.logger.Handler(), slog.LevelWarn)}
	s.metrics = &http.Server{Handler: observability.MetricsHandler(opts.Registry), ReadHeaderTimeout: 10 * time.Second}
	return s, nil
}

func newGRPCServer(logger *slog.Logger, metrics *grpcprom.ServerMetrics, access *authz.Interceptor) *grpc.Server {
	logOpts := []logging.Option{
		logging.WithLogOnEvents(logging.FinishCall),
		// Evaluated when the call ends, so the caller authenticated further down the chain is known.
		logging.WithFieldsFromContext(func(ctx context.Context) logging.Fields {
			sub, tenant := requestid.Caller(ctx)
			return logging.Fields{"request_id", requestid.From(ctx), "principal", sub, "tenant", tenant}
		}),
	}
	rpcLogger := logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		logger.Log(ctx, slog.Level(lvl), msg, fields...)
	})
	recoveryOpt := recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		logger.ErrorContext(ctx, "panic in handler", "panic", fmt.Sprint(p), "request_id", requestid.From(ctx), "stack", string(debug.Stack()))
		return status.Error(codes.Internal, "internal error")
	})
	// Order matters: the request id first so every later interceptor sees it; metrics and logging before
	// access control so denied calls are counted and logged; recovery last so a panic becomes INTERNAL
	// before metrics and logs record the call.
	return grpc.NewServer(
		grpc.ChainUnaryInterceptor(
			requestid.UnaryServerInterceptor(),
			metrics.UnaryServerInterceptor(),
			logging.UnaryServerInterceptor(rpcLogger, logOpts...),
			access.Unary(),
			recovery.UnaryServerInterceptor(recoveryOpt),
		),
		grpc.ChainStreamInterceptor(
			requestid.StreamServerInterceptor(),
			metrics.StreamServerInterceptor(),
			logging.StreamServerInterceptor(rpcLogger, logOpts...),
			access.Stream(),
			recovery.StreamServerInterceptor(recoveryOpt),
		),
	)
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
	platformv1.RegisterHealthServiceServer(s, health.NewService(checker))
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

// Checker returns the dependency checker, for callers that add watchers.
func (s *Server) Checker() *health.Checker { return s.checker }

// Run serves until ctx is cancelled or a listener fails, then shuts down in the documented order:
// readiness 503 and grpc health NOT_SERVING at once; wait the drain delay so load balancers notice; stop
// REST then gRPC, letting in-flight calls finish within SHUTDOWN_TIMEOUT (after which they are cut).
// The caller closes the clients afterwards (flushing the Kafka producer).
func (s *Server) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	checkCtx, stopChecks := context.WithCancel(context.Background())
	defer stopChecks()
	g.Go(func() error { s.checker.Run(checkCtx); return nil })
	workerCtx, stopWorkers := context.WithCancel(context.Background())
	defer stopWorkers()
	for _, w := range s.workers {
		g.Go(func() error { w(workerCtx); return nil })
	}
	g.Go(func() error {
		if err := s.grpc.Serve(s.grpcLis); err != nil {
			return fmt.Errorf("serve grpc: %w", err)
		}
		return nil
	})
	g.Go(func() error { return serveHTTP(s.http, s.httpLis, "rest") })
	g.Go(func() error { return serveHTTP(s.metrics, s.metricsLis, "metrics") })
	s.logger.Info("gateway serving", "grpc", s.GRPCAddr(), "http", s.HTTPAddr(), "metrics", s.MetricsAddr())

	g.Go(func() error {
		<-gctx.Done()
		s.shutdown(stopWorkers)
		stopChecks()
		return nil
	})
	return g.Wait()
}

func serveHTTP(srv *http.Server, lis net.Listener, name string) error {
	if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve %s: %w", name, err)
	}
	return nil
}

func (s *Server) shutdown(stopWorkers func()) {
	start := time.Now()
	s.checker.SetDraining()
	s.logger.Info("draining: readiness is 503, grpc health NOT_SERVING", "drain_delay", s.cfg.DrainDelay.String())
	time.Sleep(s.cfg.DrainDelay)
	stopWorkers()

	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	// REST first: its in-flight requests still need the gRPC server behind them.
	if err := s.http.Shutdown(ctx); err != nil {
		s.logger.Warn("REST requests still running at the shutdown deadline; closing them", "error", err)
		_ = s.http.Close()
	}
	done := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.logger.Warn("gRPC calls still running at the shutdown deadline; cancelling them")
		s.grpc.Stop()
		<-done
	}
	_ = s.conn.Close()
	mctx, mcancel := context.WithTimeout(context.Background(), time.Second)
	defer mcancel()
	_ = s.metrics.Shutdown(mctx)
	s.logger.Info("gateway stopped", "took", time.Since(start).Round(time.Millisecond).String())
}

func (s *Server) closeListeners() {
	for _, l := range []net.Listener{s.grpcLis, s.httpLis, s.metricsLis} {
		if l != nil {
			_ = l.Close()
		}
	}
}
