// Package changes watches MongoDB change streams (one per collection) and hands each change to a Handler,
// persisting the stream's resume token in a TokenStore (Redis) so a restart continues where it stopped.
//
// The store knows no policy: what reacts to a change (membership-cache invalidation, events) is a Handler
// handed in by whoever wires it (internal/watchers holds the platform's).
//
// Semantics (MongoDB change-streams specification):
//   - Each watched collection has its own stream, opened with fullDocument: "updateLookup".
//   - After each handled event the stream's current resume token is saved (the event's _id, or the
//     postBatchResumeToken when the event is the last of its batch, as the driver caches it). After an
//     EMPTY batch (first batch of aggregate, or a getMore) the postBatchResumeToken is saved too, so an idle
//     stream's token keeps moving forward inside the oplog window.
//   - A handler error is not saved over: the stream is reopened from the last saved token (with backoff),
//     so the event is delivered again (at-least-once; handlers must be idempotent).
//   - A (re)open with a saved token uses startAfter (which, unlike resumeAfter, also accepts an invalidate
//     event's token) and counts platform_change_streams_resumes_total.
//   - invalidate (collection dropped or renamed, database dropped): the server closes the cursor after the
//     invalidate event; its token is saved and the stream reopened with startAfter = that token, so it
//     follows the collection if it is created again.
//   - Error 286 ChangeStreamHistoryLost (the saved token fell off the oplog): the token is deleted and the
//     stream restarts from now; counted in platform_change_streams_history_lost_total and logged at ERROR,
//     since changes in the gap were not seen (the membership cache's TTL bounds their effect there).
//   - A stored token that is not BSON (ErrBadToken) is handled like a lost history (logged, not counted).
//   - Servers without change streams (FerretDB answers NotImplemented 238; CommandNotSupported 115; a
//     standalone mongod 40573): Run logs once, sets platform_change_streams_supported 0 and returns nil.
//   - Any other error: platform_change_streams_errors_total, then reopen after a capped exponential backoff.
package changes

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/prometheus/client_golang/prometheus"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/msgplatform/platform/internal/observability"
	"github.com/msgplatform/platform/internal/store"
)

// Operation types of change events the handlers look at.
const (
	OpInsert     = "insert"
	OpUpdate     = "update"
	OpReplace    = "replace"
	OpDelete     = "delete"
	OpInvalidate = "invalidate"
)

// CodeChangeStreamHistoryLost is the server error of a resume token no longer in the oplog.
const CodeChangeStreamHistoryLost = 286

// Server error codes meaning "no change streams here" (same list as store.CheckChangeStreams).
var unsupportedCodes = []int{238, 115, 40573}

// Event is one change event.
type Event struct {
	Database      string
	Collection    string
	OperationType string   // insert, update, replace, delete, drop, rename, dropDatabase, ...
	DocumentKey   bson.Raw // the documentKey document, e.g. {_id: ...}; nil for events without one
	FullDocument  bson.Raw // the document after the change (update: looked up, may be nil if since deleted); nil for delete
	ResumeToken   bson.Raw // the event's _id
	Raw           bson.Raw // the whole event document
}

// ID returns documentKey._id.
func (e Event) ID() bson.RawValue {
	if e.DocumentKey == nil {
		return bson.RawValue{}
	}
	return e.DocumentKey.Lookup("_id")
}

// Handler reacts to the changes of one collection. An error makes the manager reopen the stream from the
// last saved token, so the event comes again: Handle must be idempotent, and should return nil for events
// it cannot ever process (retrying them would stall the stream).
type Handler interface {
	Handle(ctx context.Context, ev Event) error
}

// Watch is one watched collection and its handler.
type Watch struct {
	Collection string
	Handler    Handler
}

