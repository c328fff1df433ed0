package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/oklog/ulid/v2"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// Collections of the dead-letter queue. They are not tenant-scoped: operators work across tenants.
const (
	DeadLettersCollection = "dead_letters"
	// DeadLetterClaimsCollection holds the short-lived fences that serialise the status changes of one
	// dead letter (see DeadLetters).
	DeadLetterClaimsCollection = "dead_letter_claims"
)

// DeadLetterStatus is where a dead letter is in its handling.
type DeadLetterStatus string

// Dead-letter statuses. Retrying is internal: the entry is claimed by a retrier (scheduler or operator)
// that is republishing it; the API shows it as pending retry.
const (
	DeadLetterPendingRetry DeadLetterStatus = "pending_retry"
	DeadLetterRetrying     DeadLetterStatus = "retrying"
	DeadLetterParked       DeadLetterStatus = "parked"
	DeadLetterRetried      DeadLetterStatus = "retried"
	DeadLetterPurged       DeadLetterStatus = "purged"
)

// DeadLetterStatuses lists every status, for gauges and validation.
var DeadLetterStatuses = []DeadLetterStatus{DeadLetterPendingRetry, DeadLetterRetrying, DeadLetterParked, DeadLetterRetried, DeadLetterPurged}

// Errors of dead-letter status changes (besides ErrNotFound and ErrConflict, which means the entry changed
// between reading and claiming it, or another replica holds it at this very moment).
var (
	// ErrDeadLetterPurged: the entry is purged; it is never retried again.
	ErrDeadLetterPurged = errors.New("dead letter is purged")
	// ErrDeadLetterBusy: another retrier holds a live claim on the entry (it is being republished now).
	ErrDeadLetterBusy = errors.New("dead letter is being retried right now")
	// ErrDeadLetterNotDue: the scheduler asked for an entry that is no longer due (someone else handled it).
	ErrDeadLetterNotDue = errors.New("dead letter is not due for retry")
)

// Header is one Kafka record header; values are bytes and a key may repeat, so headers are a list.
type Header struct {
	Key   string
	Value []byte
}

// DeadLetter is a record that failed in the pipeline, as the DLQ processor stored it, with its handling
// state.
type DeadLetter struct {
	// ID is DeadLetterID(original topic, partition, offset, attempts): a redelivered DLQ record maps to
	// the same entry.
	ID                string
	OriginalTopic     string
	OriginalPartition int32
	OriginalOffset    int64
	Key               []byte
	Payload           []byte // nil once purged
	// PayloadTruncated: the record was oversized and only its first bytes were kept; OriginalSize and
	// OriginalSHA256 describe the whole original value. Such an entry is never retried.
	PayloadTruncated bool
	OriginalSize     int64
	OriginalSHA256   string
	Headers          []Header
	TenantID         string
	Stage            string
	Error            string
	ErrorClass       string // "permanent" or "transient"
	Attempts         int
	MessageID        string // when the payload decoded as an InboundMessage
	Status           DeadLetterStatus
	FirstFailureTime time.Time
	LastFailureTime  time.Time
	NextRetryTime    *time.Time // pending_retry (kept while retrying)
	// Claim of a retrier, while Status is retrying: who, until when, and the status it was claimed from
	// (restored if the republish fails).
	ClaimOwner  string
	LeaseUntil  *time.Time
	ClaimedFrom DeadLetterStatus
	// Retries counts the republishes of this entry; LastRetryTime is the latest.
	Retries       int
	LastRetryTime *time.Time
	// Note says why the entry is in its status (e.g. "attempts exhausted"); LastActor who changed it last
	// ("processor", "scheduler <owner>", "operator <sub> (tenant <t>)").
	Note       string
	LastActor  string
	PurgeTime  *time.Time
	CreateTime time.Time
	UpdateTime time.Time // last status change
	Version    int64     // starts at 1, incremented by every status change
	Seq        string    // sort key of lists: a ULID of LastFailureTime (newest first = Seq descending)
}

// DeadLetterID is the deterministic id of the dead letter of one failure: the original record's topic,
// partition and offset, and the attempt count. It contains only [a-zA-Z0-9._-] (Kafka topic names use no
// other characters), so it is safe in a URL path and never contains the ':' of REST verbs.
func DeadLetterID(topic string, partition int32, offset int64, attempts int) string {
	return topic + "-" + strconv.FormatInt(int64(partition), 10) + "-" + strconv.FormatInt(offset, 10) + "-" + strconv.Itoa(attempts)
}

