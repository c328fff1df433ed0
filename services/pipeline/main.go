// Command pipeline runs the platform's Kafka consumers: the ingest pipeline (messages.inbound → stages →
// MongoDB, events on messages.events, failures on messages.dlq), the dead-letter processor and retry
// scheduler, and the change-stream watchers, with /healthz, /readyz and /v1/health on HTTP_ADDR and
// /metrics on METRICS_ADDR. Configuration comes from the environment (internal/config); what runs, and in
// which order it stops, is internal/app.Run with the pipeline role.
//
// Shutdown (SIGTERM/SIGINT): readiness turns 503 at once; polling stops; the batch in hand finishes and
// is committed (bounded by SHUTDOWN_TIMEOUT); the consumers leave their groups; the producer is flushed
// and the connections are closed.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/msgplatform/platform/internal/app"
	"github.com/msgplatform/platform/internal/config"
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
	if err := app.Run(ctx, cfg, logger, app.Roles{Pipeline: true}, nil); err != nil {
		logger.Error("pipeline failed", "error", err)
		os.Exit(1)
	}
}
