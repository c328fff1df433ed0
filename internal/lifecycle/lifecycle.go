// Package lifecycle turns process signals into context cancellation: the first SIGINT/SIGTERM starts a
// graceful shutdown, a second one forces the process out.
package lifecycle

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

// SignalContext returns a context cancelled by the first SIGINT or SIGTERM. A second signal exits the
// process with status 1 at once, for an operator who does not want to wait for the drain.
func SignalContext(parent context.Context, logger *slog.Logger) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(parent)
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		select {
		case sig := <-ch:
			logger.Info("shutdown requested; send the signal again to force exit", "signal", sig.String())
			cancel()
		case <-ctx.Done():
			signal.Stop(ch)
			return
		}
		sig := <-ch
		logger.Error("second signal: forcing exit", "signal", sig.String())
		os.Exit(1)
	}()
	return ctx, func() {
		signal.Stop(ch)
		cancel()
	}
}
