package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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

// Add adds an actor. run must keep working until its context is cancelled, then finish what must be
// finished (a batch in hand, in-flight calls) and return. Returning earlier, with an error or nil, stops
// the whole group.
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

// Run starts every actor and returns once all have stopped: after ctx ends, or after any actor returned
// on its own. Then it stops them in order. It returns the errors of the actors that failed (an actor
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
	select {
	case <-ctx.Done():
		g.logger.Info("stopping", "order", g.Names())
	case e := <-exits:
		level := slog.LevelInfo
		if e.err != nil && !errors.Is(e.err, context.Canceled) {
			level = slog.LevelError
		}
		g.logger.Log(ctx, level, "an actor returned; stopping the others", "actor", g.actors[e.i].name, "error", e.err, "order", g.Names())
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
