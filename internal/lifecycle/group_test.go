package lifecycle

import (
	"context"
	"errors"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder notes the order in which actors stop.
type recorder struct {
	mu      sync.Mutex
	stopped []string
}

func (r *recorder) actor(name string) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		<-ctx.Done()
		r.mu.Lock()
		r.stopped = append(r.stopped, name)
		r.mu.Unlock()
		return nil
	}
}

func TestGroupStopsInOrder(t *testing.T) {
	for _, tc := range []struct {
		name    string
		trigger func(cancel context.CancelFunc) func(ctx context.Context) error // an extra actor, last
		wantErr string
	}{
		{"context ends", func(cancel context.CancelFunc) func(context.Context) error {
			return func(ctx context.Context) error { cancel(); <-ctx.Done(); return nil }
		}, ""},
		{"an actor fails", func(context.CancelFunc) func(context.Context) error {
			return func(context.Context) error { return errors.New("listener gone") }
		}, "trigger: listener gone"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var r recorder
			g := NewGroup(nil)
			for _, n := range []string{"drain", "rest", "grpc", "ingest"} {
				g.Add(n, r.actor(n))
			}
			g.Add("trigger", tc.trigger(cancel))
			err := g.Run(ctx)
			if (err == nil) != (tc.wantErr == "") || (err != nil && err.Error() != tc.wantErr) {
				t.Fatalf("Run = %v, want %q", err, tc.wantErr)
			}
			if want := []string{"drain", "rest", "grpc", "ingest"}; !slices.Equal(r.stopped, want) {
				t.Fatalf("stopped %v, want %v", r.stopped, want)
			}
		})
	}
}

// An actor with nothing to do returns nil at once; the others go on until the context ends.
func TestGroupActorFinishingEarlyStopsNothing(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var r recorder
	g := NewGroup(nil)
	g.Add("watchers", func(context.Context) error { return nil })
	g.Add("server", r.actor("server"))
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	select {
	case err := <-done:
		t.Fatalf("Run returned %v before the context ended", err)
	case <-time.After(100 * time.Millisecond):
	}
	cancel()
	if err := <-done; err != nil || !slices.Equal(r.stopped, []string{"server"}) {
		t.Fatalf("Run = %v, stopped %v", err, r.stopped)
	}
}

// An actor that does not stop is left behind after StopTimeout, reported, and the later ones still stop.
func TestGroupStopTimeout(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	block := make(chan struct{})
	defer close(block)
	var r recorder
	g := NewGroup(nil)
	g.StopTimeout = 50 * time.Millisecond
	g.Add("stuck", func(context.Context) error { <-block; return nil })
	g.Add("after", r.actor("after"))
	cancel()
	err := g.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "stuck: did not stop within 50ms") || !slices.Equal(r.stopped, []string{"after"}) {
		t.Fatalf("Run = %v, stopped %v", err, r.stopped)
	}
}

func TestServeHTTPStopsGracefully(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })}
	done := make(chan error, 1)
	go func() { done <- ServeHTTP(ctx, srv, lis, time.Second) }()
	resp, err := http.Get("http://" + lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("ServeHTTP = %v", err)
	}
	if _, err := http.Get("http://" + lis.Addr().String()); err == nil {
		t.Fatal("still serving after the context ended")
	}
}
