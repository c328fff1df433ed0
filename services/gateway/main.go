// Command gateway serves the platform.v1 API over gRPC and REST (grpc-gateway), with grpc.health.v1,
// reflection, /healthz, /readyz and /metrics. Configuration comes from the environment (internal/config);
// what runs, and in which order it stops, is internal/app.Run with the gateway role.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/msgplatform/platform/internal/app"
	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/config"
	"github.com/msgplatform/platform/internal/lifecycle"
	"github.com/msgplatform/platform/internal/observability"
)

func main() {
	cfg, err := config.FromEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gateway:", err)
		os.Exit(2)
	}
	if cfg.AuthHMACSecret == auth.DevHMACSecret {
		fmt.Fprintln(os.Stderr, "gateway: AUTH_HMAC_SECRET is the public development secret; set a real one (at least 32 random bytes)")
		os.Exit(2)
	}
	logger := observability.NewLogger(os.Stderr, cfg.LogLevel, cfg.LogFormat)
	ctx, stop := lifecycle.SignalContext(context.Background(), logger)
	defer stop()
	if err := app.Run(ctx, cfg, logger, app.Roles{Gateway: true}, nil); err != nil {
		logger.Error("gateway failed", "error", err)
		os.Exit(1)
	}
}
