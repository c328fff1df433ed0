package changes

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/msgplatform/platform/internal/testenv"
)

// Contract tests of the Manager against the scripted responder (wire_test.go). See the comment there for
// the specification sections the replies are taken from and what the responder does not model.

const testDB = "platform"

// memTokens is an in-memory TokenStore that records every Save.
type memTokens struct {
	mu    sync.Mutex
	inner TokenStore // optional: saves go through to it too (Redis)
	cur   map[string]bson.Raw
	saves []bson.Raw
}

func newMemTokens(inner TokenStore) *memTokens {
	return &memTokens{inner: inner, cur: map[string]bson.Raw{}}
}

func (m *memTokens) Load(ctx context.Context, s string) (bson.Raw, error) {
	if m.inner != nil {
		return m.inner.Load(ctx, s)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cur[s], nil
}

func (m *memTokens) Save(ctx context.Context, s string, tok bson.Raw) error {
	if m.inner != nil {
		if err := m.inner.Save(ctx, s, tok); err != nil {
			return err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cur[s] = bytes.Clone(tok)
	m.saves = append(m.saves, bytes.Clone(tok))
	return nil
}

func (m *memTokens) Delete(ctx context.Context, s string) error {
	if m.inner != nil {
		if err := m.inner.Delete(ctx, s); err != nil {
			return err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.cur, s)
	return nil
}

func (m *memTokens) current(s string) bson.Raw {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cur[s]
}

func (m *memTokens) saved() []bson.Raw {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]bson.Raw(nil), m.saves...)
}

// recorder is a Handler that records events and the token saved when each arrived.
type recorder struct {
	mu        sync.Mutex
	events    []Event
	savedThen []bson.Raw
	tokens    *memTokens
	stream    string
	failOnce  bool
}

func (r *recorder) Handle(_ context.Context, ev Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failOnce {
		r.failOnce = false
		return errors.New("handler failed")
	}
	r.events = append(r.events, ev)
	r.savedThen = append(r.savedThen, r.tokens.current(r.stream))
	return nil
}

func (r *recorder) got() ([]Event, []bson.Raw) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.events...), append([]bson.Raw(nil), r.savedThen...)
}

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuf) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

type harness struct {
	m    *Manager
	done chan error
	stop context.CancelFunc
	logs *lockedBuf
}

func connect(t *testing.T, uri string) *mongo.Database {
	t.Helper()
	client, err := mongo.Connect(options.Client().ApplyURI(uri))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = client.Disconnect(ctx)
	})
	return client.Database(testDB)
}

