package store

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/msgplatform/platform/internal/testenv"
)

// newTestGuard returns a guard with a breaker that opens after 3 calls (half of them failing) and cools
// down for a second, and a short retry budget.
func newTestGuard(t *testing.T) *Guard {
	t.Helper()
	b, err := NewBreaker(BreakerConfig{Name: "routing", FailureRatio: 0.5, MinRequests: 3, CoolDown: time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &Guard{Retry: RetryPolicy{Initial: 10 * time.Millisecond, MaxElapsed: 500 * time.Millisecond}, Breaker: b}
}

func testMessages(convID string, ids ...string) []Message {
	out := make([]Message, len(ids))
	for i, id := range ids {
		out[i] = Message{ID: id, TenantID: "t1", ConversationID: convID, SenderID: "u1", Body: "hi " + id}
	}
	return out
}

// TestWritesGoThroughBreaker: with the server down, writes fail and open the breaker; while it is open
// every repository write and list fails fast with ErrUnavailable without reaching the driver; after the
// restart and the cool-down, writes succeed again.
func TestWritesGoThroughBreaker(t *testing.T) {
	e := newOutageEnv(t)
	ctx := context.Background()
	g := newTestGuard(t)
	e.st.SetGuard(g)
	dl := NewDeadLetters(e.st.Database())
	dl.SetGuard(g)

	conv, err := e.st.Conversations.Create(ctx, Conversation{TenantID: "t1", CreatorID: "u1"}, nil)
	if err != nil {
		t.Fatal(err)
	}

	e.srv.Stop()
	for i := 0; g.Breaker.State() != CircuitOpen; i++ {
		if i > 50 {
			t.Fatal("the breaker did not open during the outage")
		}
		_, _, err := e.st.Messages.InsertMany(ctx, testMessages(conv.ID, fmt.Sprintf("m-out-%d", i)))
		if err == nil {
			t.Fatal("InsertMany succeeded with the server stopped")
		}
		if i == 0 && errors.Is(err, ErrUnavailable) {
			t.Fatalf("first InsertMany during the outage = %v: failed fast with the breaker still closed", err)
		}
	}

	// Open: every write (and the non-Get reads) fails fast, nothing reaches the driver.
	title := "new"
	ops := map[string]func() error{
		"Conversations.Create": func() error {
			_, err := e.st.Conversations.Create(ctx, Conversation{TenantID: "t1", CreatorID: "u2"}, nil)
			return err
		},
		"Conversations.Update": func() error {
			_, err := e.st.Conversations.Update(ctx, "t1", conv.ID, 0, &title)
			return err
		},
		"Conversations.Archive": func() error { _, err := e.st.Conversations.Archive(ctx, "t1", conv.ID); return err },
		"Conversations.ListForUser": func() error {
			_, _, err := e.st.Conversations.ListForUser(ctx, "t1", "u1", false, 10, "")
			return err
		},
		"Members.Put": func() error {
			_, err := e.st.Members.Put(ctx, Member{TenantID: "t1", ConversationID: conv.ID, UserID: "u3"})
			return err
		},
		"Members.Remove":      func() error { return e.st.Members.Remove(ctx, "t1", conv.ID, "u1") },
		"Members.CountOwners": func() error { _, err := e.st.Members.CountOwners(ctx, "t1", conv.ID); return err },
		"Members.Recount":     func() error { _, err := e.st.Members.Recount(ctx, "t1", conv.ID); return err },
		"Members.List":        func() error { _, _, err := e.st.Members.List(ctx, "t1", conv.ID, 10, ""); return err },
		"Messages.InsertMany": func() error {
			_, _, err := e.st.Messages.InsertMany(ctx, testMessages(conv.ID, "m-open"))
			return err
		},
		"Messages.List": func() error { _, _, err := e.st.Messages.List(ctx, "t1", conv.ID, 10, ""); return err },
		"Messages.UpdateBody": func() error {
			_, err := e.st.Messages.UpdateBody(ctx, "t1", conv.ID, "m1", 0, "x", time.Now())
			return err
		},
		"Messages.Delete": func() error { _, err := e.st.Messages.Delete(ctx, "t1", conv.ID, "m1", time.Now()); return err },
		"DeadLetters.InsertMany": func() error {
			_, err := dl.InsertMany(ctx, []DeadLetter{{ID: "dl-0-1-1", TenantID: "t1"}})
			return err
		},
		"DeadLetters.List":  func() error { _, _, err := dl.List(ctx, DeadLetterFilter{}, 10, ""); return err },
		"DeadLetters.Stats": func() error { _, err := dl.Stats(ctx, ""); return err },
		"DeadLetters.Due":   func() error { _, err := dl.Due(ctx, 10); return err },
		"DeadLetters.PurgeMatching": func() error {
			_, err := dl.PurgeMatching(ctx, DeadLetterFilter{TenantID: "t1"}, "test")
			return err
		},
		"DeadLetters.Claim": func() error {
			_, err := dl.Claim(ctx, DeadLetter{ID: "dl-0-1-1", Version: 1}, Claim{Owner: "o", Lease: time.Minute})
			return err
		},
	}
	checkoutsBefore := e.checkouts.Load()
	for name, op := range ops {
		start := time.Now()
		err := op()
		if !errors.Is(err, ErrUnavailable) || !IsTransient(err) {
			t.Errorf("%s while open = %v, want ErrUnavailable (transient)", name, err)
		}
		if d := time.Since(start); d > 200*time.Millisecond {
			t.Errorf("%s while open took %v, want fail-fast", name, d)
		}
	}
	if n := e.checkouts.Load() - checkoutsBefore; n != 0 {
		t.Errorf("while open, %d connection checkouts reached the driver, want 0", n)
	}

	e.srv.Start()
	testenv.Eventually(t, "half-open after the cool-down", waitLimit, func() bool { return g.Breaker.State() == CircuitHalfOpen })
	// The driver may still hold the server as unknown for a moment: probe until a write succeeds (a failed
	// probe re-opens the circuit for another cool-down).
	testenv.Eventually(t, "a successful write", waitLimit, func() bool {
		_, _, err := e.st.Messages.InsertMany(ctx, testMessages(conv.ID, "m-back"))
		return err == nil
	})
	if g.Breaker.State() != CircuitClosed {
		t.Fatalf("after a successful write the breaker is %s, want closed", g.Breaker.State())
	}
	if _, err := e.st.Conversations.Create(ctx, Conversation{TenantID: "t1", CreatorID: "u2"}, nil); err != nil {
		t.Fatalf("Create after recovery: %v", err)
	}
	if _, err := dl.InsertMany(ctx, []DeadLetter{{ID: "dl-0-1-1", TenantID: "t1"}}); err != nil {
		t.Fatalf("DeadLetters.InsertMany after recovery: %v", err)
	}
}

// TestDuplicateKeyNeverOpensBreaker: duplicate-key answers (a BulkWriteException with per-item errors, or a
// single duplicate insert) pass through the breaker unchanged and count as successes.
func TestDuplicateKeyNeverOpensBreaker(t *testing.T) {
	e := newOutageEnv(t)
	ctx := context.Background()
	g := newTestGuard(t)
	e.st.SetGuard(g)
	dl := NewDeadLetters(e.st.Database())
	dl.SetGuard(g)
	w, err := NewBulkWriter(e.st, BulkConfig{MaxDelay: time.Millisecond}, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	conv, err := e.st.Conversations.Create(ctx, Conversation{TenantID: "t1", CreatorID: "u1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	msgs := testMessages(conv.ID, "m1", "m2")
	if n, d, err := e.st.Messages.InsertMany(ctx, msgs); err != nil || n != 2 || d != 0 {
		t.Fatalf("first InsertMany = %d, %d, %v; want 2, 0, nil", n, d, err)
	}
	if _, err := dl.InsertMany(ctx, []DeadLetter{{ID: "dl-0-1-1", TenantID: "t1"}}); err != nil {
		t.Fatal(err)
	}

	for i := range 10 {
		// Repository: duplicates reported exactly as without a guard.
		if n, d, err := e.st.Messages.InsertMany(ctx, msgs); err != nil || n != 0 || d != 2 {
			t.Fatalf("duplicate InsertMany #%d = %d, %d, %v; want 0, 2, nil", i, n, d, err)
		}
		// The guard hands the driver's BulkWriteException back unchanged.
		err := g.Write(ctx, func(ctx context.Context) error {
			_, err := e.st.core.messages.InsertMany(ctx, []any{newMessageDoc(msgs[0], time.Now())}, options.InsertMany().SetOrdered(false))
			return err
		})
		var bwe mongo.BulkWriteException
		if !errors.As(err, &bwe) || !mongo.IsDuplicateKeyError(err) || errors.Is(err, ErrUnavailable) {
			t.Fatalf("guarded duplicate insert = %v (%T), want the driver's duplicate-key BulkWriteException", err, err)
		}
		// Bulk writer: duplicates, read back.
		for k, res := range w.Write(ctx, msgs) {
			if res.Err != nil || !res.Duplicate || res.Message.ID != msgs[k].ID {
				t.Fatalf("bulk duplicate #%d item %d = %+v, want duplicate without error", i, k, res)
			}
		}
		// Dead letters: duplicate per item.
		res, err := dl.InsertMany(ctx, []DeadLetter{{ID: "dl-0-1-1", TenantID: "t1"}})
		if err != nil || len(res) != 1 || !res[0].Duplicate || res[0].Err != nil {
			t.Fatalf("duplicate dead letter = %+v, %v; want Duplicate", res, err)
		}
		// Create with an existing id and Put of an existing member (a duplicate InsertOne inside).
		if _, err := e.st.Conversations.Create(ctx, Conversation{ID: conv.ID, TenantID: "t1", CreatorID: "u1"}, nil); !errors.Is(err, ErrAlreadyExists) {
			t.Fatalf("Create(existing id) = %v, want ErrAlreadyExists", err)
		}
		if _, err := e.st.Members.Put(ctx, Member{TenantID: "t1", ConversationID: conv.ID, UserID: "u1", Role: RoleOwner}); err != nil {
			t.Fatalf("Put(existing member) = %v", err)
		}
	}
	counts := g.Breaker.cb.Counts()
	if g.Breaker.State() != CircuitClosed || counts.TotalFailures != 0 || counts.Requests < 3 {
		t.Fatalf("after duplicate answers the breaker is %s with counts %+v, want closed with no failures", g.Breaker.State(), counts)
	}
}
