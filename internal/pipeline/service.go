package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.mongodb.org/mongo-driver/v2/mongo/writeconcern"

	"github.com/msgplatform/platform/internal/authz"
	"github.com/msgplatform/platform/internal/clients"
	"github.com/msgplatform/platform/internal/config"
	"github.com/msgplatform/platform/internal/dlq"
	"github.com/msgplatform/platform/internal/health"
	"github.com/msgplatform/platform/internal/store"
)

// connectTimeout bounds the wait for MongoDB at start-up.
const connectTimeout = 30 * time.Second

// Service is the ingest pipeline of one process over its own connections: services/pipeline runs it
// (with health and metrics around it), and the devstack runs the same wiring beside the gateway.
type Service struct {
	clients  *clients.Clients
	writer   *store.BulkWriter
	pipeline *Pipeline
	members  *authz.MembershipCache
	logger   *slog.Logger
	timeout  time.Duration // SHUTDOWN_TIMEOUT
}

// Open connects to MongoDB, Redis and Kafka, ensures the store's indexes and builds the pipeline:
// the membership cache and authorizer (as the gateway builds them), the bulk writer, the stages and the
// consumer. Every metric goes to reg. The batch in hand may take SHUTDOWN_TIMEOUT to drain unless
// pcfg.DrainTimeout says otherwise.
func Open(ctx context.Context, cfg config.Config, pcfg Config, reg prometheus.Registerer, logger *slog.Logger) (*Service, error) {
	if pcfg.DrainTimeout <= 0 {
		pcfg.DrainTimeout = cfg.ShutdownTimeout
	}
	if pcfg.WriteConcern == nil {
		pcfg.WriteConcern = writeConcern(cfg.MongoWriteConcern)
	}
	pcfg = pcfg.withDefaults()
	cl, err := clients.Open(ctx, cfg, connectTimeout, logger)
	if err != nil {
		return nil, err
	}
	s := &Service{clients: cl, logger: logger, timeout: cfg.ShutdownTimeout}
	if err := s.build(ctx, cfg, pcfg, reg); err != nil {
		_ = s.Close(context.Background())
		return nil, err
	}
	return s, nil
}

func (s *Service) build(ctx context.Context, cfg config.Config, pcfg Config, reg prometheus.Registerer) error {
	st := store.New(s.clients.DB)
	st.SetGuard(s.clients.Guard())
	for _, c := range s.clients.Collectors() {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register client metrics: %w", err)
		}
	}
	if err := st.EnsureIndexes(ctx); err != nil {
		return fmt.Errorf("mongodb indexes: %w", err)
	}
	dir := batchDirectory{authz.StoreDirectory{Store: st}}
	members, err := authz.NewMembershipCache(s.clients.Redis, dir, authz.CacheConfig{}, reg, s.logger)
	if err != nil {
		return err
	}
	authorizer, err := authz.NewAuthorizer(members, dir, reg)
	if err != nil {
		return err
	}
	s.writer, err = store.NewBulkWriter(st, store.BulkConfig{
		MaxDocs: pcfg.BulkMaxDocs, MaxDelay: pcfg.BulkMaxDelay, MaxInFlight: pcfg.BulkMaxInFlight, WriteConcern: pcfg.WriteConcern,
	}, reg, s.logger)
	if err != nil {
		return err
	}
	stages, err := Stages(Deps{
		Keys: cfg.KafkaSigningKeys, Conversations: st.Conversations, Authorizer: authorizer, Writer: s.writer,
		Producer: s.clients.Kafka, Registry: reg,
	})
	if err != nil {
		return err
	}
	deadLetters := store.NewDeadLetters(s.clients.DB)
	deadLetters.SetGuard(s.clients.Guard())
	fallback := dlq.NewDirectWriter(deadLetters, cfg.KafkaSigningKeys, dlq.Policy{}, nil, s.logger)
	s.pipeline, err = New(pcfg, cfg.KafkaBrokers, stages, s.clients.Kafka, fallback, reg, s.logger)
	if err != nil {
		return err
	}
	s.pipeline.newReads = func(keys []string) *batchReads { return newBatchReads(st, keys) }
	s.members = members
	return nil
}

// Dependencies describes the connections, and the group's progress, as health checks (for /healthz,
// /readyz and /v1/health).
func (s *Service) Dependencies(stallAfter time.Duration) []health.Dependency {
	return append(s.clients.Dependencies(), s.clients.PipelineDependency(stallAfter))
}

// Run consumes until ctx ends and the batch in hand is committed (or abandoned; then the error says so).
// The membership cache's invalidation subscription (which enables its in-process layer) lives as long.
func (s *Service) Run(ctx context.Context) error {
	subCtx, stop := context.WithCancel(ctx)
	subDone := make(chan struct{})
	go func() { defer close(subDone); s.members.Run(subCtx) }()
	defer func() { stop(); <-subDone }()
	return s.pipeline.Run(ctx)
}

// Close leaves the consumer group, stops the bulk writer, flushes the producer (events and dead letters)
// and closes the connections, within ctx. Call it after Run returned.
func (s *Service) Close(ctx context.Context) error {
	if s.pipeline != nil {
		s.pipeline.Close()
	}
	if s.writer != nil {
		s.writer.Close()
	}
	if err := s.clients.Close(ctx); err != nil {
		return fmt.Errorf("close pipeline clients: %w", err)
	}
	return nil
}

// Serve is the pipeline's whole life without HTTP listeners, for the devstack: open, run until ctx ends,
// close (bounded by SHUTDOWN_TIMEOUT). Its metrics go to reg.
func Serve(ctx context.Context, cfg config.Config, pcfg Config, reg prometheus.Registerer, logger *slog.Logger) error {
	s, err := Open(ctx, cfg, pcfg, reg, logger)
	if err != nil {
		return fmt.Errorf("pipeline: %w", err)
	}
	runErr := s.Run(ctx)
	closeCtx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	return errors.Join(runErr, s.Close(closeCtx))
}

// writeConcern turns MONGO_WRITE_CONCERN (validated by internal/config) into the driver's value.
func writeConcern(v string) *writeconcern.WriteConcern {
	if n, err := strconv.Atoi(v); err == nil {
		return &writeconcern.WriteConcern{W: n}
	}
	return writeconcern.Majority()
}
