package store

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v5"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// Role is a member's role in one conversation.
type Role string

// Member roles.
const (
	RoleOwner  Role = "owner"
	RoleAdmin  Role = "admin"
	RoleMember Role = "member"
	RoleViewer Role = "viewer"
)

// Valid reports whether r is one of the four roles.
func (r Role) Valid() bool {
	switch r {
	case RoleOwner, RoleAdmin, RoleMember, RoleViewer:
		return true
	}
	return false
}

// Member is a user's membership of a conversation.
type Member struct {
	TenantID       string
	ConversationID string
	UserID         string
	Role           Role
	AddedBy        string
	CreateTime     time.Time // when the user joined
	UpdateTime     time.Time // when the membership (role) last changed
	// LastReadMessageID is the member's read cursor: the newest message it has read, "" if none yet.
	LastReadMessageID string
}

// memberDoc is a document of the memberships collection, one per membership.
type memberDoc struct {
	ID             string    `bson:"_id"` // MembershipID(tenant_id, conversation_id, user_id)
	TenantID       string    `bson:"tenant_id"`
	ConversationID string    `bson:"conversation_id"`
	UserID         string    `bson:"user_id"`
	Role           string    `bson:"role"`
	AddedBy        string    `bson:"added_by"`
	CreateTime     time.Time `bson:"create_time"`
	UpdateTime     time.Time `bson:"update_time"`
	// LastRead is the read cursor, only ever moved forward ($max): see Members.MarkRead.
	LastRead string `bson:"last_read_message_id,omitempty"`
}

func (d memberDoc) member() Member {
	return Member{
		TenantID:       d.TenantID,
		ConversationID: d.ConversationID,
		UserID:         d.UserID,
		Role:           Role(d.Role),
		AddedBy:        d.AddedBy,
		CreateTime:     d.CreateTime.UTC(),
		UpdateTime:     d.UpdateTime.UTC(),

		LastReadMessageID: d.LastRead,
	}
}

// MembershipID is the _id of a membership document: tenant, conversation and user, each path-escaped
// (so "/" and "%" inside an id cannot make two memberships collide) and joined with "/". It is
// deterministic, so adding the same member twice hits the same document, and a change-stream delete
// event (which carries only the _id) can be mapped back with ParseMembershipID.
func MembershipID(tenantID, conversationID, userID string) string {
	return url.PathEscape(tenantID) + "/" + url.PathEscape(conversationID) + "/" + url.PathEscape(userID)
}

// ParseMembershipID splits a MembershipID into its parts.
func ParseMembershipID(id string) (tenantID, conversationID, userID string, err error) {
	parts := strings.Split(id, "/")
	if len(parts) != 3 {
		return "", "", "", fmt.Errorf("parse membership id %q: want 3 parts, got %d", id, len(parts))
	}
	var out [3]string
	for i, p := range parts {
		if out[i], err = url.PathUnescape(p); err != nil {
			return "", "", "", fmt.Errorf("parse membership id %q: %w", id, err)
		}
	}
	return out[0], out[1], out[2], nil
}

// MembershipLocksCollection holds the membership locks: one document per conversation whose
// memberships a caller is changing right now (see Members.locked).
const MembershipLocksCollection = "membership_locks"

// ErrLastOwner: the change would leave the conversation without an owner. Its last owner can be neither
// removed nor demoted.
var ErrLastOwner = errors.New("the last owner cannot be removed or demoted")

// Members is the repository of conversation memberships.
type Members struct{ core *storeCore }

func membershipFilter(tenantID, conversationID, userID string) bson.D {
	return bson.D{{Key: "_id", Value: MembershipID(tenantID, conversationID, userID)}, {Key: "tenant_id", Value: tenantID}}
}