func start(t *testing.T, db *mongo.Database, tokens TokenStore, watches ...Watch) *harness {
	t.Helper()
	logs := &lockedBuf{}
	m, err := New(Config{Database: db, Watches: watches, Tokens: tokens, Registerer: prometheus.NewRegistry(),
		Logger:         slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		BackoffInitial: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{m: m, done: make(chan error, 1), stop: cancel, logs: logs}
	go func() { h.done <- m.Run(ctx) }()
	t.Cleanup(func() { h.shutdown(t) })
	return h
}

func (h *harness) shutdown(t *testing.T) {
	t.Helper()
	h.stop()
	select {
	case err := <-h.done:
		if err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
		h.done <- nil // idempotent
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

// waitLimit bounds the waits for the manager's asynchronous work (a hang guard, not a timing assertion).
const waitLimit = 10 * time.Second

func changeStreamStage(t *testing.T, agg bson.Raw) bson.Raw {
	t.Helper()
	stages, err := agg.Lookup("pipeline").Array().Values()
	if err != nil || len(stages) == 0 {
		t.Fatalf("aggregate without pipeline: %v", agg)
	}
	return stages[0].Document().Lookup("$changeStream").Document()
}

func tokensEqual(t *testing.T, what string, got []bson.Raw, want ...int) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: got %d tokens %v, want %v", what, len(got), got, want)
	}
	for i, n := range want {
		if !bytes.Equal(got[i], rawToken(t, n)) {
			t.Fatalf("%s[%d] = %v, want token(%d) %v", what, i, got[i], n, bson.Raw(rawToken(t, n)))
		}
	}
}

func memberID(n string) string { return "t1/c1/" + n }

func TestContractEventsInOrderTokenSavedAfterEach(t *testing.T) {
	r := newResponder(t, testDB)
	r.push("memberships",
		step{PBRT: token(1)}, // aggregate: empty firstBatch
		step{Events: []bson.D{
			changeEvent(2, OpInsert, testDB, "memberships", memberID("u2"), bson.D{{Key: "_id", Value: memberID("u2")}}),
			changeEvent(3, OpUpdate, testDB, "memberships", memberID("u3"), bson.D{{Key: "_id", Value: memberID("u3")}}),
			changeEvent(4, OpDelete, testDB, "memberships", memberID("u4"), nil),
		}, PBRT: token(4)})
	tokens := newMemTokens(nil)
	rec := &recorder{tokens: tokens, stream: testDB + ".memberships"}
	h := start(t, connect(t, r.URI()), tokens, Watch{Collection: "memberships", Handler: rec})

	testenv.Eventually(t, "3 events", waitLimit, func() bool { evs, _ := rec.got(); return len(evs) == 3 })
	testenv.Eventually(t, "token 4 saved", waitLimit, func() bool { return bytes.Equal(tokens.current(rec.stream), rawToken(t, 4)) })
	evs, savedThen := rec.got()
	for i, want := range []struct{ op, id string }{{OpInsert, memberID("u2")}, {OpUpdate, memberID("u3")}, {OpDelete, memberID("u4")}} {
		id, _ := evs[i].ID().StringValueOK()
		if evs[i].OperationType != want.op || id != want.id || evs[i].Collection != "memberships" || evs[i].Database != testDB {
			t.Errorf("event %d = %s %s (%s.%s), want %s %s", i, evs[i].OperationType, id, evs[i].Database, evs[i].Collection, want.op, want.id)
		}
		if !bytes.Equal(evs[i].ResumeToken, rawToken(t, i+2)) {
			t.Errorf("event %d resume token = %v", i, evs[i].ResumeToken)
		}
	}
	if evs[0].FullDocument == nil || evs[2].FullDocument != nil {
		t.Errorf("fullDocument: insert %v, delete %v", evs[0].FullDocument, evs[2].FullDocument)
	}
	// Each event is handled with the previous event's token saved: the token is saved after each handled event.
	tokensEqual(t, "saved when handled", savedThen, 1, 2, 3)
	tokensEqual(t, "saves", tokens.saved(), 1, 2, 3, 4)

	aggs := r.receivedAggregates()
	cs := changeStreamStage(t, aggs[0])
	if fd, _ := cs.Lookup("fullDocument").StringValueOK(); fd != "updateLookup" {
		t.Errorf("fullDocument option = %q, want updateLookup", fd)
	}
	if _, err := cs.LookupErr("startAfter"); err == nil {
		t.Errorf("first open without a token sent startAfter: %v", cs)
	}
	if got := testutil.ToFloat64(h.m.events.WithLabelValues("memberships", OpUpdate)); got != 1 {
		t.Errorf("events_total{update} = %v", got)
	}
	if got := testutil.ToFloat64(h.m.supported); got != 1 {
		t.Errorf("supported = %v, want 1", got)
	}
}

func TestContractEmptyBatchSavesPostBatchResumeToken(t *testing.T) {
	r := newResponder(t, testDB)
	r.push("messages", step{PBRT: token(1)}, step{PBRT: token(5)}, step{}, step{PBRT: token(6)})
	tokens := newMemTokens(nil)
	rec := &recorder{tokens: tokens, stream: testDB + ".messages"}
	start(t, connect(t, r.URI()), tokens, Watch{Collection: "messages", Handler: rec})

	testenv.Eventually(t, "token 6 saved", waitLimit, func() bool { return bytes.Equal(tokens.current(rec.stream), rawToken(t, 6)) })
	tokensEqual(t, "saves", tokens.saved(), 1, 5, 6) // an unchanged PBRT is not saved again
	if evs, _ := rec.got(); len(evs) != 0 {
		t.Errorf("handler called on empty batches: %v", evs)
	}
}

func redisTokens(t *testing.T) *RedisTokens {
	t.Helper()
	opt, err := redis.ParseURL(testenv.Redis(t))
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	t.Cleanup(func() { _ = rdb.Close() })
	return NewRedisTokens(rdb)
}

func TestContractRestartResumesWithStartAfter(t *testing.T) {
	r := newResponder(t, testDB)
	r.push("messages", step{PBRT: token(1)}, step{Events: []bson.D{
		changeEvent(2, OpInsert, testDB, "messages", "m2", bson.D{{Key: "_id", Value: "m2"}})}, PBRT: token(2)})
	redisStore := redisTokens(t) // shared by both "processes", as Redis is across a restart
	db := connect(t, r.URI())

	first := newMemTokens(redisStore)
	rec := &recorder{tokens: first, stream: testDB + ".messages"}
	h1 := start(t, db, first, Watch{Collection: "messages", Handler: rec})
	testenv.Eventually(t, "token 2 saved", waitLimit, func() bool { return bytes.Equal(first.current(rec.stream), rawToken(t, 2)) })
	h1.shutdown(t)

	second := newMemTokens(redisStore)
	rec2 := &recorder{tokens: second, stream: testDB + ".messages"}
	h2 := start(t, db, second, Watch{Collection: "messages", Handler: rec2})
	// The restart's aggregate must carry startAfter = the token saved before the restart. (Found by content,
	// not position: a driver-internal resume of the stopped stream may reach the responder late.)
	var cs bson.Raw
	testenv.Eventually(t, "aggregate with startAfter token 2", waitLimit, func() bool {
		for _, agg := range r.receivedAggregates()[1:] {
			c := changeStreamStage(t, agg)
			if sa, err := c.LookupErr("startAfter"); err == nil && bytes.Equal(sa.Document(), rawToken(t, 2)) {
				cs = c
				return true
			}
		}
		return false
	})
	if _, err := cs.LookupErr("resumeAfter"); err == nil {
		t.Errorf("restart sent resumeAfter too: %v", cs)
	}
	r.push("messages", step{Events: []bson.D{
		changeEvent(3, OpInsert, testDB, "messages", "m3", bson.D{{Key: "_id", Value: "m3"}})}, PBRT: token(3)})
	testenv.Eventually(t, "event 3 after restart", waitLimit, func() bool { evs, _ := rec2.got(); return len(evs) == 1 })
	if got := testutil.ToFloat64(h2.m.resumes.WithLabelValues("messages")); got != 1 {
		t.Errorf("resumes_total = %v, want 1", got)
	}
	evs, _ := rec2.got()
	if id, _ := evs[0].ID().StringValueOK(); id != "m3" {
		t.Errorf("after restart got %s, want m3", id)
	}
}

func TestContractInvalidateReopensWithStartAfter(t *testing.T) {
	r := newResponder(t, testDB)
	r.push("messages",
		step{PBRT: token(1)},
		step{Events: []bson.D{invalidateEvent(2)}, PBRT: token(2), Close: true}, // server closes the cursor after invalidate
		step{Events: []bson.D{changeEvent(3, OpInsert, testDB, "messages", "m3", bson.D{{Key: "_id", Value: "m3"}})}, PBRT: token(3)})
	tokens := newMemTokens(nil)
	rec := &recorder{tokens: tokens, stream: testDB + ".messages"}
	h := start(t, connect(t, r.URI()), tokens, Watch{Collection: "messages", Handler: rec})

	testenv.Eventually(t, "event after invalidate", waitLimit, func() bool { evs, _ := rec.got(); return len(evs) == 1 })
	aggs := r.receivedAggregates()
	if len(aggs) != 2 {
		t.Fatalf("aggregates = %d, want 2", len(aggs))
	}
	if sa, err := changeStreamStage(t, aggs[1]).LookupErr("startAfter"); err != nil || !bytes.Equal(sa.Document(), rawToken(t, 2)) {
		t.Fatalf("reopen after invalidate = %v, want startAfter the invalidate token", changeStreamStage(t, aggs[1]))
	}
	testenv.Eventually(t, "token 3 saved", waitLimit, func() bool { return bytes.Equal(tokens.current(rec.stream), rawToken(t, 3)) })
	tokensEqual(t, "saves", tokens.saved(), 1, 2, 3)
	if got := testutil.ToFloat64(h.m.events.WithLabelValues("messages", OpInvalidate)); got != 1 {
		t.Errorf("events_total{invalidate} = %v", got)
	}
	if evs, _ := rec.got(); evs[0].OperationType != OpInsert {
		t.Errorf("handler got %s; invalidate must not reach handlers", evs[0].OperationType)
	}
}

var historyLost = &cmdError{Code: 286, CodeName: "ChangeStreamHistoryLost",
	Msg: "Executor error during getMore :: caused by :: Resume of change stream was not possible, as the resume point may no longer be in the oplog."}

func TestContractHistoryLostRestartsFromNow(t *testing.T) {
	for _, tc := range []struct {
		name  string
		steps []step
		first int // token the first aggregate starts after (0: none)
	}{
		{name: "on aggregate", first: 9, steps: []step{{Err: historyLost}, {PBRT: token(10)}}},
		{name: "on getMore", first: 9, steps: []step{{PBRT: token(9)}, {Err: historyLost}, {PBRT: token(10)}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newResponder(t, testDB)
			r.push("messages", tc.steps...)
			tokens := newMemTokens(nil)
			stream := testDB + ".messages"
			_ = tokens.Save(context.Background(), stream, rawToken(t, 9))
			rec := &recorder{tokens: tokens, stream: stream}
			h := start(t, connect(t, r.URI()), tokens, Watch{Collection: "messages", Handler: rec})

			testenv.Eventually(t, "token 10 saved", waitLimit, func() bool { return bytes.Equal(tokens.current(stream), rawToken(t, 10)) })
			aggs := r.receivedAggregates()
			if len(aggs) != 2 {
				t.Fatalf("aggregates = %d, want 2", len(aggs))
			}
			if sa, err := changeStreamStage(t, aggs[0]).LookupErr("startAfter"); err != nil || !bytes.Equal(sa.Document(), rawToken(t, tc.first)) {
				t.Errorf("first aggregate = %v", changeStreamStage(t, aggs[0]))
			}
			cs := changeStreamStage(t, aggs[1])
			for _, opt := range []string{"startAfter", "resumeAfter", "startAtOperationTime"} {
				if _, err := cs.LookupErr(opt); err == nil {
					t.Errorf("restart after history lost sent %s: %v", opt, cs)
				}
			}
			if got := testutil.ToFloat64(h.m.historyLost.WithLabelValues("messages")); got != 1 {
				t.Errorf("history_lost_total = %v, want 1", got)
			}
			if logs := h.logs.String(); !strings.Contains(logs, "level=ERROR") || !strings.Contains(logs, "history lost") {
				t.Errorf("no ERROR log for history lost:\n%s", logs)
			}
		})
	}
}

func TestContractErrorsReopenWithBackoff(t *testing.T) {
	r := newResponder(t, testDB)
	r.push("messages",
		step{Err: &cmdError{Code: 2, CodeName: "BadValue", Msg: "scripted failure"}},
		step{PBRT: token(1)},
		step{Events: []bson.D{changeEvent(2, OpInsert, testDB, "messages", "m2", bson.D{{Key: "_id", Value: "m2"}})}, PBRT: token(2)},
		// after the handler failed, the stream is reopened after token 1 and the server sends event 2 again
		step{Events: []bson.D{changeEvent(2, OpInsert, testDB, "messages", "m2", bson.D{{Key: "_id", Value: "m2"}})}, PBRT: token(2)})
	tokens := newMemTokens(nil)
	rec := &recorder{tokens: tokens, stream: testDB + ".messages", failOnce: true}
	h := start(t, connect(t, r.URI()), tokens, Watch{Collection: "messages", Handler: rec})

	testenv.Eventually(t, "event handled after a failure", waitLimit, func() bool { evs, _ := rec.got(); return len(evs) == 1 })
	aggs := r.receivedAggregates()
	if len(aggs) != 3 {
		t.Fatalf("aggregates = %d, want 3 (error, open, reopen after handler error)", len(aggs))
	}
	if sa, err := changeStreamStage(t, aggs[2]).LookupErr("startAfter"); err != nil || !bytes.Equal(sa.Document(), rawToken(t, 1)) {
		t.Errorf("reopen after handler error = %v, want startAfter token(1) (the failed event not saved over)", changeStreamStage(t, aggs[2]))
	}
	if got := testutil.ToFloat64(h.m.errs.WithLabelValues("messages")); got != 2 {
		t.Errorf("errors_total = %v, want 2", got)
	}
}

func TestContractUnsupportedServer(t *testing.T) {
	r := newResponder(t, testDB)
	r.unsupported = &cmdError{Code: 238, CodeName: "NotImplemented", Msg: "`aggregate` stage \"$changeStream\" is not implemented yet"}
	db := connect(t, r.URI())
	ok, err := Supported(context.Background(), db)
	if err != nil || ok {
		t.Fatalf("Supported = %v, %v; want false, nil", ok, err)
	}
	tokens := newMemTokens(nil)
	h := start(t, db, tokens, Watch{Collection: "messages", Handler: &recorder{tokens: tokens}})
	select {
	case err := <-h.done:
		if err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
		h.done <- nil
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return on a server without change streams")
	}
	if got := testutil.ToFloat64(h.m.supported); got != 0 {
		t.Errorf("supported = %v, want 0", got)
	}
	if n := strings.Count(h.logs.String(), "unsupported"); n != 1 {
		t.Errorf("logged %d times, want once:\n%s", n, h.logs.String())
	}
}
