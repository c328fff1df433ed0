package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/writeconcern"

	"github.com/msgplatform/platform/internal/observability"
)

// Bulk writer defaults.
const (
	DefaultBulkMaxDocs  = 500
	DefaultBulkMaxDelay = 2 * time.Millisecond
	DefaultBulkTimeout  = 30 * time.Second
)

// BulkConfig tunes a BulkWriter. Zero values take the defaults.
type BulkConfig struct {
	// MaxDocs flushes as soon as this many messages wait (default 500).
	MaxDocs int
	// MaxDelay flushes this long after a message started waiting in an otherwise idle buffer (default 2ms:
	// long enough to merge the writes of one poll's partitions, short enough not to dominate latency).
	MaxDelay time.Duration
	// WriteConcern of the inserts (default majority: an acknowledged message survives a primary failover).
	// FerretDB accepts any write concern and ignores it.
	WriteConcern *writeconcern.WriteConcern
	// Timeout bounds one InsertMany (default 30s); a timeout is a transient error.
	Timeout time.Duration
	// MaxInFlight is how many InsertMany commands may run at once (default 2). While one runs, the
	// server can decode and prepare the next, which a single writer leaves idle; more than a couple
	// only queue on the server's write lock. A Write's messages split over two commands are inserted
	// one command after the other, never at once, so a caller's messages keep their order.
	MaxInFlight int
}

// DefaultBulkMaxInFlight is BulkConfig.MaxInFlight's default.
const DefaultBulkMaxInFlight = 2

// BulkResult is the outcome of one message of a Write.
type BulkResult struct {
	// Message as stored: for an insert, the submitted message with its defaults filled (state, times,
	// version); for a duplicate, the document already stored under that id, read back.
	Message Message
	// Duplicate: the id was already stored (a redelivery). It counts as success.
	Duplicate bool
	// Err is nil on success (insert or duplicate), else wraps ErrTransient or ErrPermanent.
	Err error
}

// BulkWriter coalesces the messages of concurrent Write calls into unordered InsertMany commands, by
// count (MaxDocs) and by time (MaxDelay), with the message id as _id. At most MaxInFlight InsertMany run
// at a time: while they run, new writes wait, which is the back-pressure a slow store puts on its
// callers.
type BulkWriter struct {
	cfg    BulkConfig
	logger *slog.Logger
	now    func() time.Time
	// insert and find are the two commands the writer issues; tests replace them to inject errors.
	insert func(ctx context.Context, docs []any) error
	find   func(ctx context.Context, ids []string) ([]messageDoc, error)

	in   chan *bulkRequest
	quit chan struct{}
	done chan struct{}

	batchSize    prometheus.Histogram
	batchLatency prometheus.Histogram
	items        *prometheus.CounterVec
	flushes      *prometheus.CounterVec
}

// bulkRequest is one Write call waiting for its messages to be flushed.
type bulkRequest struct {
	msgs      []Message
	results   []BulkResult // written by the writer's goroutine only, read after done
	remaining int
	done      chan struct{}
}

// slot is one message of a request in the writer's buffer.
type slot struct {
	req *bulkRequest
	i   int
}

