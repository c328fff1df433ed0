package store

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/oklog/ulid/v2"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
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
// contentBytes is about what the entry weighs in a response: its byte fields count twice (REST sends them
// base64, a third larger), its strings once, plus a margin for the fixed-size fields.
func (d deadLetterDoc) contentBytes() int {
	n := 2*(len(d.Key)+len(d.Payload)) + len(d.ID) + len(d.Seq) + len(d.OriginalTopic) + len(d.TenantID) +
		len(d.Stage) + len(d.Error) + len(d.ErrorClass) + len(d.MessageID) + len(d.Note) + 128
	for _, h := range d.Headers {
		n += len(h.K) + 2*len(h.V)
	}
	return n
}

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

// Guard returns the guard the repository's calls run through (nil: none).
func (r *DeadLetters) Guard() *Guard { return r.guard }

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

// EnsureIndexes creates the dead-letter indexes the collection lacks (see Store.EnsureIndexes).
func (r *DeadLetters) EnsureIndexes(ctx context.Context) error {
	specs := make([]indexSpec, len(deadLetterIndexes))
	for i, keys := range deadLetterIndexes {
		specs[i] = indexSpec{collection: DeadLettersCollection, keys: keys}
	}
	return ensureIndexes(ctx, r.coll, specs)
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
