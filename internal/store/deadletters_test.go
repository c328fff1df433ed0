package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/msgplatform/platform/internal/testenv"
)

// newDeadLetters returns the repository on a fresh database of the shared FerretDB, with a test clock.
func newDeadLetters(t *testing.T) (*DeadLetters, *testenv.Clock) {
	t.Helper()
	uri := testenv.SharedMongo(t)
	client, err := Connect(testCtx(t), uri)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Disconnect(context.Background()) })
	r := NewDeadLetters(client.Database(testenv.MongoDatabase(t, uri)))
	clock := testenv.NewClock(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC))
	r.SetClock(clock.Now)
	if err := r.EnsureIndexes(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	return r, clock
}

func pendingDL(id string, due time.Time) DeadLetter {
	return DeadLetter{
		ID: id, OriginalTopic: "messages.inbound", Key: []byte("k"), Payload: []byte("p-" + id), TenantID: "t1",
		Stage: "persist", Error: "store unavailable", ErrorClass: "transient", Attempts: 1,
		Status: DeadLetterPendingRetry, NextRetryTime: &due, LastFailureTime: due.Add(-time.Second),
		Headers: []Header{{Key: "content-type", Value: []byte("application/x-protobuf")}, {Key: "dlq.attempts", Value: []byte("1")}},
	}
}

func mustInsertDL(t *testing.T, r *DeadLetters, dls ...DeadLetter) {
	t.Helper()
	res, err := r.InsertMany(testCtx(t), dls)
	if err != nil {
		t.Fatal(err)
	}
	for i, x := range res {
		if x.Duplicate || x.Err != nil {
			t.Fatalf("insert %s: duplicate %v, err %v", dls[i].ID, x.Duplicate, x.Err)
		}
	}
}

func TestDeadLetterStoreInsertIsIdempotent(t *testing.T) {
	r, clock := newDeadLetters(t)
	d := pendingDL(DeadLetterID("messages.inbound", 3, 42, 1), clock.Now())
	mustInsertDL(t, r, d)
	res, err := r.InsertMany(testCtx(t), []DeadLetter{d, pendingDL("other-0-1-1", clock.Now())})
	if err != nil || !res[0].Duplicate || res[1].Duplicate || res[0].Err != nil || res[1].Err != nil {
		t.Fatalf("second insert: %+v, %v", res, err)
	}
	got, err := r.Get(testCtx(t), "messages.inbound-3-42-1")
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != 1 || got.Status != DeadLetterPendingRetry || string(got.Payload) != string(d.Payload) ||
		len(got.Headers) != 2 || string(got.Headers[0].Value) != "application/x-protobuf" || got.Seq == "" {
		t.Errorf("stored %+v", got)
	}
	if _, err := r.Get(testCtx(t), "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("get missing: %v", err)
	}
}

// Concurrent claimers of one entry: exactly one wins, every round (FerretDB's findAndModify alone lets
// several win; the fence must not).
func TestDeadLetterStoreClaimIsExclusive(t *testing.T) {
	r, clock := newDeadLetters(t)
	for round := range 15 {
		d := pendingDL(fmt.Sprintf("messages.inbound-0-%d-1", round), clock.Now())
		mustInsertDL(t, r, d)
		stored, err := r.Get(testCtx(t), d.ID)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		wins := 0
		for g := range 4 {
			wg.Go(func() {
				_, err := r.Claim(testCtx(t), stored, Claim{Owner: fmt.Sprint("owner", g), Lease: time.Minute, OnlyDue: true, Actor: "test"})
				switch {
				case err == nil:
					mu.Lock()
					wins++
					mu.Unlock()
				case errors.Is(err, ErrConflict), errors.Is(err, ErrDeadLetterBusy):
				default:
					t.Errorf("claim: %v", err)
				}
			})
		}
		wg.Wait()
		if wins != 1 {
			t.Fatalf("round %d: %d claimers won, want exactly 1", round, wins)
		}
	}
}