// Config configures a Manager.
type Config struct {
	Database   *mongo.Database
	Watches    []Watch // e.g. {store.MembershipsCollection, MembershipInvalidator{...}}, {store.MessagesCollection, MessageEvents{...}}
	Tokens     TokenStore
	Registerer prometheus.Registerer
	Logger     *slog.Logger // default slog.Default()
	// MaxAwaitTime bounds how long the server holds an empty getMore (default: the server's, 1s).
	MaxAwaitTime time.Duration
	// Backoff after errors: from BackoffInitial (default 500ms) doubling up to BackoffMax (default 30s), with jitter.
	BackoffInitial time.Duration
	BackoffMax     time.Duration
}

// Manager runs the change streams. Create it with New, run it with Run.
type Manager struct {
	cfg Config
	log *slog.Logger

	events      *prometheus.CounterVec
	resumes     *prometheus.CounterVec
	historyLost *prometheus.CounterVec
	errs        *prometheus.CounterVec
	supported   prometheus.Gauge

	unsupportedLog sync.Once
}

// New validates cfg and registers the metrics on cfg.Registerer.
func New(cfg Config) (*Manager, error) {
	switch {
	case cfg.Database == nil:
		return nil, errors.New("changes: Database is nil")
	case cfg.Tokens == nil:
		return nil, errors.New("changes: Tokens is nil")
	case cfg.Registerer == nil:
		return nil, errors.New("changes: Registerer is nil")
	}
	seen := map[string]bool{}
	for _, w := range cfg.Watches {
		if w.Collection == "" || w.Handler == nil {
			return nil, errors.New("changes: a Watch needs a Collection and a Handler")
		}
		if seen[w.Collection] {
			return nil, fmt.Errorf("changes: collection %s watched twice", w.Collection)
		}
		seen[w.Collection] = true
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.BackoffInitial <= 0 {
		cfg.BackoffInitial = 500 * time.Millisecond
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = 30 * time.Second
	}
	opts := func(name, help string) prometheus.CounterOpts {
		return prometheus.CounterOpts{Namespace: observability.Namespace, Subsystem: "change_streams", Name: name, Help: help}
	}
	m := &Manager{
		cfg: cfg,
		log: cfg.Logger.With("component", "change_streams", "database", cfg.Database.Name()),
		events: prometheus.NewCounterVec(opts("events_total",
			"Change events received, by collection and operation type."), []string{"collection", "operation"}),
		resumes: prometheus.NewCounterVec(opts("resumes_total",
			"Change streams (re)opened from a saved resume token (startAfter)."), []string{"collection"}),
		historyLost: prometheus.NewCounterVec(opts("history_lost_total",
			"Resume tokens no longer in the oplog (ChangeStreamHistoryLost, 286): restarted from now, changes in the gap missed."), []string{"collection"}),
		errs: prometheus.NewCounterVec(opts("errors_total",
			"Change stream errors (open, getMore, handler, token store) followed by a reopen with backoff."), []string{"collection"}),
		supported: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: observability.Namespace, Subsystem: "change_streams",
			Name: "supported", Help: "1 when the MongoDB server offers change streams, 0 when not (FerretDB, standalone), -1 before detection."}),
	}
	m.supported.Set(-1)
	// Every watched collection's series exist from the start, so a dashboard or an alert on rate() sees 0
	// rather than nothing (on FerretDB they stay 0 and supported says why).
	for _, w := range cfg.Watches {
		for _, vec := range []*prometheus.CounterVec{m.resumes, m.historyLost, m.errs} {
			vec.WithLabelValues(w.Collection)
		}
		for _, op := range []string{"insert", "update", "replace", "delete"} {
			m.events.WithLabelValues(w.Collection, op)
		}
	}
	for _, c := range []prometheus.Collector{m.events, m.resumes, m.historyLost, m.errs, m.supported} {
		if err := cfg.Registerer.Register(c); err != nil {
			return nil, fmt.Errorf("register change stream metrics: %w", err)
		}
	}
	return m, nil
}

