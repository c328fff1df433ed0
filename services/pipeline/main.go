// Command pipeline runs the Kafka consumers of the platform: the ingest pipeline (messages.inbound →
// stages → MongoDB, events on messages.events, failures on messages.dlq; see internal/pipeline), and the
// dead-letter processor and retry scheduler (messages.dlq → dead_letters, republishing due retries; see
// internal/dlq), and the change-stream watchers (membership cache invalidation and message events for
// changes made outside the API; see internal/watchers). It serves /healthz, /readyz (HTTP_ADDR) and /metrics (METRICS_ADDR).
//
// Shutdown (SIGTERM/SIGINT): readiness turns 503 at once; polling stops; the batch in hand finishes and
// is committed (bounded by SHUTDOWN_TIMEOUT); the HTTP listeners close after the drain delay; then the
// consumer leaves the group, the producer is flushed and the connections are closed.
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

	"github.com/msgplatform/platform/internal/config"
	"github.com/msgplatform/platform/internal/dlq"
	"github.com/msgplatform/platform/internal/health"
	"github.com/msgplatform/platform/internal/lifecycle"
	"github.com/msgplatform/platform/internal/observability"
	"github.com/msgplatform/platform/internal/pipeline"
	"github.com/msgplatform/platform/internal/watchers"
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

func run(ctx context.Context, cfg config.Config, logger *slog.Logger) (err error) {
	reg := observability.NewRegistry()
	svc, err := pipeline.Open(ctx, cfg, pipeline.Config{}, reg, logger)
	if err != nil {
		return err
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		defer cancel()
		if cerr := svc.Close(closeCtx); cerr != nil {
			logger.Error("closing pipeline", "error", cerr)
			err = errors.Join(err, cerr)
		}
	}()

	dead, err := dlq.Open(ctx, cfg, dlq.Config{}, reg, logger)
	if err != nil {
		return err
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		defer cancel()
		if cerr := dead.Close(closeCtx); cerr != nil {
			logger.Error("closing dlq", "error", cerr)
			err = errors.Join(err, cerr)
		}
	}()

	checker := health.NewChecker(svc.Dependencies(cfg.PipelineStallAfter), cfg.HealthInterval, cfg.HealthCheckTimeout, logger)
	servers := []*http.Server{
		{Addr: cfg.HTTPAddr, Handler: health.HTTPHandler(checker), ReadHeaderTimeout: 10 * time.Second},
		{Addr: cfg.MetricsAddr, Handler: observability.MetricsHandler(reg), ReadHeaderTimeout: 10 * time.Second},
	}
	g, gctx := errgroup.WithContext(ctx)
	checkCtx, stopChecks := context.WithCancel(context.Background())
	defer stopChecks()
	g.Go(func() error { checker.Run(checkCtx); return nil })
	for _, srv := range servers {
		g.Go(func() error {
			if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serve %s: %w", srv.Addr, err)
			}
			return nil
		})
	}
	// The consumer stops with gctx: a signal, or a listener or the pipeline failing.
	g.Go(func() error { return svc.Run(gctx) })
	g.Go(func() error { return dead.Run(gctx) })
	g.Go(func() error { return watchers.Serve(gctx, cfg, reg, logger) })
	logger.Info("pipeline serving health and metrics", "http", cfg.HTTPAddr, "metrics", cfg.MetricsAddr)
	g.Go(func() error {
		<-gctx.Done()
		checker.SetDraining()
		time.Sleep(cfg.DrainDelay)
		shutdownCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		defer cancel()
		for _, srv := range servers {
			_ = srv.Shutdown(shutdownCtx)
		}
		stopChecks()
		return nil
	})
	return g.Wait()
}