func TestDeadLetterStoreClaimLeaseAndRelease(t *testing.T) {
	r, clock := newDeadLetters(t)
	ctx := testCtx(t)
	now := clock.Now()
	mustInsertDL(t, r, pendingDL("a-0-1-1", now), pendingDL("b-0-2-1", now.Add(time.Hour)))

	due, err := r.Due(ctx, 10)
	if err != nil || len(due) != 1 || due[0].ID != "a-0-1-1" {
		t.Fatalf("due = %v, %v; want only a", due, err)
	}
	if _, err := r.Claim(ctx, mustGetDL(t, r, "b-0-2-1"), Claim{Owner: "x", Lease: time.Minute, OnlyDue: true}); !errors.Is(err, ErrDeadLetterNotDue) {
		t.Errorf("claim of a not-due entry: %v", err)
	}
	c1, err := r.Claim(ctx, due[0], Claim{Owner: "one", Lease: time.Minute, OnlyDue: true, Actor: "scheduler one"})
	if err != nil || c1.Status != DeadLetterRetrying || c1.ClaimOwner != "one" || c1.ClaimedFrom != DeadLetterPendingRetry || c1.Version != 2 {
		t.Fatalf("claim = %+v, %v", c1, err)
	}
	// Held: not due, and an operator's claim is refused while the lease lives.
	if due, _ := r.Due(ctx, 10); len(due) != 0 {
		t.Fatalf("due while claimed: %v", due)
	}
	if _, err := r.Claim(ctx, c1, Claim{Owner: "op", Lease: time.Minute}); !errors.Is(err, ErrDeadLetterBusy) {
		t.Errorf("claim of a held entry: %v", err)
	}
	if _, _, err := r.Purge(ctx, c1.ID, "op"); !errors.Is(err, ErrDeadLetterBusy) {
		t.Errorf("purge of a held entry: %v", err)
	}

	// The holder dies: after the lease another takes it over; the old holder can no longer complete.
	clock.Advance(time.Minute)
	due, err = r.Due(ctx, 10)
	if err != nil || len(due) != 1 {
		t.Fatalf("due after lease = %v, %v", due, err)
	}
	c2, err := r.Claim(ctx, due[0], Claim{Owner: "two", Lease: time.Minute, OnlyDue: true})
	if err != nil || c2.ClaimOwner != "two" || c2.ClaimedFrom != DeadLetterPendingRetry {
		t.Fatalf("take-over = %+v, %v", c2, err)
	}
	if _, err := r.MarkRetried(ctx, c1, "one"); !errors.Is(err, ErrConflict) {
		t.Errorf("stale holder marked retried: %v", err)
	}
	// A failed republish goes back to pending with a new time.
	next := clock.Now().Add(5 * time.Second)
	rel, err := r.Release(ctx, c2, DeadLetterPendingRetry, &next, "kafka down", "two")
	if err != nil || rel.Status != DeadLetterPendingRetry || !rel.NextRetryTime.Equal(next) || rel.ClaimOwner != "" || rel.Note != "kafka down" {
		t.Fatalf("release = %+v, %v", rel, err)
	}
	clock.Advance(5 * time.Second)
	c3, err := r.Claim(ctx, rel, Claim{Owner: "two", Lease: time.Minute, OnlyDue: true})
	if err != nil {
		t.Fatal(err)
	}
	done, err := r.MarkRetried(ctx, c3, "two")
	if err != nil || done.Status != DeadLetterRetried || done.Retries != 1 || done.LastRetryTime == nil || done.NextRetryTime != nil {
		t.Fatalf("mark retried = %+v, %v", done, err)
	}
	if due, _ := r.Due(ctx, 10); len(due) != 0 {
		t.Fatalf("due after retried: %v", due)
	}
}