// Supported reports whether db's server offers change streams: false (and nil) when it answers that it
// has none (store.ErrNoChangeStreams), an error when it cannot be asked.
func Supported(ctx context.Context, db *mongo.Database) (bool, error) {
	err := store.CheckChangeStreams(ctx, db)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, store.ErrNoChangeStreams):
		return false, nil
	default:
		return false, err
	}
}

// Run detects change-stream support (retrying with backoff while the server cannot be asked), then runs
// one stream per Watch until ctx ends. It returns nil when ctx ends and when the server has no change
// streams (after logging it once and setting the supported gauge to 0); it never returns an error for a
// condition that a reconnect can fix.
func (m *Manager) Run(ctx context.Context) error {
	bo := m.newBackoff()
	for {
		ok, err := Supported(ctx, m.cfg.Database)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			if !ok {
				m.unsupported("server answered that it has no change streams")
				return nil
			}
			break
		}
		wait := bo.NextBackOff()
		m.log.Warn("change streams: cannot detect support; retrying", "error", err, "retry_in", wait)
		if !sleep(ctx, wait) {
			return nil
		}
	}
	m.supported.Set(1)
	m.log.Info("change streams: watching", "collections", len(m.cfg.Watches))
	var wg sync.WaitGroup
	for _, w := range m.cfg.Watches {
		wg.Go(func() { m.runStream(ctx, w) })
	}
	wg.Wait()
	return nil
}

func (m *Manager) unsupported(why string) {
	m.supported.Set(0)
	m.unsupportedLog.Do(func() {
		m.log.Warn("change streams unsupported by this MongoDB server; membership cache relies on write-path invalidation and TTLs, no change events are emitted", "reason", why)
	})
}

