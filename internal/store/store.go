package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// Collection names.
const (
	ConversationsCollection = "conversations"
	MembershipsCollection   = "memberships"
	MessagesCollection      = "messages"
)

// Store groups the tenant-scoped repositories over one database. It holds no policy: permission checks
// belong to its callers. Every read and write is filtered by tenant id.
type Store struct {
	Conversations *Conversations
	Members       *Members
	Messages      *Messages

	core *storeCore
}

// storeCore is what the repositories share: the collections and the clock.
type storeCore struct {
	db            *mongo.Database
	conversations *mongo.Collection
	memberships   *mongo.Collection
	messages      *mongo.Collection
	clock         func() time.Time
	guard         *Guard // retry policy and circuit breaker; nil runs calls directly
}

// New returns the repositories over db. It does no I/O; call EnsureIndexes once at start-up.
func New(db *mongo.Database) *Store {
	core := &storeCore{
		db:            db,
		conversations: db.Collection(ConversationsCollection),
		memberships:   db.Collection(MembershipsCollection),
		messages:      db.Collection(MessagesCollection),
		clock:         time.Now,
	}
	return &Store{
		Conversations: &Conversations{core: core},
		Members:       &Members{core: core},
		Messages:      &Messages{core: core},
		core:          core,
	}
}

// SetClock replaces the clock used for create, update and delete times the callers do not pass in
// (tests). Call it before the store is used.
func (s *Store) SetClock(now func() time.Time) { s.core.clock = now }

// SetGuard runs the repositories' MongoDB calls through g (retry policy and circuit breaker). Call it
// before the store is used.
func (s *Store) SetGuard(g *Guard) { s.core.guard = g }

// Guard returns the guard the repositories' calls run through (nil: none).
func (s *Store) Guard() *Guard { return s.core.guard }

// Database returns the database the store works on.
func (s *Store) Database() *mongo.Database { return s.core.db }

// now returns the clock's time as MongoDB stores it: UTC, millisecond precision, so what a write
// returns equals what a later read returns.
func (c *storeCore) now() time.Time { return storeTime(c.clock()) }

func storeTime(t time.Time) time.Time { return t.UTC().Truncate(time.Millisecond) }

func storeTimePtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	v := storeTime(*t)
	return &v
}

// indexSpec is one index of EnsureIndexes. Names are left to the server's default (keys joined with
// their directions), so an index another component declares with the same keys is the same index.
type indexSpec struct {
	collection string
	keys       bson.D
	unique     bool
	// sparse: only the documents that have the keys' fields are indexed. Not compared with what the
	// server lists (FerretDB does not report it); the keys name the index.
	sparse bool
	// ttl: a TTL index (expireAfterSeconds 0: a document goes once the time in its one key has passed).
	// Housekeeping only, never relied on for correctness: a server without TTL indexes (FerretDB answers
	// NotImplemented) gets none, and EnsureIndexes goes on.
	ttl bool
}

// Indexes the repositories rely on. Changing the keys or options of an existing one needs a migration
// (drop it first): MongoDB refuses to redefine an index under the same name.
var indexSpecs = []indexSpec{
	// Get, Update, Archive by tenant and id; ListForUser's $in lookup.
	{collection: ConversationsCollection, keys: bson.D{{Key: "tenant_id", Value: 1}, {Key: "_id", Value: 1}}},
	// One membership per user and conversation; Members.List (keyset by user id); CountOwners.
	{collection: MembershipsCollection, keys: bson.D{{Key: "tenant_id", Value: 1}, {Key: "conversation_id", Value: 1}, {Key: "user_id", Value: 1}}, unique: true},
	// ListForUser (keyset by conversation id, walked backwards for newest first).
	{collection: MembershipsCollection, keys: bson.D{{Key: "tenant_id", Value: 1}, {Key: "user_id", Value: 1}, {Key: "conversation_id", Value: 1}}},
	// Newest first within a conversation, keyset by id: List, ListAfter; UnreadCounts (a range after a cursor).
	{collection: MessagesCollection, keys: bson.D{{Key: "tenant_id", Value: 1}, {Key: "conversation_id", Value: 1}, {Key: "_id", Value: -1}}},
	// Messages.ListThread and RecountThreads: a thread's replies, newest first. Sparse: only replies have a
	// thread_id, so storing a top-level message does not touch it (List, thread_id null, walks the index
	// above and skips the replies).
	{collection: MessagesCollection, keys: bson.D{{Key: "tenant_id", Value: 1}, {Key: "conversation_id", Value: 1}, {Key: "thread_id", Value: 1}, {Key: "_id", Value: -1}}, sparse: true},
	// Membership locks and takeover fences a crashed process left behind, removed once expired (a lock is
	// found by _id alone; an expired one is taken over whether or not this index removed it).
	{collection: MembershipLocksCollection, keys: bson.D{{Key: "expire_time", Value: 1}}, ttl: true},
}

