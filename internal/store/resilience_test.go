package store

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/event"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/msgplatform/platform/internal/testenv"
)

// outageEnv is a FerretDB server this test may stop and restart, a client with short server selection
// (so attempts during the outage end quickly), and a store over a fresh database.
type outageEnv struct {
	srv       *testenv.MongoServer
	client    *mongo.Client
	st        *Store
	checkouts atomic.Int64 // connection checkouts started: how often the driver went for the network
}

func newOutageEnv(t *testing.T, extra ...func(*options.ClientOptions)) *outageEnv {
	t.Helper()
	e := &outageEnv{srv: testenv.StartMongoServer(t)}
	opts := options.Client().ApplyURI(e.srv.URI()).
		SetServerSelectionTimeout(300 * time.Millisecond).
		SetConnectTimeout(300 * time.Millisecond).
		SetHeartbeatInterval(500 * time.Millisecond).
		SetPoolMonitor(&event.PoolMonitor{Event: func(ev *event.PoolEvent) {
			if ev.Type == event.ConnectionCheckOutStarted {
				e.checkouts.Add(1)
			}
		}})
	for _, f := range extra {
		f(opts)
	}
	client, err := mongo.Connect(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Disconnect(context.Background()) })
	e.client = client
	e.st = New(client.Database(testenv.MongoDatabase(t, e.srv.URI())))
	return e
}

// waitLimit is a generous bound on the waits of these tests (a hang guard, not a timing assertion).
const waitLimit = 60 * time.Second

func TestRetryable(t *testing.T) {
	dup := mongo.WriteException{WriteErrors: []mongo.WriteError{{Code: 11000, Message: "E11000 duplicate key"}}}
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"not found", ErrNotFound, false},
		{"duplicate key", dup, false},
		{"validation", mongo.CommandError{Code: 121, Message: "Document failed validation"}, false},
		{"not writable primary", mongo.CommandError{Code: 10107, Message: "not primary"}, true},
		{"retryable write label", mongo.CommandError{Code: 1, Labels: []string{"RetryableWriteError"}}, true},
		{"transient transaction label", mongo.CommandError{Code: 1, Labels: []string{"TransientTransactionError"}}, true},
		{"classified transient", fmt.Errorf("%w: x", ErrTransient), true},
		{"caller cancelled", context.Canceled, false},
		{"circuit open", fmt.Errorf("%w: circuit x", ErrUnavailable), false},
	}
	for _, tc := range tests {
		if got := Retryable(tc.err); got != tc.want {
			t.Errorf("Retryable(%s) = %v, want %v", tc.name, got, tc.want)
		}
	}
	if !IsTransient(fmt.Errorf("%w: circuit x", ErrUnavailable)) {
		t.Error("IsTransient(ErrUnavailable) = false: the pipeline would dead-letter instead of pausing")
	}
}

func TestRetryRecoversReadAcrossOutage(t *testing.T) {
	e := newOutageEnv(t)
	ctx := context.Background()
	conv, err := e.st.Conversations.Create(ctx, Conversation{TenantID: "t1", CreatorID: "u1", Title: "outage"}, nil)
	if err != nil {
		t.Fatal(err)
	}

	e.srv.Stop()
	var attempts atomic.Int64
	failedOnce := make(chan struct{})
	type result struct {
		c   Conversation
		err error
	}
	done := make(chan result, 1)
	go func() {
		var got Conversation
		err := RetryPolicy{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond, MaxElapsed: time.Minute}.Do(ctx,
			func(ctx context.Context) error {
				var err error
				got, err = e.st.Conversations.Get(ctx, "t1", conv.ID)
				if err != nil && attempts.Add(1) == 1 {
					close(failedOnce)
				}
				return err
			})
		done <- result{got, err}
	}()
	<-failedOnce // at least one attempt met the outage
	e.srv.Start()
	res := <-done
	if res.err != nil {
		t.Fatalf("Get across a restart: %v (after %d failed attempts)", res.err, attempts.Load())
	}
	if res.c.ID != conv.ID || res.c.Title != "outage" {
		t.Fatalf("Get = %+v, want the stored conversation", res.c)
	}
}