// deadLetterDoc is a document of the dead_letters collection.
type deadLetterDoc struct {
	ID                string       `bson:"_id"`
	Seq               string       `bson:"seq"`
	OriginalTopic     string       `bson:"original_topic"`
	OriginalPartition int32        `bson:"original_partition"`
	OriginalOffset    int64        `bson:"original_offset"`
	Key               []byte       `bson:"key,omitempty"`
	Payload           []byte       `bson:"payload,omitempty"`
	PayloadTruncated  bool         `bson:"payload_truncated,omitempty"`
	OriginalSize      int64        `bson:"original_size,omitempty"`
	OriginalSHA256    string       `bson:"original_sha256,omitempty"`
	Headers           []headerPair `bson:"headers,omitempty"`
	TenantID          string       `bson:"tenant_id"`
	Stage             string       `bson:"stage"`
	Error             string       `bson:"error"`
	ErrorClass        string       `bson:"error_class"`
	Attempts          int64        `bson:"attempts"`
	MessageID         string       `bson:"message_id,omitempty"`
	Status            string       `bson:"status"`
	FirstFailureTime  time.Time    `bson:"first_failure_time"`
	LastFailureTime   time.Time    `bson:"last_failure_time"`
	NextRetryTime     *time.Time   `bson:"next_retry_time,omitempty"`
	// DueTime is when the scheduler must look at the entry: next_retry_time while pending_retry, the end
	// of the lease while retrying, absent otherwise. One field keeps the scheduler's query on one index.
	DueTime       *time.Time `bson:"due_time,omitempty"`
	ClaimOwner    string     `bson:"claim_owner,omitempty"`
	LeaseUntil    *time.Time `bson:"lease_until,omitempty"`
	ClaimedFrom   string     `bson:"claimed_from,omitempty"`
	Retries       int64      `bson:"retries"`
	LastRetryTime *time.Time `bson:"last_retry_time,omitempty"`
	Note          string     `bson:"note,omitempty"`
	LastActor     string     `bson:"last_actor,omitempty"`
	PurgeTime     *time.Time `bson:"purge_time,omitempty"`
	CreateTime    time.Time  `bson:"create_time"`
	UpdateTime    time.Time  `bson:"update_time"`
	Version       int64      `bson:"version"`
}

// headerPair is one stored header; the value stays bytes so a republish is byte-for-byte.
type headerPair struct {
	K string `bson:"k"`
	V []byte `bson:"v"`
}

func (d deadLetterDoc) deadLetter() DeadLetter {
	var headers []Header
	if len(d.Headers) > 0 {
		headers = make([]Header, len(d.Headers))
		for i, h := range d.Headers {
			headers[i] = Header{Key: h.K, Value: h.V}
		}
	}
	return DeadLetter{
		ID:                d.ID,
		OriginalTopic:     d.OriginalTopic,
		OriginalPartition: d.OriginalPartition,
		OriginalOffset:    d.OriginalOffset,
		Key:               d.Key,
		Payload:           d.Payload,
		PayloadTruncated:  d.PayloadTruncated,
		OriginalSize:      d.OriginalSize,
		OriginalSHA256:    d.OriginalSHA256,
		Headers:           headers,
		TenantID:          d.TenantID,
		Stage:             d.Stage,
		Error:             d.Error,
		ErrorClass:        d.ErrorClass,
		Attempts:          int(d.Attempts),
		MessageID:         d.MessageID,
		Status:            DeadLetterStatus(d.Status),
		FirstFailureTime:  d.FirstFailureTime.UTC(),
		LastFailureTime:   d.LastFailureTime.UTC(),
		NextRetryTime:     storeTimePtr(d.NextRetryTime),
		ClaimOwner:        d.ClaimOwner,
		LeaseUntil:        storeTimePtr(d.LeaseUntil),
		ClaimedFrom:       DeadLetterStatus(d.ClaimedFrom),
		Retries:           int(d.Retries),
		LastRetryTime:     storeTimePtr(d.LastRetryTime),
		Note:              d.Note,
		LastActor:         d.LastActor,
		PurgeTime:         storeTimePtr(d.PurgeTime),
		CreateTime:        d.CreateTime.UTC(),
		UpdateTime:        d.UpdateTime.UTC(),
		Version:           d.Version,
		Seq:               d.Seq,
	}
}

// claimDoc is a fence of the dead_letter_claims collection: _id "<dead letter id>@<version>".
type claimDoc struct {
	ID         string    `bson:"_id"`
	Token      string    `bson:"token"`
	ExpireTime time.Time `bson:"expire_time"`
}

// fenceTTL bounds how long a fence left behind by a crashed process blocks its entry. A fence normally
// lives for three quick operations (read, update, delete).
const fenceTTL = time.Minute

// DeadLetters is the repository of the dead-letter queue.
//
// Every status change of an existing entry (claim, retried, released, parked, purged one by one) is a
// fenced transition from the version the caller read:
//
//  1. insert {_id: "<id>@<version>"} into dead_letter_claims — a unique _id, so exactly one caller
//     wins the version, on MongoDB and on FerretDB alike (a duplicate key means someone else holds it);
//  2. read the entry again: if its version moved on, the caller read a stale copy and loses;
//  3. update it with the filter {_id, version} and bump the version (atomic on MongoDB);
//  4. delete the fence.
//
// Why not a bare findOneAndUpdate: FerretDB (devstack, tests) implements it as a query followed by an
// unconditional replace, so two replicas claiming at the same moment both "win" (measured: every round of
// four concurrent claimers). The fence makes the winner unique there too, and losers never write the entry.
// A late caller that inserts the fence after the winner deleted it sees the bumped version in step 2. A
// fence left by a crash expires after fenceTTL.
type DeadLetters struct {
	coll   *mongo.Collection
	claims *mongo.Collection
	clock  func() time.Time
	guard  *Guard // retry policy and circuit breaker; nil runs calls directly
}