// Get returns userID's membership of the conversation. ErrNotFound if the user is not a member (or the
// conversation is not in tenantID).
func (r *Members) Get(ctx context.Context, tenantID, conversationID, userID string) (Member, error) {
	var doc memberDoc
	// By _id alone (it names the tenant), as Conversations.Get does, for FerretDB's sake.
	if err := r.core.guard.Read(ctx, func(ctx context.Context) error {
		return r.core.memberships.FindOne(ctx, bson.D{{Key: "_id", Value: MembershipID(tenantID, conversationID, userID)}}).Decode(&doc)
	}); err != nil {
		return Member{}, fmt.Errorf("get member %s of conversation %s: %w", userID, conversationID, notFound(err))
	}
	if doc.TenantID != tenantID {
		return Member{}, fmt.Errorf("get member %s of conversation %s: %w", userID, conversationID, ErrNotFound)
	}
	return doc.member(), nil
}

// Put adds a member, or changes the role of an existing one, and returns the membership as stored.
// An empty Role means RoleMember. A new member gets CreateTime = UpdateTime = now and AddedBy as given, and
// the conversation's member_count goes up by one (bumping its version). An existing member keeps
// CreateTime and AddedBy; a new role sets UpdateTime; the same role changes nothing.
// ErrNotFound if the conversation does not exist in tenantID; ErrLastOwner if the member is the
// conversation's last owner and the new role is not owner.
//
// Concurrent Puts of the same user insert one document (the unique _id decides) and count it once. A new
// role is written under the conversation's membership lock (see locked), where the last-owner rule is
// checked. Without transactions, a crash between the membership insert and the member_count update
// leaves the count one short; Recount repairs it.
func (r *Members) Put(ctx context.Context, m Member) (Member, error) {
	switch {
	case m.TenantID == "":
		return Member{}, fmt.Errorf("put member: %w", errMissing("tenant id"))
	case m.ConversationID == "":
		return Member{}, fmt.Errorf("put member: %w", errMissing("conversation id"))
	case m.UserID == "":
		return Member{}, fmt.Errorf("put member: %w", errMissing("user id"))
	}
	if m.Role == "" {
		m.Role = RoleMember
	}
	if !m.Role.Valid() {
		return Member{}, fmt.Errorf("put member %s: invalid role %q", m.UserID, m.Role)
	}
	if err := r.core.guard.Read(ctx, func(ctx context.Context) error {
		return r.core.conversations.FindOne(ctx, conversationFilter(m.TenantID, m.ConversationID),
			options.FindOne().SetProjection(bson.D{{Key: "_id", Value: 1}})).Err()
	}); err != nil {
		return Member{}, fmt.Errorf("put member %s: conversation %s: %w", m.UserID, m.ConversationID, notFound(err))
	}

	now := r.core.now()
	filter := membershipFilter(m.TenantID, m.ConversationID, m.UserID)
	doc := memberDoc{
		ID:             MembershipID(m.TenantID, m.ConversationID, m.UserID),
		TenantID:       m.TenantID,
		ConversationID: m.ConversationID,
		UserID:         m.UserID,
		Role:           string(m.Role),
		AddedBy:        m.AddedBy,
		CreateTime:     now,
		UpdateTime:     now,
	}
	// Insert, or on duplicate key change the role; a Remove racing in between sends us round again.
	for range 3 {
		err := r.core.guard.Write(ctx, func(ctx context.Context) error {
			_, err := r.core.memberships.InsertOne(ctx, doc)
			return err
		})
		if err == nil {
			if err := r.core.adjustMemberCount(ctx, m.TenantID, m.ConversationID, 1, now); err != nil {
				return Member{}, fmt.Errorf("put member %s: %w", m.UserID, err)
			}
			return doc.member(), nil
		}
		if !mongo.IsDuplicateKeyError(err) {
			return Member{}, fmt.Errorf("put member %s of conversation %s: %w", m.UserID, m.ConversationID, err)
		}

		// The same role already: nothing to change, no lock needed.
		var cur memberDoc
		err = r.core.guard.Read(ctx, func(ctx context.Context) error {
			return r.core.memberships.FindOne(ctx, filter).Decode(&cur)
		})
		if errors.Is(err, mongo.ErrNoDocuments) {
			continue // removed meanwhile: insert again
		}
		if err != nil {
			return Member{}, fmt.Errorf("put member %s of conversation %s: %w", m.UserID, m.ConversationID, err)
		}
		if cur.Role == string(m.Role) {
			return cur.member(), nil
		}

		gone := false
		err = r.locked(ctx, m.TenantID, m.ConversationID, func(ctx context.Context) error {
			// Read again under the lock: what we decide on cannot change until we wrote.
			err := r.core.guard.Read(ctx, func(ctx context.Context) error {
				return r.core.memberships.FindOne(ctx, filter).Decode(&cur)
			})
			switch {
			case errors.Is(err, mongo.ErrNoDocuments):
				gone = true
				return nil
			case err != nil:
				return err
			case cur.Role == string(m.Role):
				return nil
			case cur.Role == string(RoleOwner):
				if err := r.keepAnOwner(ctx, m.TenantID, m.ConversationID); err != nil {
					return err
				}
			}
			return r.core.guard.Write(ctx, func(ctx context.Context) error {
				return r.core.memberships.FindOneAndUpdate(ctx, filter,
					bson.D{{Key: "$set", Value: bson.D{{Key: "role", Value: string(m.Role)}, {Key: "update_time", Value: now}}}},
					options.FindOneAndUpdate().SetReturnDocument(options.After)).Decode(&cur)
			})
		})
		if errors.Is(err, mongo.ErrNoDocuments) {
			continue // removed between the read and the update (only a writer without the lock can)
		}
		if err != nil {
			return Member{}, fmt.Errorf("put member %s of conversation %s: change role: %w", m.UserID, m.ConversationID, err)
		}
		if !gone {
			return cur.member(), nil
		}
	}
	return Member{}, fmt.Errorf("put member %s of conversation %s: concurrently added and removed: %w", m.UserID, m.ConversationID, ErrConflict)
}

