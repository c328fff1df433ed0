package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Group runs the actors of one process and stops them in order, in the shape of oklog/run (one place
// shows what runs and how it stops) with one difference that matters for a graceful shutdown: actors are
// stopped one after the other, in the order they were added, each only once the previous one returned.
// The order of Add calls is therefore the process's shutdown sequence (readiness off, drain delay, stop
// accepting, finish in-flight work, flush), written down once in the composition root.
type Group struct {
	logger *slog.Logger
	// StopTimeout bounds how long Run waits for one actor to return once asked to stop; an actor still
	// running then is logged and left behind (the process is about to exit). Zero waits forever.
	StopTimeout time.Duration
	actors      []actor
}

type actor struct {
	name string
	run  func(ctx context.Context) error
}

// NewGroup returns an empty group logging to logger.
func NewGroup(logger *slog.Logger) *Group {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Group{logger: logger}
}

// Add adds an actor. run keeps working until its context is cancelled, then finishes what must be
// finished (a batch in hand, in-flight calls) and returns. Returning an error before that stops the whole
// group; returning nil before that means the actor has nothing (more) to do (say, change streams the
// server does not offer), and the others go on.
func (g *Group) Add(name string, run func(ctx context.Context) error) {
	g.actors = append(g.actors, actor{name: name, run: run})
}

// Names lists the actors in stop order.
func (g *Group) Names() []string {
	names := make([]string, len(g.actors))
	for i, a := range g.actors {
		names[i] = a.name
	}
	return names
}

// Run starts every actor and returns once all have stopped: after ctx ends, or after an actor failed on
// its own. Then it stops them in order. It returns the errors of the actors that failed (an actor
// returning nil, or ctx's cancellation, is not a failure), each prefixed with the actor's name.
func (g *Group) Run(ctx context.Context) error {
	type exit struct {
		i   int
		err error
	}
	exits := make(chan exit, len(g.actors))
	cancels := make([]context.CancelFunc, len(g.actors))
	done := make([]chan struct{}, len(g.actors))
	errs := make([]error, len(g.actors))
	for i, a := range g.actors {
		actx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		cancels[i], done[i] = cancel, make(chan struct{})
		go func() {
			err := a.run(actx)
			errs[i] = err // read only after done[i] is closed
			close(done[i])
			exits <- exit{i, err}
		}()
	}
	if len(g.actors) == 0 {
		<-ctx.Done()
		return nil
	}
	running := len(g.actors)
wait:
	for running > 0 {
		select {
		case <-ctx.Done():
			g.logger.Info("stopping", "order", g.Names())
			break wait
		case e := <-exits:
			running--
			if e.err == nil || errors.Is(e.err, context.Canceled) {
				g.logger.Info("finished its work", "actor", g.actors[e.i].name)
				continue
			}
			g.logger.Error("an actor failed; stopping the others", "actor", g.actors[e.i].name, "error", e.err, "order", g.Names())
			break wait
		}
	}
	timedOut := make([]bool, len(g.actors))
	for i, a := range g.actors {
		start := time.Now()
		cancels[i]()
		var timeout <-chan time.Time
		if g.StopTimeout > 0 {
			t := time.NewTimer(g.StopTimeout)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-done[i]:
			g.logger.Debug("stopped", "actor", a.name, "took", time.Since(start).Round(time.Millisecond).String())
		case <-timeout:
			g.logger.Error("actor did not stop in time; leaving it behind", "actor", a.name, "waited", g.StopTimeout.String())
			timedOut[i] = true
		}
	}
	var failed []error
	for i, a := range g.actors {
		switch {
		case timedOut[i]:
			failed = append(failed, fmt.Errorf("%s: did not stop within %s", a.name, g.StopTimeout))
		case errs[i] != nil && !errors.Is(errs[i], context.Canceled): // done[i] is closed: errs[i] is set
			failed = append(failed, fmt.Errorf("%s: %w", a.name, errs[i]))
		}
	}
	return errors.Join(failed...)
}

// ServeHTTP serves srv on lis until ctx ends, then shuts it down gracefully within timeout (closing what
// is still open after that). It returns nil after a graceful stop, the serve error otherwise.
func ServeHTTP(ctx context.Context, srv *http.Server, lis net.Listener, timeout time.Duration) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve http on %s: %w", lis.Addr(), err)
		}
		return nil
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	<-errc
	return nil
}