// NewDeadLetters returns the repository over db. It does no I/O; call EnsureIndexes once at start-up.
func NewDeadLetters(db *mongo.Database) *DeadLetters {
	return &DeadLetters{
		coll:   db.Collection(DeadLettersCollection),
		claims: db.Collection(DeadLetterClaimsCollection),
		clock:  time.Now,
	}
}

// SetClock replaces the clock (tests). Call it before the repository is used.
func (r *DeadLetters) SetClock(now func() time.Time) { r.clock = now }

// SetGuard runs the repository's MongoDB calls through g (retry policy and circuit breaker): reads
// through g.Read, writes through g.Write. Call it before the repository is used.
func (r *DeadLetters) SetGuard(g *Guard) { r.guard = g }

// Now returns the repository's clock as stored (UTC, milliseconds).
func (r *DeadLetters) Now() time.Time { return storeTime(r.clock()) }

// deadLetterIndexes are the indexes of the dead_letters collection.
var deadLetterIndexes = []bson.D{
	// List, newest first, keyset by seq; the scheduler's queries.
	{{Key: "seq", Value: -1}},
	// List by tenant and by status (the operators' usual filters), and Stats' oldest pending entry.
	{{Key: "tenant_id", Value: 1}, {Key: "seq", Value: -1}},
	{{Key: "status", Value: 1}, {Key: "seq", Value: -1}},
	// The scheduler's due entries.
	{{Key: "due_time", Value: 1}},
}

// EnsureIndexes creates the dead-letter indexes; idempotent.
func (r *DeadLetters) EnsureIndexes(ctx context.Context) error {
	for _, keys := range deadLetterIndexes {
		if _, err := r.coll.Indexes().CreateOne(ctx, mongo.IndexModel{Keys: keys}); err != nil {
			return fmt.Errorf("ensure index %v on %s: %w", keys, DeadLettersCollection, err)
		}
	}
	return nil
}

// InsertResult is the outcome of one dead letter of InsertMany.
type InsertResult struct {
	// Duplicate: an entry with this id is already stored (a redelivered DLQ record). It counts as success.
	Duplicate bool
	// Err is this item's own failure (the server refused the document); nil on success.
	Err error
}

// InsertMany stores new dead letters with one unordered insert (_id = ID), so a redelivered record is a
// duplicate, never a second entry. err reports a failure of the whole command (which items landed is
// unknown: insert them all again; those that did are duplicates then). Otherwise there is one result per
// item. Defaults: Status pending_retry, CreateTime and UpdateTime now, Version 1, Seq from
// LastFailureTime; DueTime follows NextRetryTime for a pending entry. ID is required.
func (r *DeadLetters) InsertMany(ctx context.Context, dls []DeadLetter) ([]InsertResult, error) {
	if len(dls) == 0 {
		return nil, nil
	}
	now := r.Now()
	docs := make([]any, len(dls))
	for i, d := range dls {
		if d.ID == "" {
			return nil, fmt.Errorf("insert dead letters: item %d: %w", i, errMissing("id"))
		}
		docs[i] = newDeadLetterDoc(d, now)
	}
	results := make([]InsertResult, len(dls))
	err := r.guard.Write(ctx, func(ctx context.Context) error {
		_, err := r.coll.InsertMany(ctx, docs, options.InsertMany().SetOrdered(false))
		return err
	})
	if err == nil {
		return results, nil
	}
	var bwe mongo.BulkWriteException
	if !errors.As(err, &bwe) || len(bwe.WriteErrors) == 0 || bwe.WriteConcernError != nil {
		return nil, fmt.Errorf("insert dead letters: %w", err)
	}
	for _, we := range bwe.WriteErrors {
		if we.Index < 0 || we.Index >= len(results) {
			continue
		}
		if mongo.IsDuplicateKeyError(we.WriteError) {
			results[we.Index].Duplicate = true
		} else {
			results[we.Index].Err = fmt.Errorf("insert dead letter %s: %w", dls[we.Index].ID, we.WriteError)
		}
	}
	return results, nil
}