func mustGetDL(t *testing.T, r *DeadLetters, id string) DeadLetter {
	t.Helper()
	d, err := r.Get(testCtx(t), id)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// A fence left behind by a crashed process blocks its entry only until it expires.
func TestDeadLetterStoreExpiredFenceIsTakenOver(t *testing.T) {
	r, clock := newDeadLetters(t)
	ctx := testCtx(t)
	d := pendingDL("a-0-1-1", clock.Now())
	mustInsertDL(t, r, d)
	if _, err := r.claims.InsertOne(ctx, claimDoc{ID: "a-0-1-1@1", Token: "crashed", ExpireTime: clock.Now().Add(time.Second)}); err != nil {
		t.Fatal(err)
	}
	stored := mustGetDL(t, r, d.ID)
	if _, err := r.Claim(ctx, stored, Claim{Owner: "x", Lease: time.Minute, OnlyDue: true}); !errors.Is(err, ErrConflict) {
		t.Fatalf("claim under a live fence: %v", err)
	}
	clock.Advance(2 * time.Second)
	if _, err := r.Claim(ctx, stored, Claim{Owner: "x", Lease: time.Minute, OnlyDue: true}); err != nil {
		t.Fatalf("claim after the fence expired: %v", err)
	}
	if n, _ := r.claims.CountDocuments(ctx, bson.D{}); n != 0 {
		t.Errorf("%d fences left", n)
	}
}

func TestDeadLetterStoreListPurgeAndStats(t *testing.T) {
	r, clock := newDeadLetters(t)
	ctx := testCtx(t)
	base := clock.Now()
	var dls []DeadLetter
	for i := range 7 {
		d := pendingDL(fmt.Sprintf("messages.inbound-0-%d-1", i), base)
		d.LastFailureTime = base.Add(time.Duration(i) * time.Second)
		if i%2 == 0 {
			d.Status, d.ErrorClass, d.Stage, d.NextRetryTime = DeadLetterParked, "permanent", "authorize", nil
			d.Error = fmt.Sprintf("Sender Mallory%d is not a member", i)
		}
		if i == 6 {
			d.TenantID = "t2"
		}
		dls = append(dls, d)
	}
	mustInsertDL(t, r, dls...)

	var ids []string
	token := ""
	for page := 0; ; page++ {
		items, next, err := r.List(ctx, DeadLetterFilter{}, 3, token)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range items {
			ids = append(ids, d.ID)
		}
		if next == "" {
			break
		}
		token = next
	}
	if fmt.Sprint(ids) != "[messages.inbound-0-6-1 messages.inbound-0-5-1 messages.inbound-0-4-1 messages.inbound-0-3-1 messages.inbound-0-2-1 messages.inbound-0-1-1 messages.inbound-0-0-1]" {
		t.Errorf("pages, newest first: %v", ids)
	}
	if _, _, err := r.List(ctx, DeadLetterFilter{TenantID: "t1"}, 3, token); !errors.Is(err, ErrBadPageToken) {
		t.Errorf("token of another filter: %v", err)
	}
	items, _, err := r.List(ctx, DeadLetterFilter{ErrorContains: "mallory4", Statuses: []DeadLetterStatus{DeadLetterParked}}, 0, "")
	if err != nil || len(items) != 1 || items[0].ID != "messages.inbound-0-4-1" {
		t.Errorf("error contains, case-insensitive: %v, %v", items, err)
	}
	items, _, _ = r.List(ctx, DeadLetterFilter{ErrorContains: ".*"}, 0, "")
	if len(items) != 0 {
		t.Errorf("error_contains is literal text, not a regex: %d matches", len(items))
	}

	st, err := r.Stats(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if st.Total != 7 || st.ByStatus[DeadLetterParked] != 4 || st.ByStatus[DeadLetterPendingRetry] != 3 ||
		st.ByStage["authorize"] != 4 || st.ByStage["persist"] != 3 || st.ByErrorClass["transient"] != 3 ||
		st.OldestPending == nil || !st.OldestPending.Equal(base.Add(time.Second)) {
		t.Errorf("stats = %+v (oldest %v)", st, st.OldestPending)
	}
	if st, _ := r.Stats(ctx, "t2"); st.Total != 1 || st.OldestPending != nil {
		t.Errorf("stats of t2 = %+v", st)
	}

	d, purged, err := r.Purge(ctx, "messages.inbound-0-1-1", "op")
	if err != nil || !purged || d.Status != DeadLetterPurged || d.Payload != nil || d.PurgeTime == nil || d.Key == nil {
		t.Fatalf("purge = %+v, %v, %v", d, purged, err)
	}
	if _, purged, err := r.Purge(ctx, "messages.inbound-0-1-1", "op"); err != nil || purged {
		t.Errorf("purge again: %v, %v", purged, err)
	}
	if _, err := r.Claim(ctx, d, Claim{Owner: "op", Lease: time.Minute}); !errors.Is(err, ErrDeadLetterPurged) {
		t.Errorf("claim of a purged entry: %v", err)
	}
	n, err := r.PurgeMatching(ctx, DeadLetterFilter{Stage: "authorize", TenantID: "t1"}, "op")
	if err != nil || n != 3 {
		t.Errorf("purge by filter = %d, %v; want 3", n, err)
	}
	if n, _ := r.PurgeMatching(ctx, DeadLetterFilter{Stage: "authorize"}, "op"); n != 1 {
		t.Errorf("purge by filter again = %d; want 1 (only t2's)", n)
	}
	if st, _ := r.Stats(ctx, ""); st.ByStatus[DeadLetterPurged] != 5 {
		t.Errorf("purged = %d, want 5", st.ByStatus[DeadLetterPurged])
	}
}

// A page of dead letters ends early rather than carry more than MaxPageBytes of payloads, so the largest
// entries (payloads near Kafka's 1 MB record limit) page through any client's message limit.
func TestDeadLetterStoreListCapsPageBytes(t *testing.T) {
	r, clock := newDeadLetters(t)
	ctx := testCtx(t)
	const n = 5
	var dls []DeadLetter
	for i := range n {
		d := pendingDL(fmt.Sprintf("messages.inbound-0-%d-1", i), clock.Now())
		d.Payload = make([]byte, 400<<10) // weighs 800 KiB: base64 in REST
		dls = append(dls, d)
	}
	mustInsertDL(t, r, dls...)
	var sizes []int
	seen := map[string]bool{}
	for token := ""; ; {
		items, next, err := r.List(ctx, DeadLetterFilter{}, MaxPageSize, token)
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, len(items))
		for _, d := range items {
			seen[d.ID] = true
		}
		if next == "" {
			break
		}
		token = next
	}
	if len(seen) != n || fmt.Sprint(sizes) != "[2 2 1]" {
		t.Fatalf("pages of %v holding %d entries, want [2 2 1] holding %d", sizes, len(seen), n)
	}
}