// NewBulkWriter starts a bulk writer on s's messages collection, registering its metrics on reg. Close it
// to flush what waits and stop its goroutine.
func NewBulkWriter(s *Store, cfg BulkConfig, reg prometheus.Registerer, logger *slog.Logger) (*BulkWriter, error) {
	if cfg.MaxDocs <= 0 {
		cfg.MaxDocs = DefaultBulkMaxDocs
	}
	if cfg.MaxDelay <= 0 {
		cfg.MaxDelay = DefaultBulkMaxDelay
	}
	if cfg.WriteConcern == nil {
		cfg.WriteConcern = writeconcern.Majority()
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultBulkTimeout
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = DefaultBulkMaxInFlight
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	coll := s.core.db.Collection(MessagesCollection, options.Collection().SetWriteConcern(cfg.WriteConcern))
	w := &BulkWriter{
		cfg:    cfg,
		logger: logger,
		now:    s.core.now,
		// The guard is read from the core at each call, so SetGuard after NewBulkWriter takes effect.
		// Inserts go through the breaker only (never retried here; a duplicate key is not a failure).
		insert: func(ctx context.Context, docs []any) error {
			return s.core.guard.Write(ctx, func(ctx context.Context) error {
				_, err := coll.InsertMany(ctx, docs, options.InsertMany().SetOrdered(false))
				return err
			})
		},
		find: func(ctx context.Context, ids []string) ([]messageDoc, error) {
			var docs []messageDoc
			err := s.core.guard.Read(ctx, func(ctx context.Context) error {
				docs = nil
				cur, err := coll.Find(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}})
				if err != nil {
					return err
				}
				return cur.All(ctx, &docs)
			})
			if err != nil {
				return nil, err
			}
			return docs, nil
		},
		in:   make(chan *bulkRequest),
		quit: make(chan struct{}),
		done: make(chan struct{}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: observability.Namespace, Subsystem: "bulk_writer", Name: "batch_size",
			Help:    "Messages per InsertMany of the bulk writer.",
			Buckets: []float64{1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500},
		}),
		batchLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: observability.Namespace, Subsystem: "bulk_writer", Name: "batch_duration_seconds",
			Help:    "Duration of one InsertMany of the bulk writer, duplicate read-back included.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		items: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: observability.Namespace, Subsystem: "bulk_writer", Name: "items_total",
			Help: "Messages written by result: inserted, duplicate (already stored: success), transient, permanent.",
		}, []string{"result"}),
		flushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: observability.Namespace, Subsystem: "bulk_writer", Name: "flushes_total",
			Help: "InsertMany commands by what triggered them: count (MaxDocs reached), time (MaxDelay passed), close.",
		}, []string{"trigger"}),
	}
	for _, c := range []prometheus.Collector{w.batchSize, w.batchLatency, w.items, w.flushes} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register bulk writer metrics: %w", err)
		}
	}
	go w.loop()
	return w, nil
}

// Write stores msgs (through the next InsertMany, shared with concurrent callers) and returns one result
// per message, in order. ID, TenantID and ConversationID are required (a message without them fails
// permanently, alone); the other fields default as in Messages.InsertMany. When ctx ends first, the
// messages not yet confirmed fail transiently; they may still be stored (a retry finds them as duplicates).
func (w *BulkWriter) Write(ctx context.Context, msgs []Message) []BulkResult {
	req := &bulkRequest{msgs: msgs, results: make([]BulkResult, len(msgs)), done: make(chan struct{})}
	for i, m := range msgs {
		var missing string
		switch {
		case m.ID == "":
			missing = "id"
		case m.TenantID == "":
			missing = "tenant id"
		case m.ConversationID == "":
			missing = "conversation id"
		default:
			req.remaining++
			continue
		}
		req.results[i] = BulkResult{Message: m, Err: fmt.Errorf("%w: write message %q: %w", ErrPermanent, m.ID, errMissing(missing))}
		w.items.WithLabelValues("permanent").Inc()
	}
	if req.remaining == 0 {
		return req.results
	}
	fail := func(err error) []BulkResult {
		out := make([]BulkResult, len(msgs))
		for i, m := range msgs {
			out[i] = BulkResult{Message: m, Err: fmt.Errorf("%w: write message %s: %w", ErrTransient, m.ID, err)}
		}
		return out
	}
	select {
	case w.in <- req:
	case <-ctx.Done():
		return fail(ctx.Err())
	case <-w.quit:
		return fail(errors.New("bulk writer closed"))
	}
	select {
	case <-req.done:
		return req.results
	case <-ctx.Done():
		return fail(ctx.Err())
	}
}

// Close flushes the messages waiting and stops the writer. Writes after Close fail transiently.
func (w *BulkWriter) Close() {
	select {
	case <-w.quit:
	default:
		close(w.quit)
	}
	<-w.done
}