func newDeadLetterDoc(d DeadLetter, now time.Time) deadLetterDoc {
	if d.Status == "" {
		d.Status = DeadLetterPendingRetry
	}
	if d.LastFailureTime.IsZero() {
		d.LastFailureTime = now
	}
	if d.FirstFailureTime.IsZero() {
		d.FirstFailureTime = d.LastFailureTime
	}
	if d.CreateTime.IsZero() {
		d.CreateTime = now
	}
	if d.UpdateTime.IsZero() {
		d.UpdateTime = d.CreateTime
	}
	if d.Version == 0 {
		d.Version = 1
	}
	if d.Seq == "" {
		d.Seq = ulid.MustNew(ulid.Timestamp(d.LastFailureTime), rand.Reader).String()
	}
	var headers []headerPair
	for _, h := range d.Headers {
		headers = append(headers, headerPair{K: h.Key, V: h.Value})
	}
	doc := deadLetterDoc{
		ID:                d.ID,
		Seq:               d.Seq,
		OriginalTopic:     d.OriginalTopic,
		OriginalPartition: d.OriginalPartition,
		OriginalOffset:    d.OriginalOffset,
		Key:               d.Key,
		Payload:           d.Payload,
		PayloadTruncated:  d.PayloadTruncated,
		OriginalSize:      d.OriginalSize,
		OriginalSHA256:    d.OriginalSHA256,
		Headers:           headers,
		TenantID:          d.TenantID,
		Stage:             d.Stage,
		Error:             d.Error,
		ErrorClass:        d.ErrorClass,
		Attempts:          int64(d.Attempts),
		MessageID:         d.MessageID,
		Status:            string(d.Status),
		FirstFailureTime:  storeTime(d.FirstFailureTime),
		LastFailureTime:   storeTime(d.LastFailureTime),
		NextRetryTime:     storeTimePtr(d.NextRetryTime),
		ClaimOwner:        d.ClaimOwner,
		LeaseUntil:        storeTimePtr(d.LeaseUntil),
		ClaimedFrom:       string(d.ClaimedFrom),
		Retries:           int64(d.Retries),
		LastRetryTime:     storeTimePtr(d.LastRetryTime),
		Note:              d.Note,
		LastActor:         d.LastActor,
		PurgeTime:         storeTimePtr(d.PurgeTime),
		CreateTime:        storeTime(d.CreateTime),
		UpdateTime:        storeTime(d.UpdateTime),
		Version:           d.Version,
	}
	switch d.Status {
	case DeadLetterPendingRetry:
		doc.DueTime = doc.NextRetryTime
		if doc.DueTime == nil {
			doc.DueTime = &now
		}
	case DeadLetterRetrying:
		doc.DueTime = doc.LeaseUntil
	}
	return doc
}

// Get returns one dead letter; ErrNotFound if there is none with that id.
func (r *DeadLetters) Get(ctx context.Context, id string) (DeadLetter, error) {
	doc, err := r.get(ctx, id)
	if err != nil {
		return DeadLetter{}, fmt.Errorf("get dead letter %s: %w", id, err)
	}
	return doc.deadLetter(), nil
}

func (r *DeadLetters) get(ctx context.Context, id string) (deadLetterDoc, error) {
	var doc deadLetterDoc
	err := r.guard.Read(ctx, func(ctx context.Context) error {
		return r.coll.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&doc)
	})
	return doc, notFound(err)
}

// DeadLetterFilter selects dead letters; zero fields match everything.
type DeadLetterFilter struct {
	TenantID string
	Stage    string
	// Statuses: any of these (empty: every status).
	Statuses []DeadLetterStatus
	// ErrorContains: the error message contains this text, case-insensitively.
	ErrorContains string
	ErrorClass    string
}

// IsZero reports whether the filter matches everything.
func (f DeadLetterFilter) IsZero() bool {
	return f.TenantID == "" && f.Stage == "" && len(f.Statuses) == 0 && f.ErrorContains == "" && f.ErrorClass == ""
}

func (f DeadLetterFilter) query() bson.D {
	q := bson.D{}
	if f.TenantID != "" {
		q = append(q, bson.E{Key: "tenant_id", Value: f.TenantID})
	}
	if f.Stage != "" {
		q = append(q, bson.E{Key: "stage", Value: f.Stage})
	}
	switch len(f.Statuses) {
	case 0:
	case 1:
		q = append(q, bson.E{Key: "status", Value: string(f.Statuses[0])})
	default:
		in := make(bson.A, len(f.Statuses))
		for i, s := range f.Statuses {
			in[i] = string(s)
		}
		q = append(q, bson.E{Key: "status", Value: bson.D{{Key: "$in", Value: in}}})
	}
	if f.ErrorClass != "" {
		q = append(q, bson.E{Key: "error_class", Value: f.ErrorClass})
	}
	if f.ErrorContains != "" {
		q = append(q, bson.E{Key: "error", Value: bson.D{
			{Key: "$regex", Value: regexp.QuoteMeta(f.ErrorContains)}, {Key: "$options", Value: "i"},
		}})
	}
	return q
}

// scope fingerprints the filter for page tokens.
func (f DeadLetterFilter) scope() string {
	statuses := make([]string, len(f.Statuses))
	for i, s := range f.Statuses {
		statuses[i] = string(s)
	}
	slices.Sort(statuses)
	return tokenScope(f.TenantID, f.Stage, strings.Join(statuses, ","), f.ErrorContains, f.ErrorClass)
}

const tokenDeadLetters = "d"