// EnsureIndexes creates the indexes the repositories need and that the database does not have yet. On
// a warm store (every index there, the usual case: they are created once per deployment, by the first
// process to start) it only lists each collection's indexes, so a restarting process reaches its first
// write quickly and never races an index build. Creating an existing index is a no-op anyway, so
// concurrent first starts are safe.
func (s *Store) EnsureIndexes(ctx context.Context) error {
	byColl := map[string][]indexSpec{}
	var order []string
	for _, spec := range indexSpecs {
		if _, ok := byColl[spec.collection]; !ok {
			order = append(order, spec.collection)
		}
		byColl[spec.collection] = append(byColl[spec.collection], spec)
	}
	for _, coll := range order {
		if err := ensureIndexes(ctx, s.core.db.Collection(coll), byColl[coll]); err != nil {
			return err
		}
	}
	return nil
}

// ensureIndexes creates the specs coll lacks (same keys, same uniqueness).
func ensureIndexes(ctx context.Context, coll *mongo.Collection, specs []indexSpec) error {
	cur, err := coll.Indexes().List(ctx)
	if err != nil {
		return fmt.Errorf("list indexes of %s: %w", coll.Name(), err)
	}
	var existing []struct {
		Key                bson.Raw `bson:"key"`
		Unique             bool     `bson:"unique"`
		ExpireAfterSeconds *int64   `bson:"expireAfterSeconds"`
	}
	if err := cur.All(ctx, &existing); err != nil {
		return fmt.Errorf("list indexes of %s: %w", coll.Name(), err)
	}
	for _, spec := range specs {
		want, err := bson.Marshal(spec.keys)
		if err != nil {
			return fmt.Errorf("index %v: %w", spec.keys, err)
		}
		found := false
		for _, e := range existing {
			if bytes.Equal(e.Key, want) && e.Unique == spec.unique && (e.ExpireAfterSeconds != nil) == spec.ttl {
				found = true
				break
			}
		}
		if found {
			continue
		}
		model := mongo.IndexModel{Keys: spec.keys}
		if spec.unique {
			model.Options = options.Index().SetUnique(true)
		}
		if spec.ttl {
			model.Options = options.Index().SetExpireAfterSeconds(0)
		}
		if spec.sparse {
			model.Options = options.Index().SetSparse(true)
		}
		_, err = coll.Indexes().CreateOne(ctx, model)
		if spec.ttl && isNotImplemented(err) {
			continue // FerretDB: no TTL indexes (see indexSpec.ttl)
		}
		if err != nil {
			return fmt.Errorf("ensure index %v on %s: %w", spec.keys, coll.Name(), err)
		}
	}
	return nil
}

// isNotImplemented reports the server's NotImplemented (code 238): FerretDB's answer to a feature it lacks.
func isNotImplemented(err error) bool {
	var se mongo.ServerError
	return errors.As(err, &se) && se.HasErrorCode(238)
}

// errMissing reports a required identifier the caller left empty; it is a programming error of the
// caller, not a condition of the data.
func errMissing(what string) error { return fmt.Errorf("%s is empty", what) }