func (w *BulkWriter) loop() {
	defer close(w.done)
	var (
		pending []slot
		timer   *time.Timer
		timeout <-chan time.Time
		sem     = make(chan struct{}, w.cfg.MaxInFlight)
		last    flight // the InsertMany dispatched last
	)
	stopTimer := func() {
		if timer != nil {
			timer.Stop()
		}
		timeout = nil
	}
	// dispatch starts an InsertMany of slots once fewer than MaxInFlight run and, if slots continue a
	// Write that the previous InsertMany holds part of, once that one is done: a Write's messages are
	// inserted in order.
	dispatch := func(slots []slot, trigger string) {
		if last.done != nil && len(slots) > 0 && last.reqs[slots[0].req] {
			<-last.done
		}
		sem <- struct{}{}
		f := flight{done: make(chan struct{}), reqs: make(map[*bulkRequest]bool)}
		for _, s := range slots {
			f.reqs[s.req] = true
		}
		now := w.now() // taken in dispatch order, so persist times follow it
		go func() {
			defer func() { <-sem; close(f.done) }()
			w.flush(slots, trigger, now)
		}()
		last = f
	}
	defer func() { // wait for the InsertMany still running
		for range cap(sem) {
			sem <- struct{}{}
		}
	}()
	for {
		select {
		case req := <-w.in:
			for i := range req.msgs {
				if req.results[i].Err == nil {
					pending = append(pending, slot{req: req, i: i})
				}
			}
			for len(pending) >= w.cfg.MaxDocs {
				dispatch(pending[:w.cfg.MaxDocs:w.cfg.MaxDocs], "count")
				pending = append([]slot(nil), pending[w.cfg.MaxDocs:]...)
				stopTimer()
			}
			if len(pending) > 0 && timeout == nil {
				timer = time.NewTimer(w.cfg.MaxDelay)
				timeout = timer.C
			}
		case <-timeout:
			timeout = nil
			dispatch(pending, "time")
			pending = nil
		case <-w.quit:
			stopTimer()
			if len(pending) > 0 {
				dispatch(pending, "close")
			}
			return
		}
	}
}

// flight is one dispatched InsertMany: closed done when finished, and the Writes it holds messages of.
type flight struct {
	done chan struct{}
	reqs map[*bulkRequest]bool
}

// outcome is what became of one document of an InsertMany.
type outcome struct {
	duplicate bool
	err       error // wraps ErrTransient or ErrPermanent
}

// flush inserts the slots' messages with one unordered InsertMany and hands each its result.
func (w *BulkWriter) flush(slots []slot, trigger string, now time.Time) {
	w.flushes.WithLabelValues(trigger).Inc()
	docs := make([]messageDoc, len(slots))
	anyDocs := make([]any, len(slots))
	for k, s := range slots {
		docs[k] = newMessageDoc(s.req.msgs[s.i], now)
		anyDocs[k] = docs[k]
	}
	ctx, cancel := context.WithTimeout(context.Background(), w.cfg.Timeout)
	defer cancel()
	start := time.Now()
	outcomes := classifyInsert(w.insert(ctx, anyDocs), len(docs))
	if isolate(outcomes) {
		// The whole command failed for a reason neither transient nor a server's answer (e.g. a document
		// the driver cannot encode): insert one by one so only the culprit fails.
		for k := range docs {
			outcomes[k] = classifyInsert(w.insert(ctx, anyDocs[k:k+1]), 1)[0]
		}
	}
	stored := w.readDuplicates(ctx, docs, outcomes)
	w.batchSize.Observe(float64(len(docs)))
	w.batchLatency.Observe(time.Since(start).Seconds())

	for k, s := range slots {
		res := BulkResult{Message: docs[k].message(), Duplicate: outcomes[k].duplicate, Err: outcomes[k].err}
		if res.Duplicate && res.Err == nil {
			res.Message = stored[docs[k].ID]
		}
		result := "inserted"
		switch {
		case errors.Is(res.Err, ErrTransient):
			result = "transient"
		case res.Err != nil:
			result = "permanent"
		case res.Duplicate:
			result = "duplicate"
		}
		w.items.WithLabelValues(result).Inc()
		s.req.results[s.i] = res
		if s.req.remaining--; s.req.remaining == 0 {
			close(s.req.done)
		}
	}
	if k := firstErr(outcomes); k >= 0 {
		w.logger.Warn("bulk insert: some messages not stored", "docs", len(docs), "first_error", outcomes[k].err)
	}
}