func TestRetryStopsAtPermanentErrorsAndContext(t *testing.T) {
	e := newOutageEnv(t)
	ctx := context.Background()
	coll := e.st.Database().Collection("retry_dup")
	if _, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: "k"}}); err != nil {
		t.Fatal(err)
	}
	p := RetryPolicy{Initial: time.Millisecond, MaxElapsed: time.Minute}

	var n int
	err := p.Do(ctx, func(ctx context.Context) error {
		n++
		_, err := coll.InsertOne(ctx, bson.D{{Key: "_id", Value: "k"}})
		return err
	})
	if !mongo.IsDuplicateKeyError(err) || n != 1 {
		t.Fatalf("duplicate key: err = %v after %d attempts, want the duplicate-key error after 1", err, n)
	}

	n = 0
	err = p.Do(ctx, func(ctx context.Context) error {
		n++
		_, err := e.st.Conversations.Get(ctx, "t1", "missing")
		return err
	})
	if !errors.Is(err, ErrNotFound) || n != 1 {
		t.Fatalf("not found: err = %v after %d attempts, want ErrNotFound after 1", err, n)
	}

	// A transient error is retried until the caller's context ends; both errors are reported.
	cctx, cancel := context.WithCancel(ctx)
	n = 0
	err = p.Do(cctx, func(context.Context) error {
		if n++; n == 3 {
			cancel()
		}
		return fmt.Errorf("%w: flaky", ErrTransient)
	})
	if !errors.Is(err, context.Canceled) || !errors.Is(err, ErrTransient) || n != 3 {
		t.Fatalf("cancelled: err = %v after %d attempts, want Canceled and the last error after 3", err, n)
	}
}

