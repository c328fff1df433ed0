package store

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/msgplatform/platform/internal/testenv"
)

func newTestBulkWriter(t *testing.T, s *Store, cfg BulkConfig) *BulkWriter {
	t.Helper()
	w, err := NewBulkWriter(s, cfg, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Close)
	return w
}

func requireOK(t *testing.T, res []BulkResult, wantDup bool) {
	t.Helper()
	for i, r := range res {
		if r.Err != nil || r.Duplicate != wantDup {
			t.Fatalf("result %d = duplicate %v, err %v; want duplicate %v, no error", i, r.Duplicate, r.Err, wantDup)
		}
	}
}

func TestBulkWriterCountTrigger(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := testCtx(t)
	// MaxDelay is far beyond the test's deadline: only the count can flush.
	w := newTestBulkWriter(t, s, BulkConfig{MaxDocs: 10, MaxDelay: time.Hour})
	conv := mustCreate(t, s, "t1", "alice")

	requireOK(t, w.Write(ctx, newMessages("t1", conv.ID, 20)), false)
	if got := testutil.ToFloat64(w.flushes.WithLabelValues("count")); got != 2 {
		t.Fatalf("count flushes = %v, want 2", got)
	}

	// Five concurrent writers of two messages each share one InsertMany of ten.
	var wg sync.WaitGroup
	results := make([][]BulkResult, 5)
	for i := range results {
		wg.Go(func() { results[i] = w.Write(ctx, newMessages("t1", conv.ID, 2)) })
	}
	wg.Wait()
	for _, res := range results {
		requireOK(t, res, false)
	}
	if got := testutil.ToFloat64(w.flushes.WithLabelValues("count")); got != 3 {
		t.Fatalf("count flushes = %v, want 3 (the five writers coalesced into one)", got)
	}
	if got := testutil.ToFloat64(w.flushes.WithLabelValues("time")); got != 0 {
		t.Fatalf("time flushes = %v, want 0", got)
	}
	if got := testutil.ToFloat64(w.items.WithLabelValues("inserted")); got != 30 {
		t.Fatalf("inserted = %v, want 30", got)
	}
	page, _, err := s.Messages.List(ctx, "t1", conv.ID, MaxPageSize, "")
	if err != nil || len(page) != 30 {
		t.Fatalf("List = %d messages, %v; want 30", len(page), err)
	}
}