// List returns the dead letters matching f, newest failure first (by Seq), keyset-paginated on Seq: entries
// stored between page fetches never shift later pages. pageSize goes through PageSize; the next page token
// is "" on the last page. ErrBadPageToken for a token issued for another list or filter.
func (r *DeadLetters) List(ctx context.Context, f DeadLetterFilter, pageSize int, pageToken string) ([]DeadLetter, string, error) {
	size := PageSize(pageSize)
	scope := f.scope()
	after, err := decodePageToken(pageToken, tokenDeadLetters, scope)
	if err != nil {
		return nil, "", fmt.Errorf("list dead letters: %w", err)
	}
	docs, err := r.page(ctx, f.query(), after, size)
	if err != nil {
		return nil, "", fmt.Errorf("list dead letters: %w", err)
	}
	next := ""
	if len(docs) > size {
		docs = docs[:size]
		next = encodePageToken(tokenDeadLetters, scope, docs[size-1].Seq)
	}
	out := make([]DeadLetter, len(docs))
	for i, d := range docs {
		out[i] = d.deadLetter()
	}
	return out, next, nil
}

// page returns up to size+1 documents matching q with seq < after (all when after is ""), seq descending.
func (r *DeadLetters) page(ctx context.Context, q bson.D, after string, size int) ([]deadLetterDoc, error) {
	if after != "" {
		q = append(slices.Clone(q), bson.E{Key: "seq", Value: bson.D{{Key: "$lt", Value: after}}})
	}
	var docs []deadLetterDoc
	if err := r.guard.Read(ctx, func(ctx context.Context) error {
		docs = nil
		cur, err := r.coll.Find(ctx, q, options.Find().SetSort(bson.D{{Key: "seq", Value: -1}}).SetLimit(int64(size)+1))
		if err != nil {
			return err
		}
		return cur.All(ctx, &docs)
	}); err != nil {
		return nil, err
	}
	return docs, nil
}

// Each calls fn for every dead letter matching f, newest first, a page of batch at a time. It walks a
// keyset (entries stored meanwhile are newer and not visited; entries fn changes are not visited twice),
// so fn may change the status of what it is given. It stops at fn's first error.
func (r *DeadLetters) Each(ctx context.Context, f DeadLetterFilter, batch int, fn func([]DeadLetter) error) error {
	batch = PageSize(batch)
	after := ""
	for {
		docs, err := r.page(ctx, f.query(), after, batch)
		if err != nil {
			return fmt.Errorf("walk dead letters: %w", err)
		}
		more := len(docs) > batch
		if more {
			docs = docs[:batch]
		}
		if len(docs) == 0 {
			return nil
		}
		out := make([]DeadLetter, len(docs))
		for i, d := range docs {
			out[i] = d.deadLetter()
		}
		if err := fn(out); err != nil {
			return err
		}
		if !more {
			return nil
		}
		after = docs[len(docs)-1].Seq
	}
}

// Due returns up to limit entries the scheduler must handle now: pending retries whose time has come and
// claims whose lease expired (their holder died), soonest first.
func (r *DeadLetters) Due(ctx context.Context, limit int) ([]DeadLetter, error) {
	now := r.Now()
	var docs []deadLetterDoc
	if err := r.guard.Read(ctx, func(ctx context.Context) error {
		docs = nil
		cur, err := r.coll.Find(ctx, bson.D{{Key: "due_time", Value: bson.D{{Key: "$lte", Value: now}}}},
			options.Find().SetSort(bson.D{{Key: "due_time", Value: 1}}).SetLimit(int64(limit)))
		if err != nil {
			return err
		}
		return cur.All(ctx, &docs)
	}); err != nil {
		return nil, fmt.Errorf("due dead letters: %w", err)
	}
	out := make([]DeadLetter, len(docs))
	for i, d := range docs {
		out[i] = d.deadLetter()
	}
	return out, nil
}

// Claim is what a retrier asks for.
type Claim struct {
	// Owner names the claiming process (a replica's instance id); it is stored on the entry.
	Owner string
	// Lease is how long the claim holds; after it another retrier may take the entry over.
	Lease time.Duration
	// OnlyDue: claim only a due pending retry or an expired claim (the scheduler). Otherwise any entry that
	// is neither purged nor held by a live claim (an operator's retry).
	OnlyDue bool
	// Actor is recorded as LastActor.
	Actor string
}

