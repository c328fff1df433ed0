// Package apptest starts the platform's processes in tests exactly as the services do: through
// app.Run, on the configuration the test gives (testenv.Config), stopped gracefully when the test ends.
package apptest

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/msgplatform/platform/internal/app"
	"github.com/msgplatform/platform/internal/config"
)

// Process is a running process: where it listens, and how to stop it before the test ends.
type Process struct {
	app.Addresses
	cancel context.CancelFunc
	done   chan error
	err    error
	waited bool
}

// Stop starts the graceful shutdown and waits for it; it returns app.Run's error. Idempotent.
func (p *Process) Stop() error {
	p.cancel()
	if !p.waited {
		p.err, p.waited = <-p.done, true
	}
	return p.err
}

// Start runs app.Run with roles on cfg and returns once it listens. The test fails if it does not start
// within a minute, or if it stops with an error when the test ends. logger nil discards the logs; opts
// are app.Run's (app.WithTracerProvider, say).
func Start(tb testing.TB, cfg config.Config, roles app.Roles, logger *slog.Logger, opts ...app.Option) *Process {
	tb.Helper()
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Process{cancel: cancel, done: make(chan error, 1)}
	ready := make(chan app.Addresses, 1)
	go func() { p.done <- app.Run(ctx, cfg, logger, roles, func(a app.Addresses) { ready <- a }, opts...) }()
	select {
	case p.Addresses = <-ready:
	case err := <-p.done:
		cancel()
		tb.Fatalf("apptest: did not start: %v", err)
	case <-time.After(time.Minute):
		cancel()
		tb.Fatal("apptest: not serving after a minute")
	}
	tb.Cleanup(func() {
		if err := p.Stop(); err != nil {
			tb.Errorf("apptest: stopped with %v", err)
		}
	})
	return p
}