func TestBulkWriterTimeTrigger(t *testing.T) {
	s, clock := newTestStore(t)
	ctx := testCtx(t)
	w := newTestBulkWriter(t, s, BulkConfig{MaxDocs: 500, MaxDelay: 5 * time.Millisecond})
	conv := mustCreate(t, s, "t1", "alice")

	msgs := newMessages("t1", conv.ID, 3)
	msgs[0].Metadata = map[string]string{"k": "v"}
	msgs[0].Mentions = []string{"bob"}
	res := w.Write(ctx, msgs)
	requireOK(t, res, false)
	if got := testutil.ToFloat64(w.flushes.WithLabelValues("time")); got != 1 {
		t.Fatalf("time flushes = %v, want 1", got)
	}
	// The result is the message as stored, defaults filled.
	got, err := s.Messages.Get(ctx, "t1", conv.ID, msgs[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(res[0].Message) {
		t.Fatalf("result message\n%+v\nstored\n%+v", res[0].Message, got)
	}
	if got.State != MessagePersisted || got.Version != 1 || !got.PersistTime.Equal(clock.Now().Truncate(time.Millisecond)) {
		t.Fatalf("defaults not filled: %+v", got)
	}
}

func TestBulkWriterDuplicatesAreSuccess(t *testing.T) {
	s, clock := newTestStore(t)
	ctx := testCtx(t)
	w := newTestBulkWriter(t, s, BulkConfig{MaxDocs: 500, MaxDelay: time.Millisecond})
	conv := mustCreate(t, s, "t1", "alice")

	first := newMessages("t1", conv.ID, 4)
	requireOK(t, w.Write(ctx, first), false)
	firstPersist := clock.Now().Truncate(time.Millisecond)
	clock.Advance(time.Minute)

	// A redelivery: two already stored, two new, and one id twice in the same write.
	fresh := newMessages("t1", conv.ID, 2)
	again := []Message{first[1], fresh[0], first[3], fresh[1], fresh[1]}
	res := w.Write(ctx, again)
	wantDup := []bool{true, false, true, false, true}
	for i, r := range res {
		if r.Err != nil || r.Duplicate != wantDup[i] {
			t.Fatalf("result %d = duplicate %v, err %v; want duplicate %v", i, r.Duplicate, r.Err, wantDup[i])
		}
	}
	// A duplicate's result is the stored document (first persisted a minute earlier), not the resubmission.
	if !res[0].Message.PersistTime.Equal(firstPersist) || res[0].Message.Body != first[1].Body {
		t.Fatalf("duplicate result = %+v, want the stored message persisted at %v", res[0].Message, firstPersist)
	}
	if got := testutil.ToFloat64(w.items.WithLabelValues("duplicate")); got != 3 {
		t.Fatalf("duplicates counted = %v, want 3", got)
	}
	if got := testutil.ToFloat64(w.items.WithLabelValues("inserted")); got != 6 {
		t.Fatalf("inserted counted = %v, want 6", got)
	}
}

func TestBulkWriterMissingFieldsFailAlone(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := testCtx(t)
	w := newTestBulkWriter(t, s, BulkConfig{MaxDelay: time.Millisecond})
	conv := mustCreate(t, s, "t1", "alice")

	msgs := newMessages("t1", conv.ID, 3)
	msgs[1].TenantID = ""
	res := w.Write(ctx, msgs)
	if res[0].Err != nil || res[2].Err != nil {
		t.Fatalf("valid messages failed: %v, %v", res[0].Err, res[2].Err)
	}
	if !errors.Is(res[1].Err, ErrPermanent) {
		t.Fatalf("message without tenant: err %v, want ErrPermanent", res[1].Err)
	}
	if res := w.Write(ctx, msgs[1:2]); !errors.Is(res[0].Err, ErrPermanent) {
		t.Fatalf("lone invalid message: err %v, want ErrPermanent", res[0].Err)
	}
}

// errClientSide is a client-side error: neither a server answer nor transient.
var errClientSide = errors.New("cannot encode document")

func TestBulkWriterPerItemClassification(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := testCtx(t)
	w := newTestBulkWriter(t, s, BulkConfig{MaxDocs: 6, MaxDelay: time.Hour})
	conv := mustCreate(t, s, "t1", "alice")
	msgs := newMessages("t1", conv.ID, 6)

	var mu sync.Mutex
	var calls [][]any
	w.insert = func(_ context.Context, docs []any) error {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, docs)
		return mongo.BulkWriteException{WriteErrors: []mongo.BulkWriteError{
			{WriteError: mongo.WriteError{Index: 1, Code: 11000, Message: "E11000 duplicate key error"}},
			{WriteError: mongo.WriteError{Index: 2, Code: 2, Message: "BadValue"}},
			{WriteError: mongo.WriteError{Index: 3, Code: 91, Message: "ShutdownInProgress"}},
			{WriteError: mongo.WriteError{Index: 4, Code: 10334, Message: "BSONObjectTooLarge"}},
			{WriteError: mongo.WriteError{Index: 5, Code: 11000, Message: "E11000 duplicate key error"}},
		}}
	}
	w.find = func(_ context.Context, ids []string) ([]messageDoc, error) {
		// Only the first duplicate can be read back: the second becomes transient.
		return []messageDoc{newMessageDoc(msgs[1], time.Now())}, nil
	}
	res := w.Write(ctx, msgs)
	type want struct {
		dup   bool
		class error
	}
	wants := []want{{}, {dup: true}, {class: ErrPermanent}, {class: ErrTransient}, {class: ErrPermanent}, {dup: true, class: ErrTransient}}
	for i, r := range res {
		w := wants[i]
		if r.Duplicate != w.dup || (w.class == nil) != (r.Err == nil) || (w.class != nil && !errors.Is(r.Err, w.class)) {
			t.Errorf("item %d: duplicate %v, err %v; want duplicate %v, class %v", i, r.Duplicate, r.Err, w.dup, w.class)
		}
	}
	if len(calls) != 1 {
		t.Fatalf("%d InsertMany calls, want 1", len(calls))
	}
}

func TestClassifyInsert(t *testing.T) {
	netErr := mongo.CommandError{Code: 0, Labels: []string{"NetworkError"}, Wrapped: &net.OpError{Op: "read", Err: errors.New("connection reset")}}
	cases := []struct {
		name string
		err  error
		want []error // per item: nil, ErrTransient, ErrPermanent, or errDup
	}{
		{"ok", nil, []error{nil, nil}},
		{"network", netErr, []error{ErrTransient, ErrTransient}},
		{"timeout", fmt.Errorf("insert: %w", context.DeadlineExceeded), []error{ErrTransient, ErrTransient}},
		{"server answer for the whole command", mongo.CommandError{Code: 13, Message: "Unauthorized"}, []error{ErrTransient, ErrTransient}},
		{"not primary", mongo.CommandError{Code: 10107, Message: "NotWritablePrimary"}, []error{ErrTransient, ErrTransient}},
		{"retryable label", mongo.CommandError{Code: 1, Labels: []string{"RetryableWriteError"}}, []error{ErrTransient, ErrTransient}},
		{"write concern", mongo.BulkWriteException{
			WriteErrors:       []mongo.BulkWriteError{{WriteError: mongo.WriteError{Index: 0, Code: 11000}}},
			WriteConcernError: &mongo.WriteConcernError{Code: 64, Message: "waiting for replication timed out"},
		}, []error{errDup, ErrTransient}},
		{"client-side", errClientSide, []error{errNeedsIsolation, errNeedsIsolation}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := classifyInsert(c.err, len(c.want))
			for i, o := range got {
				switch want := c.want[i]; {
				case want == errDup:
					if !o.duplicate || o.err != nil {
						t.Errorf("item %d = %+v, want duplicate", i, o)
					}
				case want == nil:
					if o.err != nil || o.duplicate {
						t.Errorf("item %d = %+v, want success", i, o)
					}
				case !errors.Is(o.err, want):
					t.Errorf("item %d = %+v, want %v", i, o, want)
				}
			}
		})
	}
}