// Claim takes d (as read, at its version) for republishing: status retrying, with the claim's owner and
// lease. Errors: ErrConflict when another caller changed or holds the entry (read it again);
// ErrDeadLetterPurged; ErrDeadLetterBusy (a live claim of someone else); ErrDeadLetterNotDue (OnlyDue and
// the entry is not due); ErrNotFound.
func (r *DeadLetters) Claim(ctx context.Context, d DeadLetter, c Claim) (DeadLetter, error) {
	if c.Owner == "" || c.Lease <= 0 {
		return DeadLetter{}, fmt.Errorf("claim dead letter %s: %w", d.ID, errMissing("owner or lease"))
	}
	return r.transition(ctx, "claim", d.ID, d.Version, func(cur *deadLetterDoc, now time.Time) (bson.D, bson.D, error) {
		status := DeadLetterStatus(cur.Status)
		expired := status == DeadLetterRetrying && (cur.LeaseUntil == nil || !cur.LeaseUntil.After(now))
		switch {
		case status == DeadLetterPurged:
			return nil, nil, ErrDeadLetterPurged
		case status == DeadLetterRetrying && !expired:
			return nil, nil, ErrDeadLetterBusy
		case c.OnlyDue && !expired && (status != DeadLetterPendingRetry || cur.DueTime == nil || cur.DueTime.After(now)):
			return nil, nil, ErrDeadLetterNotDue
		}
		from := status
		if status == DeadLetterRetrying {
			from = DeadLetterStatus(cur.ClaimedFrom) // a claim taken over keeps the original intent
		}
		lease := now.Add(c.Lease)
		return bson.D{
			{Key: "status", Value: string(DeadLetterRetrying)},
			{Key: "claim_owner", Value: c.Owner},
			{Key: "lease_until", Value: lease},
			{Key: "due_time", Value: lease},
			{Key: "claimed_from", Value: string(from)},
			{Key: "last_actor", Value: c.Actor},
			{Key: "update_time", Value: now},
		}, nil, nil
	})
}

// holds checks that cur is still claimed by the holder of claimed.
func holds(cur *deadLetterDoc, claimed DeadLetter) error {
	if DeadLetterStatus(cur.Status) != DeadLetterRetrying || cur.ClaimOwner != claimed.ClaimOwner {
		return fmt.Errorf("claim of %s lost (now %s by %q): %w", cur.ID, cur.Status, cur.ClaimOwner, ErrConflict)
	}
	return nil
}

var unsetClaim = bson.D{
	{Key: "claim_owner", Value: ""}, {Key: "lease_until", Value: ""}, {Key: "claimed_from", Value: ""},
}

// MarkRetried records that the claimed entry was republished: status retried, Retries incremented.
// ErrConflict if the claim was lost (its lease expired and another retrier took it).
func (r *DeadLetters) MarkRetried(ctx context.Context, claimed DeadLetter, actor string) (DeadLetter, error) {
	return r.transition(ctx, "mark retried", claimed.ID, claimed.Version, func(cur *deadLetterDoc, now time.Time) (bson.D, bson.D, error) {
		if err := holds(cur, claimed); err != nil {
			return nil, nil, err
		}
		return bson.D{
				{Key: "status", Value: string(DeadLetterRetried)},
				{Key: "retries", Value: cur.Retries + 1},
				{Key: "last_retry_time", Value: now},
				{Key: "last_actor", Value: actor},
				{Key: "note", Value: ""},
				{Key: "update_time", Value: now},
			}, append(slices.Clone(unsetClaim),
				bson.E{Key: "due_time", Value: ""}, bson.E{Key: "next_retry_time", Value: ""}),
			nil
	})
}

// Release ends a claim without a republish: back to pending_retry due at next (next nil: the entry's
// earlier retry time), or to parked when status is DeadLetterParked. note says why.
func (r *DeadLetters) Release(ctx context.Context, claimed DeadLetter, status DeadLetterStatus, next *time.Time, note, actor string) (DeadLetter, error) {
	if status != DeadLetterPendingRetry && status != DeadLetterParked && status != DeadLetterRetried {
		return DeadLetter{}, fmt.Errorf("release dead letter %s to %q: not a resting status", claimed.ID, status)
	}
	return r.transition(ctx, "release", claimed.ID, claimed.Version, func(cur *deadLetterDoc, now time.Time) (bson.D, bson.D, error) {
		if err := holds(cur, claimed); err != nil {
			return nil, nil, err
		}
		set := bson.D{
			{Key: "status", Value: string(status)},
			{Key: "note", Value: note},
			{Key: "last_actor", Value: actor},
			{Key: "update_time", Value: now},
		}
		unset := slices.Clone(unsetClaim)
		if status == DeadLetterPendingRetry {
			due := now
			switch {
			case next != nil:
				due = storeTime(*next)
			case cur.NextRetryTime != nil:
				due = *cur.NextRetryTime
			}
			set = append(set, bson.E{Key: "next_retry_time", Value: due}, bson.E{Key: "due_time", Value: due})
		} else {
			unset = append(unset, bson.E{Key: "due_time", Value: ""}, bson.E{Key: "next_retry_time", Value: ""})
		}
		return set, unset, nil
	})
}

