package server

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/msgplatform/platform/internal/clients"
	"github.com/msgplatform/platform/internal/config"
	"github.com/msgplatform/platform/internal/observability"
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
	srv, err := New(ctx, Options{
		Config:       cfg,
		Logger:       logger,
		Registry:     observability.NewRegistry(),
		Dependencies: cl.Dependencies(),
	})
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