func TestBreakerOpensFailsFastAndRecovers(t *testing.T) {
	e := newOutageEnv(t)
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	b, err := NewBreaker(BreakerConfig{Name: "test", FailureRatio: 0.5, MinRequests: 3, CoolDown: time.Second}, reg)
	if err != nil {
		t.Fatal(err)
	}
	conv, err := e.st.Conversations.Create(ctx, Conversation{TenantID: "t1", CreatorID: "u1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var reached atomic.Int64 // operations the breaker let through
	get := func(id string) error {
		return b.Do(ctx, func(ctx context.Context) error {
			reached.Add(1)
			_, err := e.st.Conversations.Get(ctx, "t1", id)
			return err
		})
	}
	state := func() float64 {
		return testutil.ToFloat64(b.state)
	}

	// Answers that are not outages never open it.
	for range 20 {
		if err := get("missing"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get(missing) = %v, want ErrNotFound", err)
		}
	}
	if b.State() != CircuitClosed || b.Check(ctx) != nil {
		t.Fatalf("after 20 not-found answers the breaker is %s, want closed", b.State())
	}

	e.srv.Stop()
	for i := 0; b.State() != CircuitOpen; i++ {
		if i > 50 {
			t.Fatal("the breaker did not open during the outage")
		}
		if err := get(conv.ID); err == nil {
			t.Fatal("Get succeeded with the server stopped")
		}
	}
	if state() != 2 {
		t.Fatalf("platform_store_circuit_state = %v while open, want 2", state())
	}
	if err := b.Check(ctx); err == nil {
		t.Fatal("health check is up while the circuit is open")
	}

	// Open: fail fast, nothing reaches the driver.
	reachedBefore, checkoutsBefore := reached.Load(), e.checkouts.Load()
	for range 10 {
		err := get(conv.ID)
		if !errors.Is(err, ErrUnavailable) || !IsTransient(err) {
			t.Fatalf("Get while open = %v, want ErrUnavailable (transient)", err)
		}
	}
	if reached.Load() != reachedBefore || e.checkouts.Load() != checkoutsBefore {
		t.Fatalf("while open, %d calls and %d connection checkouts reached the driver, want 0",
			reached.Load()-reachedBefore, e.checkouts.Load()-checkoutsBefore)
	}

	e.srv.Start()
	testenv.Eventually(t, "half-open after the cool-down", waitLimit, func() bool { return b.State() == CircuitHalfOpen })
	if state() != 1 {
		t.Fatalf("platform_store_circuit_state = %v while half-open, want 1", state())
	}
	// The driver may still hold the server as unknown for a moment: probe until one succeeds (a failed
	// probe re-opens the circuit for another cool-down).
	testenv.Eventually(t, "a successful probe", waitLimit, func() bool { return get(conv.ID) == nil })
	if b.State() != CircuitClosed || state() != 0 || b.Check(ctx) != nil {
		t.Fatalf("after a successful probe the breaker is %s (gauge %v), want closed", b.State(), state())
	}
	for _, to := range []string{CircuitOpen, CircuitHalfOpen, CircuitClosed} {
		if n := testutil.ToFloat64(b.transitions.WithLabelValues(to)); n < 1 {
			t.Errorf("platform_store_circuit_transitions_total{to=%q} = %v, want >= 1", to, n)
		}
	}
	if n, err := testutil.GatherAndCount(reg, "platform_store_circuit_state", "platform_store_circuit_transitions_total"); err != nil || n != 4 {
		t.Errorf("registered series = %d (%v), want 4", n, err)
	}
}

// TestNoWriteLostOrDuplicatedAcrossRestart writes N messages with deterministic ids in batches through
// the guard while the server stops and restarts, retrying failed batches as the pipeline does (the
// insert treats an already stored id as success, so it is idempotent). The collection ends with exactly N.
func TestNoWriteLostOrDuplicatedAcrossRestart(t *testing.T) {
	e := newOutageEnv(t)
	ctx := context.Background()
	b, err := NewBreaker(BreakerConfig{Name: "writes", MinRequests: 2, CoolDown: 200 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	g := &Guard{Retry: RetryPolicy{Initial: 10 * time.Millisecond, Max: 100 * time.Millisecond}, Breaker: b}

	const n, batch = 300, 10
	var failures, unavailable atomic.Int64
	outage := make(chan struct{})
	paused, stopped := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		for start := 0; start < n; start += batch {
			if start == n/3 { // a third is stored: let the test stop the server
				close(paused)
				<-stopped
			}
			msgs := make([]Message, batch)
			for i := range msgs {
				msgs[i] = Message{ID: fmt.Sprintf("m%05d", start+i), TenantID: "t1", ConversationID: "c1", SenderID: "u1", Body: "hi"}
			}
			for {
				err := g.Read(ctx, func(ctx context.Context) error {
					_, _, err := e.st.Messages.InsertMany(ctx, msgs)
					return err
				})
				if err == nil {
					break
				}
				if !IsTransient(err) {
					done <- fmt.Errorf("batch at %d: permanent error %w", start, err)
					return
				}
				if errors.Is(err, ErrUnavailable) {
					unavailable.Add(1)
				}
				if failures.Add(1) == 1 {
					close(outage)
				}
				time.Sleep(20 * time.Millisecond) // the pipeline's pause
			}
		}
		done <- nil
	}()

	<-paused
	e.srv.Stop()
	close(stopped)
	<-outage
	testenv.Eventually(t, "the circuit to open", waitLimit, func() bool { return b.State() == CircuitOpen })
	e.srv.Start()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	count, err := e.st.Database().Collection(MessagesCollection).CountDocuments(ctx, bson.D{})
	if err != nil {
		t.Fatal(err)
	}
	if count != n {
		t.Fatalf("stored %d messages, want exactly %d", count, n)
	}
	for i := range n {
		if _, err := e.st.Messages.Get(ctx, "t1", "c1", fmt.Sprintf("m%05d", i)); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	t.Logf("%d failed batch attempts during the outage, %d refused by the open circuit", failures.Load(), unavailable.Load())
}

func TestGuardNilRunsDirectly(t *testing.T) {
	var g *Guard
	calls := 0
	op := func(context.Context) error { calls++; return fmt.Errorf("%w: x", ErrTransient) }
	_ = g.Read(context.Background(), op)
	_ = g.Write(context.Background(), op)
	if calls != 2 {
		t.Fatalf("nil guard made %d calls, want 2 (one each, no retry)", calls)
	}
	g = &Guard{Retry: RetryPolicy{Initial: time.Millisecond, MaxElapsed: time.Minute}}
	calls = 0
	_ = g.Write(context.Background(), op)
	if calls != 1 {
		t.Fatalf("Write made %d calls, want 1 (writes are not retried)", calls)
	}
}