// readDuplicates reads back the stored documents of the duplicates, so callers (events) see the message
// as stored. A duplicate that cannot be read back becomes a transient failure: a retry finds it again.
func (w *BulkWriter) readDuplicates(ctx context.Context, docs []messageDoc, outcomes []outcome) map[string]Message {
	var ids []string
	for k, o := range outcomes {
		if o.duplicate && o.err == nil {
			ids = append(ids, docs[k].ID)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	found, err := w.find(ctx, ids)
	stored := make(map[string]Message, len(found))
	for _, d := range found {
		stored[d.ID] = d.message()
	}
	for k, o := range outcomes {
		if !o.duplicate || o.err != nil {
			continue
		}
		if _, ok := stored[docs[k].ID]; !ok {
			cause := err
			if cause == nil {
				cause = errors.New("not found right after a duplicate-key error")
			}
			outcomes[k].err = fmt.Errorf("%w: read back stored message %s: %w", ErrTransient, docs[k].ID, cause)
		}
	}
	return stored
}

func firstErr(outcomes []outcome) int {
	for k, o := range outcomes {
		if o.err != nil {
			return k
		}
	}
	return -1
}

// errNeedsIsolation marks a whole-command failure that only inserting one by one can attribute.
var errNeedsIsolation = errors.New("whole insert failed for an unknown item")

func isolate(outcomes []outcome) bool {
	return len(outcomes) > 1 && errors.Is(outcomes[0].err, errNeedsIsolation)
}

// classifyInsert turns the error of an unordered InsertMany of n documents into per-document outcomes.
//
//   - nil: every document was inserted.
//   - A BulkWriteException: each write error names its document; a duplicate key means already stored
//     (success), a transient code is retried, any other code is the document's own (permanent). A write
//     concern error leaves the durability of every other document unknown: transient for all of them.
//   - Any other error failed the whole command. When it is transient (network, timeout, server selection,
//     retryable labels and codes) or an answer of the server (it cannot be blamed on one document, e.g.
//     Unauthorized), every document fails transiently: the store is unwell, and dead-lettering a batch
//     because the store blinked is what must never happen. Otherwise (a client-side error such as an
//     unencodable document), the documents are marked for isolation.
func classifyInsert(err error, n int) []outcome {
	out := make([]outcome, n)
	if err == nil {
		return out
	}
	var bwe mongo.BulkWriteException
	if errors.As(err, &bwe) && (len(bwe.WriteErrors) > 0 || bwe.WriteConcernError != nil) {
		for _, we := range bwe.WriteErrors {
			if we.Index < 0 || we.Index >= n {
				continue
			}
			switch {
			case mongo.IsDuplicateKeyError(we.WriteError):
				out[we.Index].duplicate = true
			case transientCode(we.Code):
				out[we.Index].err = fmt.Errorf("%w: insert: %w", ErrTransient, we.WriteError)
			default:
				out[we.Index].err = fmt.Errorf("%w: insert: %w", ErrPermanent, we.WriteError)
			}
		}
		if bwe.WriteConcernError != nil {
			for k := range out {
				if out[k].err == nil && !out[k].duplicate {
					out[k].err = fmt.Errorf("%w: insert: write concern: %w", ErrTransient, bwe.WriteConcernError)
				}
			}
		}
		return out
	}
	var se mongo.ServerError
	switch {
	case IsTransient(err), errors.As(err, &se):
		err = fmt.Errorf("%w: insert: %w", ErrTransient, err)
	default:
		err = fmt.Errorf("%w: insert: %w: %w", ErrPermanent, errNeedsIsolation, err)
	}
	for k := range out {
		out[k].err = err
	}
	return out
}
