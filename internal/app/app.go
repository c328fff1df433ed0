// Package app is the composition root of the platform's processes: the one place where configuration
// becomes running parts. Run opens the process's clients once (one MongoDB pool, one Redis client, one
// Kafka producer per role), builds the shared parts (store, membership cache, authorizer, health
// checker), adds the gateway's and the pipeline's parts as the roles ask, and runs them all in one
// lifecycle group whose order of Add calls is the shutdown sequence. services/gateway runs the gateway
// role, services/pipeline the pipeline role, and the devstack both, in one process, over embedded servers.
//
// Libraries never read the configuration: everything they need is handed to them here.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.mongodb.org/mongo-driver/v2/mongo/writeconcern"
	"go.opentelemetry.io/otel/trace"

	"github.com/msgplatform/platform/internal/api"
	"github.com/msgplatform/platform/internal/audit"
	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/authz"
	"github.com/msgplatform/platform/internal/config"
	"github.com/msgplatform/platform/internal/convcache"
	"github.com/msgplatform/platform/internal/dlq"
	"github.com/msgplatform/platform/internal/events"
	"github.com/msgplatform/platform/internal/gateway"
	"github.com/msgplatform/platform/internal/health"
	"github.com/msgplatform/platform/internal/lifecycle"
	"github.com/msgplatform/platform/internal/observability"
	"github.com/msgplatform/platform/internal/pipeline"
	"github.com/msgplatform/platform/internal/ratelimit"
	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/stream"
	"github.com/msgplatform/platform/internal/tlsconfig"
	"github.com/msgplatform/platform/internal/tracing"
	"github.com/msgplatform/platform/internal/watchers"
)

// Roles select what a process runs.
type Roles struct {
	// Gateway: the gRPC and REST API, live streams, /healthz, /readyz, /metrics.
	Gateway bool
	// Pipeline: the ingest pipeline, the DLQ processor, and (as configured) the DLQ retry scheduler and
	// the change-stream watchers. Without the gateway role, health and metrics get listeners of their own.
	Pipeline bool
}

// Addresses are where a running process listens (useful with port 0).
type Addresses struct {
	GRPC, HTTP, Metrics string // GRPC empty without the gateway role
}

// Option changes how Run builds the process beyond its configuration (tests inject parts with it).
type Option func(*options)

type options struct {
	tracerProvider trace.TracerProvider
}

// WithTracerProvider makes the process trace into tp (an SDK provider with an in-memory exporter, in
// tests) instead of the one the OTEL_* configuration asks for; tp stays the caller's to shut down.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *options) { o.tracerProvider = tp }
}

