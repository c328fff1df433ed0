package store

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"
	"time"

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
// ErrNotFound if the conversation does not exist in tenantID.
//
// Concurrent Puts of the same user insert one document (the unique _id decides) and count it once.
// Without transactions, a crash between the membership insert and the member_count update leaves the
// count one short; Recount repairs it.
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
	// Insert, or on duplicate key update the role; a Remove racing in between sends us round again.
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

		var cur memberDoc
		err = r.core.guard.Write(ctx, func(ctx context.Context) error {
			return r.core.memberships.FindOneAndUpdate(ctx,
				append(filter, bson.E{Key: "role", Value: bson.D{{Key: "$ne", Value: string(m.Role)}}}),
				bson.D{{Key: "$set", Value: bson.D{{Key: "role", Value: string(m.Role)}, {Key: "update_time", Value: now}}}},
				options.FindOneAndUpdate().SetReturnDocument(options.After)).Decode(&cur)
		})
		if err == nil {
			return cur.member(), nil
		}
		if !errors.Is(err, mongo.ErrNoDocuments) {
			return Member{}, fmt.Errorf("put member %s of conversation %s: change role: %w", m.UserID, m.ConversationID, err)
		}
		// Same role already (nothing to change), or removed meanwhile (insert again).
		if err = r.core.guard.Read(ctx, func(ctx context.Context) error {
			return r.core.memberships.FindOne(ctx, filter).Decode(&cur)
		}); err == nil {
			return cur.member(), nil
		}
		if !errors.Is(err, mongo.ErrNoDocuments) {
			return Member{}, fmt.Errorf("put member %s of conversation %s: %w", m.UserID, m.ConversationID, err)
		}
	}
	return Member{}, fmt.Errorf("put member %s of conversation %s: concurrently added and removed: %w", m.UserID, m.ConversationID, ErrConflict)
}

// Remove deletes userID's membership and lowers the conversation's member_count (bumping its version).
// ErrNotFound if the user is not a member.
func (r *Members) Remove(ctx context.Context, tenantID, conversationID, userID string) error {
	var res *mongo.DeleteResult
	err := r.core.guard.Write(ctx, func(ctx context.Context) error {
		var err error
		res, err = r.core.memberships.DeleteOne(ctx, membershipFilter(tenantID, conversationID, userID))
		return err
	})
	if err != nil {
		return fmt.Errorf("remove member %s of conversation %s: %w", userID, conversationID, err)
	}
	if res.DeletedCount == 0 {
		return fmt.Errorf("remove member %s of conversation %s: %w", userID, conversationID, ErrNotFound)
	}
	if err := r.core.adjustMemberCount(ctx, tenantID, conversationID, -1, r.core.now()); err != nil {
		return fmt.Errorf("remove member %s: %w", userID, err)
	}
	return nil
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
