// Command pipeline runs the Kafka consumers of the platform (ingest pipeline, DLQ processor, retry
// scheduler, change-stream workers). Those arrive with their own issues; today the process connects to
// its dependencies and serves /healthz, /readyz (HTTP_ADDR) and /metrics (METRICS_ADDR) so it can be
// deployed, probed and scraped from day one.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/msgplatform/platform/internal/clients"
	"github.com/msgplatform/platform/internal/config"
	"github.com/msgplatform/platform/internal/health"
	"github.com/msgplatform/platform/internal/lifecycle"
	"github.com/msgplatform/platform/internal/observability"
)

func main() {
	cfg, err := config.FromEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, "pipeline:", err)
		os.Exit(2)
	}
	logger := observability.NewLogger(os.Stderr, cfg.LogLevel, cfg.LogFormat)
	ctx, stop := lifecycle.SignalContext(context.Background(), logger)
	defer stop()
	if err := run(ctx, cfg, logger); err != nil {
		logger.Error("pipeline failed", "error", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg config.Config, logger *slog.Logger) error {
	cl, err := clients.Open(ctx, cfg, 30*time.Second, logger)
	if err != nil {
		return err
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		defer cancel()
		if err := cl.Close(closeCtx); err != nil {
			logger.Error("closing clients", "error", err)
		}
	}()

	checker := health.NewChecker(cl.Dependencies(), cfg.HealthInterval, cfg.HealthCheckTimeout, logger)
	servers := []*http.Server{
		{Addr: cfg.HTTPAddr, Handler: health.HTTPHandler(checker), ReadHeaderTimeout: 10 * time.Second},
		{Addr: cfg.MetricsAddr, Handler: observability.MetricsHandler(observability.NewRegistry()), ReadHeaderTimeout: 10 * time.Second},
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { checker.Run(gctx); return nil })
	for _, srv := range servers {
		g.Go(func() error {
			if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serve %s: %w", srv.Addr, err)
			}
			return nil
		})
	}
	logger.Info("pipeline serving health and metrics; no consumers yet", "http", cfg.HTTPAddr, "metrics", cfg.MetricsAddr)
	g.Go(func() error {
		<-gctx.Done()
		checker.SetDraining()
		time.Sleep(cfg.DrainDelay)
		shutdownCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		defer cancel()
		for _, srv := range servers {
			_ = srv.Shutdown(shutdownCtx)
		}
		return nil
	})
	return g.Wait()
}