// Run builds the process for roles, calls onReady (if not nil) once it listens, serves until ctx ends,
// stops every part in order, then flushes the Kafka producer and closes the clients.
func Run(ctx context.Context, cfg config.Config, logger *slog.Logger, roles Roles, onReady func(Addresses), opts ...Option) error {
	if !roles.Gateway && !roles.Pipeline {
		return errors.New("app: no role to run")
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	tp, shutdownTracing, err := tracerProvider(ctx, cfg, roles, o)
	if err != nil {
		return err
	}
	defer shutdownTracing()
	if tracing.Enabled(tp) {
		logger = tracing.Logger(logger) // log lines carry trace_id and span_id
	}
	c, err := openCore(ctx, cfg, logger)
	if err != nil {
		return err
	}
	c.tracer = tp
	c.clients.traced = tracing.Enabled(tp)
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		defer cancel()
		if err := c.clients.close(cctx); err != nil {
			logger.Error("closing clients", "error", err)
		}
	}()

	var gw *gatewayParts
	var pl *pipelineParts
	if roles.Gateway {
		if gw, err = newGateway(ctx, c); err != nil {
			return err
		}
	}
	if roles.Pipeline {
		if pl, err = newPipeline(c); err != nil {
			if gw != nil {
				gw.close()
			}
			return err
		}
	}

	// The shutdown sequence, in this order: readiness off and the drain delay (load balancers notice);
	// live streams end (so they do not hold up the gRPC server's graceful stop); REST, then gRPC, stop
	// accepting and finish their in-flight calls; the consumers finish and commit the batch in hand;
	// metrics and health go last, so the drain stays observable.
	g := lifecycle.NewGroup(logger)
	g.StopTimeout = cfg.DrainDelay + cfg.ShutdownTimeout
	g.Add("drain", func(ctx context.Context) error {
		<-ctx.Done()
		c.checker.SetDraining()
		if gw != nil {
			logger.Info("draining: readiness is 503, grpc health NOT_SERVING", "drain_delay", cfg.DrainDelay.String())
			time.Sleep(cfg.DrainDelay)
		}
		return nil
	})
	addrs := Addresses{}
	if gw != nil {
		g.Add("streams", func(ctx context.Context) error { gw.hub.Run(ctx); return nil })
		g.Add("rest", gw.server.ServeREST)
		g.Add("grpc", gw.server.ServeGRPC)
		addrs = Addresses{GRPC: gw.server.GRPCAddr(), HTTP: gw.server.HTTPAddr(), Metrics: gw.server.MetricsAddr()}
	}
	if pl != nil {
		g.Add("ingest", pl.runIngest)
		g.Add("dlq processor", pl.runProcessor)
		if pl.scheduler != nil {
			g.Add("dlq scheduler", pl.scheduler.Run)
		}
		if pl.watchers != nil {
			g.Add("watchers", pl.watchers.Run)
		}
	}
	if gw != nil {
		g.Add("metrics", gw.server.ServeMetrics)
	} else {
		ops, err := listenOps(cfg, c)
		if err != nil {
			pl.close()
			return err
		}
		g.Add("health and metrics listeners", ops.serve)
		addrs = Addresses{HTTP: ops.health.Addr().String(), Metrics: ops.metrics.Addr().String()}
	}
	if c.tls.Watching() {
		g.Add("tls reloads", tlsReloads(c.tls))
	}
	// The membership cache's invalidation subscription enables its in-process layer.
	g.Add("membership invalidations", func(ctx context.Context) error { c.members.Run(ctx); return nil })
	g.Add("health checks", func(ctx context.Context) error { c.checker.Run(ctx); return nil })

	logger.Info("serving", "gateway", roles.Gateway, "pipeline", roles.Pipeline, "grpc", addrs.GRPC,
		"http", addrs.HTTP, "metrics", addrs.Metrics, "parts", g.Names())
	if onReady != nil {
		onReady(addrs)
	}
	return g.Run(ctx)
}

// tracerProvider is the process's tracer provider: o's, else the OTLP exporter's when the OTEL_* variables
// turn tracing on (shut down, flushing its spans, by the function returned), else nil (no tracing).
func tracerProvider(ctx context.Context, cfg config.Config, roles Roles, o options) (trace.TracerProvider, func(), error) {
	if o.tracerProvider != nil {
		return o.tracerProvider, func() {}, nil
	}
	if !cfg.Tracing.Enabled {
		return nil, func() {}, nil
	}
	name := cfg.Tracing.ServiceName
	if name == "" {
		name = "platform"
		if !roles.Pipeline {
			name = "platform-gateway"
		} else if !roles.Gateway {
			name = "platform-pipeline"
		}
	}
	tp, shutdown, err := tracing.NewProvider(ctx, name, cfg.Tracing.Protocol)
	if err != nil {
		return nil, nil, err
	}
	return tp, func() {
		sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		defer cancel()
		_ = shutdown(sctx) // spans not exported by then are lost, never the process's shutdown
	}, nil
}

// core is what every role of a process shares.
type core struct {
	cfg         config.Config
	logger      *slog.Logger
	reg         *prometheus.Registry
	clients     *clients
	store       *store.Store
	deadLetters *store.DeadLetters
	members     *authz.MembershipCache
	authorizer  *authz.Authorizer
	dlqMetrics  *dlq.Metrics
	checker     *health.Checker
	// tls loads and reloads the certificates of the listeners and Kafka clients (when configured).
	tls *tlsconfig.Reloader
	// tracer is the process's tracer provider; nil when tracing is off.
	tracer trace.TracerProvider
}

