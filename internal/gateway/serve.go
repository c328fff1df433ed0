package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/msgplatform/platform/internal/api"
	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/authz"
	"github.com/msgplatform/platform/internal/clients"
	"github.com/msgplatform/platform/internal/config"
	"github.com/msgplatform/platform/internal/dlq"
	"github.com/msgplatform/platform/internal/events"
	"github.com/msgplatform/platform/internal/observability"
	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/stream"
)

// connectTimeout bounds the wait for MongoDB at start-up.
const connectTimeout = 30 * time.Second

// Serve is the whole life of a gateway process: open the clients, serve until ctx ends, shut down in
// order, then flush the Kafka producer and close the clients. onReady, if not nil, sees the server once
// it listens (tests and the devstack use it to learn the bound addresses).
func Serve(ctx context.Context, cfg config.Config, logger *slog.Logger, onReady func(*Server)) error {
	cl, err := clients.Open(ctx, cfg, connectTimeout, logger)
	if err != nil {
		return err
	}
	srv, err := build(ctx, cfg, logger, cl)
	if err != nil {
		_ = cl.Close(context.Background())
		return err
	}
	if onReady != nil {
		onReady(srv)
	}
	runErr := srv.Run(ctx)

	closeCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := cl.Close(closeCtx); err != nil {
		logger.Error("closing clients", "error", err)
		if runErr == nil {
			runErr = fmt.Errorf("close clients: %w", err)
		}
	}
	return runErr
}

// build assembles the gateway over open clients: the store (indexes ensured), token verifier,
// membership cache and authorizer, then the server.
func build(ctx context.Context, cfg config.Config, logger *slog.Logger, cl *clients.Clients) (*Server, error) {
	verifier, err := auth.NewVerifier(auth.Config{
		HMACSecret: []byte(cfg.AuthHMACSecret),
		JWKSFile:   cfg.AuthJWKSFile,
		Issuer:     cfg.AuthIssuer,
		Audience:   cfg.AuthAudience,
	})
	if err != nil {
		return nil, err
	}
	st := store.New(cl.DB)
	st.SetGuard(cl.Guard())
	if err := st.EnsureIndexes(ctx); err != nil {
		return nil, fmt.Errorf("mongodb indexes: %w", err)
	}
	reg := observability.NewRegistry()
	for _, c := range cl.Collectors() {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register client metrics: %w", err)
		}
	}
	dir := authz.StoreDirectory{Store: st}
	members, err := authz.NewMembershipCache(cl.Redis, dir, authz.CacheConfig{}, reg, logger)
	if err != nil {
		return nil, err
	}
	authorizer, err := authz.NewAuthorizer(members, dir, reg)
	if err != nil {
		return nil, err
	}
	publisher, err := events.NewPublisher(cl.Kafka, cfg.KafkaSigningKeys, reg)
	if err != nil {
		return nil, err
	}
	deadLetters := store.NewDeadLetters(cl.DB)
	deadLetters.SetGuard(cl.Guard())
	if err := deadLetters.EnsureIndexes(ctx); err != nil {
		return nil, fmt.Errorf("mongodb indexes: %w", err)
	}
	dlqMetrics, err := dlq.NewMetrics(reg)
	if err != nil {
		return nil, err
	}
	hub, err := stream.NewHub(cfg.KafkaBrokers, cfg.KafkaSigningKeys, reg, logger)
	if err != nil {
		return nil, fmt.Errorf("stream hub: %w", err)
	}
	deps := api.Deps{Store: st, Members: members, Events: publisher, Logger: logger,
		Active: api.NewActiveConversations(api.DefaultActiveTTL, 0)}
	srv, err := New(ctx, Options{
		Services: Services{
			Conversations: api.NewConversations(deps),
			Messages:      api.NewMessages(deps, cl.Kafka, cfg.KafkaSigningKeys, api.NewSendKeys(cl.Redis), hub, authorizer),
			DeadLetters: api.NewDeadLetters(api.DeadLetterDeps{
				Store:   deadLetters,
				Retrier: dlq.NewRetrier(deadLetters, cl.Kafka, dlqMetrics, logger, dlq.Config{}),
				Metrics: dlqMetrics,
				Logger:  logger,
			}),
		},
		// members.Run holds the invalidation subscription that enables the in-process membership cache.
		Workers:      []func(context.Context){hub.Run, members.Run},
		Config:       cfg,
		Logger:       logger,
		Registry:     reg,
		Dependencies: append(cl.Dependencies(), cl.PipelineDependency(cfg.PipelineStallAfter)),
		Verifier:     verifier,
		Authorizer:   authorizer,
	})
	if err != nil {
		hub.Close()
		return nil, err
	}
	return srv, nil
}