func (m *Manager) newBackoff() *backoff.ExponentialBackOff {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = m.cfg.BackoffInitial
	bo.MaxInterval = m.cfg.BackoffMax
	bo.Reset()
	return bo
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// errReopen ends one stream session for an immediate reopen (invalidate, cursor closed by the server).
var errReopen = errors.New("reopen")

func (m *Manager) runStream(ctx context.Context, w Watch) {
	stream := m.cfg.Database.Name() + "." + w.Collection
	log := m.log.With("collection", w.Collection)
	bo := m.newBackoff()
	for ctx.Err() == nil {
		err := m.session(ctx, w, stream, log, bo)
		if ctx.Err() != nil {
			return
		}
		switch {
		case errors.Is(err, errReopen):
			continue
		case hasCode(err, CodeChangeStreamHistoryLost):
			m.historyLost.WithLabelValues(w.Collection).Inc()
			log.Error("change stream history lost: the saved resume token is no longer in the oplog; restarting from now, changes made in between were NOT seen",
				"error", err)
			if err := m.cfg.Tokens.Delete(ctx, stream); err != nil {
				m.errs.WithLabelValues(w.Collection).Inc()
				log.Warn("change stream: cannot drop the lost resume token", "error", err)
				sleep(ctx, bo.NextBackOff())
			}
		case errors.Is(err, ErrBadToken):
			log.Error("change stream: stored resume token is unreadable; restarting from now", "error", err)
			if err := m.cfg.Tokens.Delete(ctx, stream); err != nil {
				m.errs.WithLabelValues(w.Collection).Inc()
				sleep(ctx, bo.NextBackOff())
			}
		case hasCode(err, unsupportedCodes...):
			m.unsupported(err.Error())
			return
		default:
			m.errs.WithLabelValues(w.Collection).Inc()
			wait := bo.NextBackOff()
			log.Warn("change stream error; reopening", "error", err, "retry_in", wait)
			sleep(ctx, wait)
		}
	}
}

func hasCode(err error, codes ...int) bool {
	var se mongo.ServerError
	if !errors.As(err, &se) {
		return false
	}
	for _, c := range codes {
		if se.HasErrorCode(c) {
			return true
		}
	}
	return false
}

// session opens the stream once and processes it until an error (errReopen for a normal reopen).
func (m *Manager) session(ctx context.Context, w Watch, stream string, log *slog.Logger, bo *backoff.ExponentialBackOff) error {
	token, err := m.cfg.Tokens.Load(ctx, stream)
	if err != nil {
		return err
	}
	opts := options.ChangeStream().SetFullDocument(options.UpdateLookup)
	if m.cfg.MaxAwaitTime > 0 {
		opts.SetMaxAwaitTime(m.cfg.MaxAwaitTime)
	}
	if token != nil {
		opts.SetStartAfter(token)
	}
	cs, err := m.cfg.Database.Collection(w.Collection).Watch(ctx, mongo.Pipeline{}, opts)
	if err != nil {
		return fmt.Errorf("open change stream on %s: %w", stream, err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = cs.Close(cctx)
	}()
	if token != nil {
		m.resumes.WithLabelValues(w.Collection).Inc()
		log.Info("change stream resumed from saved token (startAfter)")
	} else {
		log.Info("change stream opened from now")
	}
	saved := token
	save := func(tok bson.Raw) error {
		if tok == nil || bytes.Equal(tok, saved) {
			return nil
		}
		if err := m.cfg.Tokens.Save(ctx, stream, tok); err != nil {
			return err
		}
		saved = bytes.Clone(tok)
		return nil
	}
	// An empty first batch carries the postBatchResumeToken (the driver caches it as the resume token).
	if err := save(cs.ResumeToken()); err != nil {
		return err
	}
	resetDone := false
	for {
		if cs.TryNext(ctx) {
			ev, err := decodeEvent(cs.Current)
			if err != nil {
				// Not an event the spec describes; skipping it is the only way forward.
				log.Error("change stream: undecodable event skipped", "error", err)
				if err := save(cs.ResumeToken()); err != nil {
					return err
				}
				continue
			}
			m.events.WithLabelValues(w.Collection, ev.OperationType).Inc()
			if ev.OperationType == OpInvalidate {
				// The server closes the cursor after it; reopen with startAfter the invalidate's own token.
				if err := save(ev.ResumeToken); err != nil {
					return err
				}
				log.Warn("change stream invalidated (collection dropped or renamed); reopening after it")
				return errReopen
			}
			if err := w.Handler.Handle(ctx, ev); err != nil {
				return fmt.Errorf("handle %s event on %s: %w", ev.OperationType, stream, err)
			}
			if err := save(cs.ResumeToken()); err != nil {
				return err
			}
			if !resetDone {
				bo.Reset()
				resetDone = true
			}
			continue
		}
		if err := cs.Err(); err != nil {
			return fmt.Errorf("change stream on %s: %w", stream, err)
		}
		if cs.ID() == 0 {
			log.Info("change stream cursor closed by the server; reopening")
			return errReopen
		}
		// A getMore came back empty: save its postBatchResumeToken.
		if err := save(cs.ResumeToken()); err != nil {
			return err
		}
		if !resetDone {
			bo.Reset()
			resetDone = true
		}
	}
}

// decodeEvent reads the fields the handlers use from a change event document.
func decodeEvent(raw bson.Raw) (Event, error) {
	ev := Event{Raw: raw}
	tok, ok := raw.Lookup("_id").DocumentOK()
	if !ok {
		return ev, errors.New("change event without an _id resume token")
	}
	ev.ResumeToken = tok
	if ev.OperationType, ok = raw.Lookup("operationType").StringValueOK(); !ok {
		return ev, errors.New("change event without operationType")
	}
	if ns, ok := raw.Lookup("ns").DocumentOK(); ok {
		ev.Database, _ = ns.Lookup("db").StringValueOK()
		ev.Collection, _ = ns.Lookup("coll").StringValueOK()
	}
	if dk, ok := raw.Lookup("documentKey").DocumentOK(); ok {
		ev.DocumentKey = dk
	}
	if fd, ok := raw.Lookup("fullDocument").DocumentOK(); ok {
		ev.FullDocument = fd
	}
	return ev, nil
}