var errDup = errors.New("duplicate")

func TestBulkWriterIsolatesClientSideFailure(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := testCtx(t)
	w := newTestBulkWriter(t, s, BulkConfig{MaxDocs: 3, MaxDelay: time.Hour})
	conv := mustCreate(t, s, "t1", "alice")
	msgs := newMessages("t1", conv.ID, 3)
	real := w.insert
	w.insert = func(ctx context.Context, docs []any) error {
		for _, d := range docs {
			if d.(messageDoc).ID == msgs[1].ID {
				return errClientSide
			}
		}
		return real(ctx, docs)
	}
	res := w.Write(ctx, msgs)
	if res[0].Err != nil || res[2].Err != nil || !errors.Is(res[1].Err, ErrPermanent) {
		t.Fatalf("results = %v, %v, %v; want ok, permanent, ok", res[0].Err, res[1].Err, res[2].Err)
	}
}

func TestBulkWriterStoreDownIsTransient(t *testing.T) {
	m := testenv.StartMongoServer(t)
	ctx := testCtx(t)
	client, err := Connect(ctx, m.URI())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Disconnect(context.Background()) })
	s := New(client.Database("platform"))
	w := newTestBulkWriter(t, s, BulkConfig{MaxDelay: time.Millisecond, Timeout: 500 * time.Millisecond})
	msgs := newMessages("t1", "c1", 3)

	m.Stop()
	for i, r := range w.Write(ctx, msgs) {
		if !errors.Is(r.Err, ErrTransient) || !IsTransient(r.Err) {
			t.Fatalf("store down: item %d err %v, want ErrTransient", i, r.Err)
		}
	}
	m.Start()
	// The driver reconnects on its own; the first writes after a restart may still fail transiently, and
	// such a "failed" write may have stored its messages all the same (then a retry finds duplicates).
	for {
		res := w.Write(ctx, msgs)
		if res[0].Err == nil {
			for i, r := range res {
				if r.Err != nil || r.Message.ID != msgs[i].ID {
					t.Fatalf("after restart: item %d = %+v", i, r)
				}
			}
			break
		}
		if !errors.Is(res[0].Err, ErrTransient) || ctx.Err() != nil {
			t.Fatalf("after restart: %v", res[0].Err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestIsTransient(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{ErrNotFound, false},
		{fmt.Errorf("get: %w", ErrNotFound), false},
		{context.Canceled, true},
		{mongo.ErrClientDisconnected, true},
		{mongo.CommandError{Code: 189}, true},
		{mongo.CommandError{Code: 2}, false},
		{fmt.Errorf("x: %w", ErrTransient), true},
	} {
		if got := IsTransient(c.err); got != c.want {
			t.Errorf("IsTransient(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// TestBulkWriterInFlight checks MaxInFlight: InsertMany commands of different Writes run at once, while
// the commands of one Write split by MaxDocs run one after the other, in its order.
func TestBulkWriterInFlight(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := testCtx(t)
	w := newTestBulkWriter(t, s, BulkConfig{MaxDocs: 3, MaxDelay: time.Hour, MaxInFlight: 2})
	conv := mustCreate(t, s, "t1", "alice")
	real := w.insert
	var mu sync.Mutex
	active, maxActive := 0, 0
	var firstIDs []string
	both := make(chan struct{})
	w.insert = func(ctx context.Context, docs []any) error {
		mu.Lock()
		active++
		maxActive = max(maxActive, active)
		firstIDs = append(firstIDs, docs[0].(messageDoc).ID)
		if active == 2 {
			close(both)
		}
		mu.Unlock()
		if len(docs) == 3 && docs[0].(messageDoc).TenantID == "t1" {
			// The two Writes' commands wait for each other (a deadline, not a sleep, bounds it).
			select {
			case <-both:
			case <-time.After(5 * time.Second):
			}
		}
		err := real(ctx, docs)
		mu.Lock()
		active--
		mu.Unlock()
		return err
	}
	a, b := newMessages("t1", conv.ID, 3), newMessages("t1", conv.ID, 3)
	var wg sync.WaitGroup
	for _, msgs := range [][]Message{a, b} {
		wg.Go(func() {
			for _, r := range w.Write(ctx, msgs) {
				if r.Err != nil {
					t.Error(r.Err)
				}
			}
		})
	}
	wg.Wait()
	if maxActive != 2 {
		t.Fatalf("at most %d InsertMany at once, want 2", maxActive)
	}

	// One Write of 9: three commands of 3, one at a time, in order.
	mu.Lock()
	maxActive, firstIDs = 0, nil
	mu.Unlock()
	msgs := newMessages("t2", conv.ID, 9)
	res := w.Write(ctx, msgs)
	for i, r := range res {
		if r.Err != nil {
			t.Fatalf("message %d: %v", i, r.Err)
		}
		if i > 0 && r.Message.PersistTime.Before(res[i-1].Message.PersistTime) {
			t.Fatalf("message %d persisted before message %d", i, i-1)
		}
	}
	if maxActive != 1 || !slices.Equal(firstIDs, []string{msgs[0].ID, msgs[3].ID, msgs[6].ID}) {
		t.Fatalf("commands of one Write: at most %d at once, starting with %v; want 1, in order", maxActive, firstIDs)
	}
}