func openCore(ctx context.Context, cfg config.Config, logger *slog.Logger) (c *core, err error) {
	tlsr, err := tlsconfig.New(nil, logger)
	if err != nil {
		return nil, err
	}
	cl, err := openClients(ctx, cfg, logger, tlsr)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = cl.close(context.Background())
		}
	}()
	c = &core{cfg: cfg, logger: logger, reg: observability.NewRegistry(), clients: cl, tls: tlsr}
	for _, col := range append(cl.collectors(), tlsr) {
		if err := c.reg.Register(col); err != nil {
			return nil, fmt.Errorf("register client metrics: %w", err)
		}
	}
	c.store = store.New(cl.db)
	c.store.SetGuard(cl.guard())
	if err := c.store.EnsureIndexes(ctx); err != nil {
		return nil, fmt.Errorf("mongodb indexes: %w", err)
	}
	c.deadLetters = store.NewDeadLetters(cl.db)
	c.deadLetters.SetGuard(cl.guard())
	if err := c.deadLetters.EnsureIndexes(ctx); err != nil {
		return nil, fmt.Errorf("mongodb indexes: %w", err)
	}
	dir := authz.StoreDirectory{Store: c.store}
	if c.members, err = authz.NewMembershipCache(cl.redis, dir, authz.CacheConfig{}, c.reg, logger); err != nil {
		return nil, err
	}
	if c.authorizer, err = authz.NewAuthorizer(c.members, dir, c.reg); err != nil {
		return nil, err
	}
	if c.dlqMetrics, err = dlq.NewMetrics(c.reg); err != nil {
		return nil, err
	}
	c.checker = health.NewChecker(cl.dependencies(cfg.PipelineStallAfter), cfg.HealthInterval, cfg.HealthCheckTimeout, logger)
	return c, nil
}

// gatewayParts are the gateway role's parts.
type gatewayParts struct {
	server  *gateway.Server
	hub     *stream.Hub
	limiter *ratelimit.Limiter // nil when no quota is set
}

func newGateway(ctx context.Context, c *core) (*gatewayParts, error) {
	cfg := c.cfg
	verifier, err := auth.NewVerifier(auth.Config{
		HMACSecret: []byte(cfg.AuthHMACSecret), JWKSFile: cfg.AuthJWKSFile, Issuer: cfg.AuthIssuer, Audience: cfg.AuthAudience,
		MaxTokenTTL: cfg.AuthMaxTokenTTL,
	})
	if err != nil {
		return nil, err
	}
	ltls, err := loadListenerTLS(cfg, c.tls)
	if err != nil {
		return nil, err
	}
	// The audit trail: one event per mutation and per operator call, granted or refused, written through
	// the process's logger whatever LOG_LEVEL (msg=audit component=audit audit=true), and counted.
	recorder := audit.New(c.logger)
	if err := recorder.Register(c.reg); err != nil {
		return nil, fmt.Errorf("register audit metrics: %w", err)
	}
	producer, err := c.clients.producer("gateway")
	if err != nil {
		return nil, err
	}
	publisher, err := events.NewPublisher(producer, cfg.KafkaSigningKeys, c.reg)
	if err != nil {
		return nil, err
	}
	hub, err := stream.NewHub(c.clients.kafka, cfg.KafkaSigningKeys, c.reg, c.logger)
	if err != nil {
		return nil, fmt.Errorf("stream hub: %w", err)
	}
	limiter, err := newLimiter(c)
	if err != nil {
		hub.Close()
		return nil, err
	}
	var quota gateway.Interceptors // a nil *ratelimit.Limiter in it would not be a nil interface
	if limiter != nil {
		quota = limiter
	}
	deps := api.Deps{Store: c.store, Members: c.members, Events: publisher, Logger: c.logger,
		Active: convcache.New(convcache.DefaultTTL, 0), MaxStreamsPerPrincipal: cfg.StreamMaxPerPrincipal}
	server, err := gateway.New(ctx, gateway.Options{
		GRPCAddr: cfg.GRPCAddr, HTTPAddr: cfg.HTTPAddr, MetricsAddr: cfg.MetricsAddr, ShutdownTimeout: cfg.ShutdownTimeout,
		Logger: c.logger, Registry: c.reg, Checker: c.checker, Verifier: verifier, Authorizer: c.authorizer,
		GRPCTLS: ltls.grpc, HTTPTLS: ltls.http, InternalTLS: ltls.internal,
		Quota: quota, Audit: recorder, StreamKeepAlive: cfg.StreamKeepAlive, TracerProvider: c.tracer,
		Services: gateway.Services{
			Conversations: api.NewConversations(deps),
			Messages:      api.NewMessages(deps, producer, cfg.KafkaSigningKeys, api.NewSendKeys(c.clients.redis), hub, c.authorizer),
			DeadLetters: api.NewDeadLetters(api.DeadLetterDeps{
				Store:   c.deadLetters,
				Retrier: dlq.NewRetrier(c.deadLetters, producer, c.dlqMetrics, c.logger, dlqConfig(cfg)),
				Metrics: c.dlqMetrics,
				Logger:  c.logger,
			}),
		},
	})
	if err != nil {
		hub.Close()
		if limiter != nil {
			_ = limiter.Close()
		}
		return nil, err
	}
	return &gatewayParts{server: server, hub: hub, limiter: limiter}, nil
}