// Remove deletes userID's membership and lowers the conversation's member_count (bumping its version).
// ErrNotFound if the user is not a member; ErrLastOwner if it is the conversation's last owner. It runs
// under the conversation's membership lock (see locked), where the last-owner rule is checked.
func (r *Members) Remove(ctx context.Context, tenantID, conversationID, userID string) error {
	filter := membershipFilter(tenantID, conversationID, userID)
	err := r.locked(ctx, tenantID, conversationID, func(ctx context.Context) error {
		var cur memberDoc
		if err := r.core.guard.Read(ctx, func(ctx context.Context) error {
			return r.core.memberships.FindOne(ctx, filter).Decode(&cur)
		}); err != nil {
			return notFound(err)
		}
		if cur.Role == string(RoleOwner) {
			if err := r.keepAnOwner(ctx, tenantID, conversationID); err != nil {
				return err
			}
		}
		var res *mongo.DeleteResult
		if err := r.core.guard.Write(ctx, func(ctx context.Context) error {
			var err error
			res, err = r.core.memberships.DeleteOne(ctx, filter)
			return err
		}); err != nil {
			return err
		}
		if res.DeletedCount == 0 {
			return ErrNotFound
		}
		// Still under the lock, so removals of the same conversation count one after the other (FerretDB's
		// $inc is a read and a replace, and loses concurrent increments).
		return r.core.adjustMemberCount(ctx, tenantID, conversationID, -1, r.core.now())
	})
	if err != nil {
		return fmt.Errorf("remove member %s of conversation %s: %w", userID, conversationID, err)
	}
	return nil
}

// keepAnOwner is the last-owner rule, its one definition: a conversation always keeps at least one
// owner, so the owner role can be taken from a member (a new role, a removal) only while another member
// holds it. ErrLastOwner otherwise. Callers hold the conversation's membership lock, so no other change
// can take that other owner away before their own write.
func (r *Members) keepAnOwner(ctx context.Context, tenantID, conversationID string) error {
	n, err := r.CountOwners(ctx, tenantID, conversationID)
	if err != nil {
		return err
	}
	if n <= 1 {
		return ErrLastOwner
	}
	return nil
}

// membershipLockDoc is a document of the membership_locks collection: a conversation whose memberships
// one caller is changing right now (_id: membershipLockID), or the fence of a takeover of an expired
// lock (_id: the lock's _id, "/takeover/", the expired lock's token).
type membershipLockDoc struct {
	ID         string    `bson:"_id"`
	Token      string    `bson:"token"`
	ExpireTime time.Time `bson:"expire_time"` // a TTL index removes it on MongoDB once passed
}