// Purge marks one dead letter purged and drops its payload bytes (the rest stays as an audit trail). It
// returns the entry as stored and whether this call purged it: purging a purged entry returns it
// unchanged. ErrDeadLetterBusy while a retrier holds a live claim; ErrNotFound.
func (r *DeadLetters) Purge(ctx context.Context, id, actor string) (DeadLetter, bool, error) {
	for attempt := 0; ; attempt++ {
		cur, err := r.get(ctx, id)
		if err != nil {
			return DeadLetter{}, false, fmt.Errorf("purge dead letter %s: %w", id, err)
		}
		if DeadLetterStatus(cur.Status) == DeadLetterPurged {
			return cur.deadLetter(), false, nil
		}
		d, err := r.transition(ctx, "purge", id, cur.Version, func(cur *deadLetterDoc, now time.Time) (bson.D, bson.D, error) {
			status := DeadLetterStatus(cur.Status)
			if status == DeadLetterRetrying && cur.LeaseUntil != nil && cur.LeaseUntil.After(now) {
				return nil, nil, ErrDeadLetterBusy
			}
			return bson.D{
					{Key: "status", Value: string(DeadLetterPurged)},
					{Key: "purge_time", Value: now},
					{Key: "last_actor", Value: actor},
					{Key: "update_time", Value: now},
				}, append(slices.Clone(unsetClaim),
					bson.E{Key: "payload", Value: ""}, bson.E{Key: "due_time", Value: ""}, bson.E{Key: "next_retry_time", Value: ""}),
				nil
		})
		if errors.Is(err, ErrConflict) && attempt < 3 {
			continue // changed between our read and the fence: read it again
		}
		return d, err == nil, err
	}
}