// newLimiter returns the quotas (RATE_LIMIT_*) kept in the process's Redis, or nil when none is set.
func newLimiter(c *core) (*ratelimit.Limiter, error) {
	rl := c.cfg.RateLimit
	cfg := ratelimit.Config{
		Principal: ratelimit.Limit{Rate: rl.PrincipalRPS, Burst: rl.PrincipalBurst},
		Tenant:    ratelimit.Limit{Rate: rl.TenantRPS, Burst: rl.TenantBurst},
	}
	if !cfg.Enabled() {
		return nil, nil
	}
	return ratelimit.NewForClient(c.clients.redis, cfg, c.reg, c.logger)
}

func (g *gatewayParts) close() {
	g.server.Close()
	g.hub.Close()
	if g.limiter != nil {
		_ = g.limiter.Close()
	}
}

// pipelineParts are the pipeline role's parts.
type pipelineParts struct {
	writer    *store.BulkWriter
	ingest    *pipeline.Pipeline
	processor *dlq.Processor
	scheduler *dlq.Scheduler     // nil when DLQ_SCHEDULER_ENABLED=false
	watchers  *watchers.Watchers // nil when WATCHERS_ENABLED=false
}

func newPipeline(c *core) (p *pipelineParts, err error) {
	cfg := c.cfg
	p = &pipelineParts{}
	defer func() {
		if err != nil {
			p.close()
		}
	}()
	producer, err := c.clients.producer("pipeline")
	if err != nil {
		return p, err
	}
	publisher, err := events.NewPublisher(producer, cfg.KafkaSigningKeys, c.reg)
	if err != nil {
		return p, err
	}
	pc := cfg.Pipeline
	wc := writeConcern(cfg.MongoWriteConcern)
	if p.writer, err = store.NewBulkWriter(c.store, store.BulkConfig{
		MaxDocs: pc.BulkMaxDocs, MaxDelay: pc.BulkMaxDelay, MaxInFlight: pc.BulkMaxInFlight, WriteConcern: wc,
	}, c.reg, c.logger); err != nil {
		return p, err
	}
	dcfg := dlqConfig(cfg)
	dcfg.TracerProvider = c.tracer
	if p.ingest, err = pipeline.New(pipeline.Config{
		MaxPollRecords: pc.MaxPollRecords, BulkMaxDocs: pc.BulkMaxDocs, BulkMaxDelay: pc.BulkMaxDelay, BulkMaxInFlight: pc.BulkMaxInFlight,
		WriteConcern: wc, RetryMax: pc.RetryMax, StageTimeout: pc.StageTimeout, TransientRetryTimeout: pc.TransientRetryTimeout,
		DrainTimeout: cfg.ShutdownTimeout, SessionTimeout: cfg.KafkaSessionTimeout, TracerProvider: c.tracer,
	}, pipeline.Deps{
		Kafka: c.clients.kafka, Keys: cfg.KafkaSigningKeys, Store: c.store, Active: convcache.New(convcache.DefaultTTL, 0),
		Authorizer: c.authorizer, Members: c.members, Writer: p.writer,
		Events: publisher, Producer: producer,
		DeadLetters: dlq.NewDirectWriter(c.deadLetters, cfg.KafkaSigningKeys, dcfg.Policy, c.dlqMetrics, c.logger),
		Registry:    c.reg, Logger: c.logger,
	}); err != nil {
		return p, err
	}
	if p.processor, err = dlq.NewProcessor(dcfg, c.clients.kafka, c.deadLetters, cfg.KafkaSigningKeys, c.dlqMetrics, c.logger); err != nil {
		return p, err
	}
	if cfg.DLQSchedulerEnabled {
		if p.scheduler, err = dlq.NewScheduler(dcfg, c.deadLetters, producer, c.dlqMetrics, c.logger); err != nil {
			return p, err
		}
	}
	if cfg.WatchersEnabled {
		if p.watchers, err = watchers.New(watchers.Deps{Database: c.clients.db, Redis: c.clients.redis, Cache: c.members,
			Publisher: publisher, Registry: c.reg, Logger: c.logger}); err != nil {
			return p, err
		}
	}
	return p, nil
}