// membershipLockID is the _id of a conversation's membership lock: tenant and conversation, each
// path-escaped, joined with "/" (so it holds exactly one "/", and a takeover fence, which holds three,
// never collides with a lock).
func membershipLockID(tenantID, conversationID string) string {
	return url.PathEscape(tenantID) + "/" + url.PathEscape(conversationID)
}

// ErrMembershipBusy: the conversation's membership lock stayed held by other changes for
// membershipLockWait; nothing was changed. It wraps ErrConflict (the API answers ABORTED: retry).
var ErrMembershipBusy = fmt.Errorf("another membership change of the conversation is in progress (%w)", ErrConflict)

// The membership lock's timing: a lock left by a crashed process blocks its conversation's membership
// changes for at most membershipLockLease; a change waits at most membershipLockWait for a busy lock
// (then ErrMembershipBusy), polling with capped exponential backoff and jitter; a holder's own work is
// cut off at half the lease, so it never writes after another caller could have taken the lock over.
const (
	membershipLockLease    = 30 * time.Second
	membershipLockWait     = 5 * time.Second
	membershipLockMinDelay = 2 * time.Millisecond
	membershipLockMaxDelay = 50 * time.Millisecond
)

// locked runs fn while holding the conversation's membership lock, which every change to an existing
// membership (a new role, a removal) takes. The last-owner rule reads the owners and then writes; two
// owners demoting each other at the same moment would each see the other still an owner and both
// write. Without transactions, only mutual exclusion closes that window, and it must come from a write
// that is atomic on every server the store runs on: inserting a unique _id is, on MongoDB and on
// FerretDB alike, while a guard in an update or delete filter (an owner count with $gt, a version) is
// not on FerretDB, which runs those as a query followed by a write by _id. New members are inserted
// without the lock: an insert changes no one's role.
//
// The lock is released on every path (fn's error or panic, a cancelled ctx: the release runs on a
// context of its own); if the release fails, the lease frees it. A lock whose lease ran out (its holder
// crashed) is taken over (see takeOverMembershipLock).
func (r *Members) locked(ctx context.Context, tenantID, conversationID string, fn func(ctx context.Context) error) error {
	locks := r.core.db.Collection(MembershipLocksCollection)
	id := membershipLockID(tenantID, conversationID)
	token := rand.Text()
	if err := r.acquireMembershipLock(ctx, locks, id, token); err != nil {
		return fmt.Errorf("lock memberships: %w", err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = r.core.guard.Write(ctx, func(ctx context.Context) error {
			_, err := locks.DeleteOne(ctx, bson.D{{Key: "_id", Value: id}, {Key: "token", Value: token}})
			return err
		})
	}()
	ctx, cancel := context.WithTimeout(ctx, membershipLockLease/2)
	defer cancel()
	return fn(ctx)
}

// acquireMembershipLock inserts the lock document id with token, waiting for a live holder with backoff
// for at most membershipLockWait (then ErrMembershipBusy) and taking an expired one over.
func (r *Members) acquireMembershipLock(ctx context.Context, locks *mongo.Collection, id, token string) error {
	b := &backoff.ExponentialBackOff{
		InitialInterval:     membershipLockMinDelay,
		RandomizationFactor: 0.5, // jitter, so waiters do not retry in step
		Multiplier:          2,
		MaxInterval:         membershipLockMaxDelay,
	}
	b.Reset()
	giveUp := time.Now().Add(membershipLockWait)
	for {
		now := r.core.now()
		err := r.core.guard.Write(ctx, func(ctx context.Context) error {
			_, err := locks.InsertOne(ctx, membershipLockDoc{ID: id, Token: token, ExpireTime: now.Add(membershipLockLease)})
			return err
		})
		if err == nil {
			return nil
		}
		if !mongo.IsDuplicateKeyError(err) {
			return err
		}
		var held membershipLockDoc
		err = r.core.guard.Read(ctx, func(ctx context.Context) error {
			return locks.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&held)
		})
		wait := true
		switch {
		case errors.Is(err, mongo.ErrNoDocuments):
			wait = false // released meanwhile: insert again at once
		case err != nil:
			return err
		case held.Token == token:
			return nil // our own insert, whose answer was lost and which the guard tried again
		case !held.ExpireTime.After(now):
			if err := r.takeOverMembershipLock(ctx, locks, held, token, now); err != nil {
				return fmt.Errorf("take over an expired lock: %w", err)
			}
			wait = false
		}
		if time.Now().After(giveUp) {
			return fmt.Errorf("held by another change for %s: %w", membershipLockWait, ErrMembershipBusy)
		}
		if !wait {
			continue
		}
		t := time.NewTimer(b.NextBackOff())
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// takeOverMembershipLock deletes the expired lock held, left by a crashed holder, so that the waiting
// callers race for a new one. A delete by {_id, token} is atomic on MongoDB but not on FerretDB, which
// finds the document and then deletes by _id: two callers deleting the same expired lock at once could
// delete the new lock one of them took in between. So only the caller that inserts the takeover fence
// (a unique _id naming that expired lock's token) deletes it; the others wait. A fence left by a taker
// that crashed in turn expires after membershipLockWait, after which the expired lock is deleted without
// one (two crashes in a row are needed to reopen the window). The fence is removed once the lock is
// gone: a late caller's delete then finds no document with that token and deletes nothing.
func (r *Members) takeOverMembershipLock(ctx context.Context, locks *mongo.Collection, held membershipLockDoc, token string, now time.Time) error {
	fenceID := held.ID + "/takeover/" + held.Token
	err := r.core.guard.Write(ctx, func(ctx context.Context) error {
		_, err := locks.InsertOne(ctx, membershipLockDoc{ID: fenceID, Token: token, ExpireTime: now.Add(membershipLockWait)})
		return err
	})
	if mongo.IsDuplicateKeyError(err) {
		var fence membershipLockDoc
		err := r.core.guard.Read(ctx, func(ctx context.Context) error {
			return locks.FindOne(ctx, bson.D{{Key: "_id", Value: fenceID}}).Decode(&fence)
		})
		switch {
		case errors.Is(err, mongo.ErrNoDocuments):
			return nil // taken over meanwhile
		case err != nil:
			return err
		case fence.Token != token && fence.ExpireTime.After(now):
			return nil // another caller is taking it over
		}
	} else if err != nil {
		return err
	}
	if err := r.core.guard.Write(ctx, func(ctx context.Context) error {
		_, err := locks.DeleteOne(ctx, bson.D{{Key: "_id", Value: held.ID}, {Key: "token", Value: held.Token}})
		return err
	}); err != nil {
		return err
	}
	return r.core.guard.Write(ctx, func(ctx context.Context) error {
		_, err := locks.DeleteOne(ctx, bson.D{{Key: "_id", Value: fenceID}})
		return err
	})
}

// CountOwners returns how many owners the conversation has (0 for one not in tenantID).
func (r *Members) CountOwners(ctx context.Context, tenantID, conversationID string) (int, error) {
	var n int64
	err := r.core.guard.Read(ctx, func(ctx context.Context) error {
		var err error
		n, err = r.core.memberships.CountDocuments(ctx, bson.D{
			{Key: "tenant_id", Value: tenantID},
			{Key: "conversation_id", Value: conversationID},
			{Key: "role", Value: string(RoleOwner)},
		})
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("count owners of conversation %s: %w", conversationID, err)
	}
	return int(n), nil
}

// Recount sets the conversation's member_count from its membership documents and returns it: the repair
// for a count left behind by a crash between a membership write and its count update. It does not bump
// the version. ErrNotFound if the conversation does not exist in tenantID.
func (r *Members) Recount(ctx context.Context, tenantID, conversationID string) (int, error) {
	var n int64
	err := r.core.guard.Read(ctx, func(ctx context.Context) error {
		var err error
		n, err = r.core.memberships.CountDocuments(ctx, bson.D{
			{Key: "tenant_id", Value: tenantID},
			{Key: "conversation_id", Value: conversationID},
		})
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("recount members of conversation %s: %w", conversationID, err)
	}
	var res *mongo.UpdateResult
	err = r.core.guard.Write(ctx, func(ctx context.Context) error {
		var err error
		res, err = r.core.conversations.UpdateOne(ctx, conversationFilter(tenantID, conversationID),
			bson.D{{Key: "$set", Value: bson.D{{Key: "member_count", Value: n}}}})
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("recount members of conversation %s: %w", conversationID, err)
	}
	if res.MatchedCount == 0 {
		return 0, fmt.Errorf("recount members of conversation %s: %w", conversationID, ErrNotFound)
	}
	return int(n), nil
}

// List returns the conversation's members by user id ascending, keyset-paginated on the user id.
// pageSize goes through PageSize; the next page token is "" on the last page. ErrBadPageToken for a token
// not issued by this list for the same tenant and conversation. A conversation not in tenantID lists empty.
func (r *Members) List(ctx context.Context, tenantID, conversationID string, pageSize int, pageToken string) ([]Member, string, error) {
	size := PageSize(pageSize)
	scope := tokenScope(tenantID, conversationID)
	after, err := decodePageToken(pageToken, tokenMembers, scope)
	if err != nil {
		return nil, "", fmt.Errorf("list members: %w", err)
	}
	filter := bson.D{{Key: "tenant_id", Value: tenantID}, {Key: "conversation_id", Value: conversationID}}
	if after != "" {
		filter = append(filter, bson.E{Key: "user_id", Value: bson.D{{Key: "$gt", Value: after}}})
	}
	var docs []memberDoc
	if err := r.core.guard.Read(ctx, func(ctx context.Context) error {
		docs = nil
		cur, err := r.core.memberships.Find(ctx, filter, options.Find().
			SetSort(bson.D{{Key: "user_id", Value: 1}}).
			SetLimit(int64(size)+1))
		if err != nil {
			return err
		}
		return cur.All(ctx, &docs)
	}); err != nil {
		return nil, "", fmt.Errorf("list members of conversation %s: %w", conversationID, err)
	}
	next := ""
	if len(docs) > size {
		docs = docs[:size]
		next = encodePageToken(tokenMembers, scope, docs[size-1].UserID)
	}
	out := make([]Member, len(docs))
	for i, d := range docs {
		out[i] = d.member()
	}
	return out, next, nil
}

// OfTenantsConversations returns every membership of the conversations of byTenant (tenant → its
// conversation ids), with one query: an $or of one tenant-scoped clause per tenant, each served by the
// tenant_id, conversation_id, user_id index. The pipeline reads a batch's memberships with it, where a
// query per tenant would cost a round trip each (and on FerretDB a scan of the collection each).
func (r *Members) OfTenantsConversations(ctx context.Context, byTenant map[string][]string) ([]Member, error) {
	clauses := bson.A{}
	n := 0
	for _, tenantID := range slices.Sorted(maps.Keys(byTenant)) {
		ids := byTenant[tenantID]
		if len(ids) == 0 {
			continue
		}
		n += len(ids)
		clauses = append(clauses, bson.D{{Key: "tenant_id", Value: tenantID}, {Key: "conversation_id", Value: bson.D{{Key: "$in", Value: ids}}}})
	}
	var filter bson.D
	switch len(clauses) {
	case 0:
		return nil, nil
	case 1:
		filter = clauses[0].(bson.D)
	default:
		filter = bson.D{{Key: "$or", Value: clauses}}
	}
	var docs []memberDoc
	if err := r.core.guard.Read(ctx, func(ctx context.Context) error {
		docs = nil
		cur, err := r.core.memberships.Find(ctx, filter)
		if err != nil {
			return err
		}
		return cur.All(ctx, &docs)
	}); err != nil {
		return nil, fmt.Errorf("members of %d conversations of %d tenants: %w", n, len(clauses), err)
	}
	out := make([]Member, len(docs))
	for i, d := range docs {
		out[i] = d.member()
	}
	return out, nil
}