// PurgeMatching marks every dead letter matching f purged (payload dropped), except those already purged
// and those a retrier holds right now, with one multi-document update; it returns how many it purged.
// On MongoDB each document's update is atomic and bumps its version, so a retrier that read it before
// loses its fenced transition. (On FerretDB, where updates are read-then-replace, a purge racing with a
// claim in the same millisecond may lose to it; the devstack runs one scheduler.)
func (r *DeadLetters) PurgeMatching(ctx context.Context, f DeadLetterFilter, actor string) (int64, error) {
	now := r.Now()
	q := f.query()
	q = append(q,
		bson.E{Key: "$and", Value: bson.A{
			bson.D{{Key: "status", Value: bson.D{{Key: "$ne", Value: string(DeadLetterPurged)}}}},
			bson.D{{Key: "$or", Value: bson.A{
				bson.D{{Key: "status", Value: bson.D{{Key: "$ne", Value: string(DeadLetterRetrying)}}}},
				bson.D{{Key: "lease_until", Value: bson.D{{Key: "$lte", Value: now}}}},
			}}},
		}})
	var res *mongo.UpdateResult
	err := r.guard.Write(ctx, func(ctx context.Context) error {
		var err error
		res, err = r.coll.UpdateMany(ctx, q, bson.D{
			{Key: "$set", Value: bson.D{
				{Key: "status", Value: string(DeadLetterPurged)},
				{Key: "purge_time", Value: now},
				{Key: "last_actor", Value: actor},
				{Key: "update_time", Value: now},
			}},
			{Key: "$unset", Value: append(slices.Clone(unsetClaim),
				bson.E{Key: "payload", Value: ""}, bson.E{Key: "due_time", Value: ""}, bson.E{Key: "next_retry_time", Value: ""})},
			{Key: "$inc", Value: bson.D{{Key: "version", Value: int64(1)}}},
		})
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("purge dead letters: %w", err)
	}
	return res.ModifiedCount, nil
}

// transition applies one fenced status change to the entry id at version (see DeadLetters). decide sees
// the entry as stored under the fence and returns the fields to $set and $unset, or an error to give up.
func (r *DeadLetters) transition(ctx context.Context, what, id string, version int64, decide func(cur *deadLetterDoc, now time.Time) (set, unset bson.D, err error)) (DeadLetter, error) {
	fail := func(err error) (DeadLetter, error) {
		return DeadLetter{}, fmt.Errorf("%s dead letter %s: %w", what, id, err)
	}
	now := r.Now()
	release, err := r.fence(ctx, id+"@"+strconv.FormatInt(version, 10), now)
	if err != nil {
		return fail(err)
	}
	defer release()
	cur, err := r.get(ctx, id)
	if err != nil {
		return fail(err)
	}
	if cur.Version != version {
		return fail(fmt.Errorf("version %d, read %d: %w", cur.Version, version, ErrConflict))
	}
	set, unset, err := decide(&cur, now)
	if err != nil {
		return fail(err)
	}
	update := bson.D{
		{Key: "$set", Value: append(set, bson.E{Key: "version", Value: version + 1})},
	}
	if len(unset) > 0 {
		update = append(update, bson.E{Key: "$unset", Value: unset})
	}
	var doc deadLetterDoc
	err = r.guard.Write(ctx, func(ctx context.Context) error {
		return r.coll.FindOneAndUpdate(ctx, bson.D{{Key: "_id", Value: id}, {Key: "version", Value: version}}, update,
			options.FindOneAndUpdate().SetReturnDocument(options.After)).Decode(&doc)
	})
	if errors.Is(err, mongo.ErrNoDocuments) {
		return fail(fmt.Errorf("changed during the update: %w", ErrConflict))
	}
	if err != nil {
		return fail(err)
	}
	return doc.deadLetter(), nil
}

// fence inserts the claim document fenceID; ErrConflict if someone else holds it. The returned function
// deletes it (best effort: an orphan expires after fenceTTL).
func (r *DeadLetters) fence(ctx context.Context, fenceID string, now time.Time) (func(), error) {
	token := randomToken()
	for attempt := 0; attempt < 2; attempt++ {
		err := r.guard.Write(ctx, func(ctx context.Context) error {
			_, err := r.claims.InsertOne(ctx, claimDoc{ID: fenceID, Token: token, ExpireTime: now.Add(fenceTTL)})
			return err
		})
		if err == nil {
			return func() {
				dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				defer cancel()
				_ = r.guard.Write(dctx, func(ctx context.Context) error {
					_, err := r.claims.DeleteOne(ctx, bson.D{{Key: "_id", Value: fenceID}})
					return err
				})
			}, nil
		}
		if !mongo.IsDuplicateKeyError(err) {
			return nil, fmt.Errorf("claim: %w", err)
		}
		var held claimDoc
		if err := r.guard.Read(ctx, func(ctx context.Context) error {
			return r.claims.FindOne(ctx, bson.D{{Key: "_id", Value: fenceID}}).Decode(&held)
		}); err != nil {
			if errors.Is(err, mongo.ErrNoDocuments) {
				continue // released meanwhile: try once more
			}
			return nil, fmt.Errorf("claim: %w", err)
		}
		if held.ExpireTime.After(now) {
			return nil, fmt.Errorf("held by another retrier: %w", ErrConflict)
		}
		// Left behind by a crash: remove exactly that one (its token), then try once more.
		if err := r.guard.Write(ctx, func(ctx context.Context) error {
			_, err := r.claims.DeleteOne(ctx, bson.D{{Key: "_id", Value: fenceID}, {Key: "token", Value: held.Token}})
			return err
		}); err != nil {
			return nil, fmt.Errorf("claim: remove expired fence: %w", err)
		}
	}
	return nil, fmt.Errorf("held by another retrier: %w", ErrConflict)
}

func randomToken() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// DeadLetterStats are counts over the dead letters (of one tenant, or all).
type DeadLetterStats struct {
	Total        int64
	ByStatus     map[DeadLetterStatus]int64
	ByStage      map[string]int64
	ByErrorClass map[string]int64
	// OldestPending is the LastFailureTime of the oldest entry waiting for a retry (pending_retry or
	// retrying); nil when there is none.
	OldestPending *time.Time
}

// Stats counts the dead letters of tenantID ("" for all) by status, stage and error class.
func (r *DeadLetters) Stats(ctx context.Context, tenantID string) (DeadLetterStats, error) {
	match := bson.D{}
	if tenantID != "" {
		match = append(match, bson.E{Key: "tenant_id", Value: tenantID})
	}
	st := DeadLetterStats{ByStatus: map[DeadLetterStatus]int64{}, ByStage: map[string]int64{}, ByErrorClass: map[string]int64{}}
	for _, field := range []string{"status", "stage", "error_class"} {
		counts, err := r.countBy(ctx, match, field)
		if err != nil {
			return DeadLetterStats{}, fmt.Errorf("dead letter stats by %s: %w", field, err)
		}
		for k, n := range counts {
			switch field {
			case "status":
				st.ByStatus[DeadLetterStatus(k)] = n
				st.Total += n
			case "stage":
				st.ByStage[k] = n
			default:
				st.ByErrorClass[k] = n
			}
		}
	}
	pending := append(slices.Clone(match), bson.E{Key: "status", Value: bson.D{{Key: "$in", Value: bson.A{string(DeadLetterPendingRetry), string(DeadLetterRetrying)}}}})
	var oldest deadLetterDoc
	err := r.guard.Read(ctx, func(ctx context.Context) error {
		return r.coll.FindOne(ctx, pending, options.FindOne().
			SetSort(bson.D{{Key: "last_failure_time", Value: 1}}).
			SetProjection(bson.D{{Key: "last_failure_time", Value: 1}})).Decode(&oldest)
	})
	switch {
	case errors.Is(err, mongo.ErrNoDocuments):
	case err != nil:
		return DeadLetterStats{}, fmt.Errorf("dead letter stats: oldest pending: %w", err)
	default:
		t := oldest.LastFailureTime.UTC()
		st.OldestPending = &t
	}
	return st, nil
}

// countBy groups the documents matching match by field and counts them.
func (r *DeadLetters) countBy(ctx context.Context, match bson.D, field string) (map[string]int64, error) {
	var rows []struct {
		ID any   `bson:"_id"`
		N  int64 `bson:"n"`
	}
	if err := r.guard.Read(ctx, func(ctx context.Context) error {
		rows = nil
		cur, err := r.coll.Aggregate(ctx, mongo.Pipeline{
			{{Key: "$match", Value: match}},
			{{Key: "$group", Value: bson.D{{Key: "_id", Value: "$" + field}, {Key: "n", Value: bson.D{{Key: "$sum", Value: 1}}}}}},
		})
		if err != nil {
			return err
		}
		return cur.All(ctx, &rows)
	}); err != nil {
		return nil, err
	}
	out := make(map[string]int64, len(rows))
	for _, row := range rows {
		k, _ := row.ID.(string)
		out[k] += row.N
	}
	return out, nil
}