// runIngest consumes until ctx ends and the batch in hand is committed, then leaves the group and flushes
// the bulk writer.
func (p *pipelineParts) runIngest(ctx context.Context) error {
	err := p.ingest.Run(ctx)
	p.ingest.Close()
	p.writer.Close()
	return err
}

// runProcessor stores dead letters until ctx ends and the batch in hand is committed, then leaves the
// group.
func (p *pipelineParts) runProcessor(ctx context.Context) error {
	err := p.processor.Run(ctx)
	p.processor.Close()
	return err
}

// close releases the parts of a pipeline that will not run.
func (p *pipelineParts) close() {
	if p.ingest != nil {
		p.ingest.Close()
	}
	if p.writer != nil {
		p.writer.Close()
	}
	if p.processor != nil {
		p.processor.Close()
	}
}

// dlqConfig is the dead-letter configuration of cfg (DLQ_*), drained within SHUTDOWN_TIMEOUT.
func dlqConfig(cfg config.Config) dlq.Config {
	return dlq.Config{DrainTimeout: cfg.ShutdownTimeout, SessionTimeout: cfg.KafkaSessionTimeout, Policy: dlq.Policy{
		MaxAttempts: cfg.DLQ.MaxAttempts, InitialDelay: cfg.DLQ.InitialDelay, MaxDelay: cfg.DLQ.MaxDelay,
	}}
}

// writeConcern turns MONGO_WRITE_CONCERN (validated by internal/config) into the driver's value.
func writeConcern(v string) *writeconcern.WriteConcern {
	if n, err := strconv.Atoi(v); err == nil {
		return &writeconcern.WriteConcern{W: n}
	}
	return writeconcern.Majority()
}

// ops are the listeners of a process without the gateway: /healthz, /readyz and /v1/health on HTTP_ADDR,
// /metrics on METRICS_ADDR.
type ops struct {
	health, metrics net.Listener
	c               *core
}

func listenOps(cfg config.Config, c *core) (*ops, error) {
	h, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("HTTP_ADDR %s: %w", cfg.HTTPAddr, err)
	}
	if h, err = opsHTTPTLS(h, cfg, c.tls); err != nil {
		return nil, err
	}
	m, err := net.Listen("tcp", cfg.MetricsAddr)
	if err != nil {
		_ = h.Close()
		return nil, fmt.Errorf("METRICS_ADDR %s: %w", cfg.MetricsAddr, err)
	}
	return &ops{health: h, metrics: m, c: c}, nil
}

func (o *ops) serve(ctx context.Context) error {
	health := &http.Server{Handler: health.HTTPHandler(o.c.checker, nil), ReadHeaderTimeout: 10 * time.Second}
	metrics := &http.Server{Handler: observability.MetricsHandler(o.c.reg), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- lifecycle.ServeHTTP(ctx, metrics, o.metrics, time.Second) }()
	err := lifecycle.ServeHTTP(ctx, health, o.health, time.Second)
	return errors.Join(err, <-errc)
}
