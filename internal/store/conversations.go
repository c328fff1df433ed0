package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/oklog/ulid/v2"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// ConversationState says whether a conversation takes new messages.
type ConversationState string

// Conversation states.
const (
	ConversationActive   ConversationState = "active"
	ConversationArchived ConversationState = "archived"
)

// Conversation is a group of members exchanging messages, within one tenant.
type Conversation struct {
	ID          string // ULID: sorting by id sorts by creation time
	TenantID    string
	Title       string
	CreatorID   string
	State       ConversationState
	MemberCount int
	CreateTime  time.Time
	UpdateTime  time.Time
	DeleteTime  *time.Time // set when archived
	Version     int64      // starts at 1, incremented by every change (including member_count)
}

// conversationDoc is a document of the conversations collection.
type conversationDoc struct {
	ID          string     `bson:"_id"`
	TenantID    string     `bson:"tenant_id"`
	Title       string     `bson:"title"`
	CreatorID   string     `bson:"creator_id"`
	State       string     `bson:"state"`
	MemberCount int64      `bson:"member_count"`
	CreateTime  time.Time  `bson:"create_time"`
	UpdateTime  time.Time  `bson:"update_time"`
	DeleteTime  *time.Time `bson:"delete_time,omitempty"`
	Version     int64      `bson:"version"`
}

func (d conversationDoc) conversation() Conversation {
	return Conversation{
		ID:          d.ID,
		TenantID:    d.TenantID,
		Title:       d.Title,
		CreatorID:   d.CreatorID,
		State:       ConversationState(d.State),
		MemberCount: int(d.MemberCount),
		CreateTime:  d.CreateTime.UTC(),
		UpdateTime:  d.UpdateTime.UTC(),
		DeleteTime:  storeTimePtr(d.DeleteTime),
		Version:     d.Version,
	}
}

// Conversations is the repository of conversations.
type Conversations struct{ core *storeCore }

// Create stores a new conversation and its memberships and returns it as stored: ID (a new ULID when
// c.ID is empty), State active, CreateTime = UpdateTime = now, Version 1, MemberCount.
//
// The creator always becomes an owner (added to members if absent, promoted if listed with another role).
// Other members default to RoleMember and AddedBy the creator; duplicates (same user id) count once.
//
// Order, without transactions: the memberships are inserted first, the conversation document last. The
// single insert of the conversation is what makes it exist: every read path (Get, ListForUser, the API's
// look-ups) goes through the conversation document, so a conversation is never visible before its creator
// is stored as its owner. A crash in between leaves only memberships that point to no conversation:
// Get is ErrNotFound and ListForUser skips them. Retrying Create with the same ID completes it (member
// inserts that find the membership already stored count as done).
//
// ErrAlreadyExists: a conversation with this ID exists.
func (r *Conversations) Create(ctx context.Context, c Conversation, members []Member) (Conversation, error) {
	switch {
	case c.TenantID == "":
		return Conversation{}, fmt.Errorf("create conversation: %w", errMissing("tenant id"))
	case c.CreatorID == "":
		return Conversation{}, fmt.Errorf("create conversation: %w", errMissing("creator id"))
	}
	if c.ID == "" {
		c.ID = ulid.Make().String()
	}
	now := r.core.now()

	// An existing id would get the new memberships mixed into its own, so refuse it before writing any.
	if err := r.core.guard.Read(ctx, func(ctx context.Context) error {
		return r.core.conversations.FindOne(ctx, bson.D{{Key: "_id", Value: c.ID}}).Err()
	}); err == nil {
		return Conversation{}, fmt.Errorf("create conversation %s: %w", c.ID, ErrAlreadyExists)
	} else if !errors.Is(err, mongo.ErrNoDocuments) {
		return Conversation{}, fmt.Errorf("create conversation %s: %w", c.ID, err)
	}

	docs := make([]any, 0, len(members)+1)
	seen := make(map[string]bool, len(members)+1)
	add := func(m Member) {
		if seen[m.UserID] {
			return
		}
		seen[m.UserID] = true
		if m.Role == "" {
			m.Role = RoleMember
		}
		if m.AddedBy == "" {
			m.AddedBy = c.CreatorID
		}
		docs = append(docs, memberDoc{
			ID:             MembershipID(c.TenantID, c.ID, m.UserID),
			TenantID:       c.TenantID,
			ConversationID: c.ID,
			UserID:         m.UserID,
			Role:           string(m.Role),
			AddedBy:        m.AddedBy,
			CreateTime:     now,
			UpdateTime:     now,
		})
	}
	add(Member{UserID: c.CreatorID, Role: RoleOwner, AddedBy: c.CreatorID})
	for i, m := range members {
		if m.UserID == "" {
			return Conversation{}, fmt.Errorf("create conversation: member %d: %w", i, errMissing("user id"))
		}
		if !m.Role.Valid() && m.Role != "" {
			return Conversation{}, fmt.Errorf("create conversation: member %s: invalid role %q", m.UserID, m.Role)
		}
		add(m)
	}

	if err := r.core.guard.Write(ctx, func(ctx context.Context) error {
		_, err := r.core.memberships.InsertMany(ctx, docs, options.InsertMany().SetOrdered(false))
		return err
	}); err != nil {
		if _, _, err := splitDuplicates(err); err != nil {
			return Conversation{}, fmt.Errorf("create conversation %s: insert members: %w", c.ID, err)
		}
	}

	doc := conversationDoc{
		ID:          c.ID,
		TenantID:    c.TenantID,
		Title:       c.Title,
		CreatorID:   c.CreatorID,
		State:       string(ConversationActive),
		MemberCount: int64(len(docs)),
		CreateTime:  now,
		UpdateTime:  now,
		Version:     1,
	}
	if err := r.core.guard.Write(ctx, func(ctx context.Context) error {
		_, err := r.core.conversations.InsertOne(ctx, doc)
		return err
	}); err != nil {
		if mongo.IsDuplicateKeyError(err) {
			return Conversation{}, fmt.Errorf("create conversation %s: %w", c.ID, ErrAlreadyExists)
		}
		return Conversation{}, fmt.Errorf("create conversation %s: %w", c.ID, err)
	}
	return doc.conversation(), nil
}

func conversationFilter(tenantID, id string) bson.D {
	return bson.D{{Key: "_id", Value: id}, {Key: "tenant_id", Value: tenantID}}
}

// Get returns a conversation, archived or not. ErrNotFound if it does not exist in tenantID.
func (r *Conversations) Get(ctx context.Context, tenantID, id string) (Conversation, error) {
	var doc conversationDoc
	// By _id alone, the tenant checked here: FerretDB answers a filter that is exactly {_id: value} from
	// its primary key but scans (and decodes) the whole collection for anything more, and this is the
	// pipeline's and the authorizer's hot read. MongoDB uses the _id index either way.
	if err := r.core.guard.Read(ctx, func(ctx context.Context) error {
		return r.core.conversations.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&doc)
	}); err != nil {
		return Conversation{}, fmt.Errorf("get conversation %s: %w", id, notFound(err))
	}
	if doc.TenantID != tenantID {
		return Conversation{}, fmt.Errorf("get conversation %s: %w", id, ErrNotFound)
	}
	return doc.conversation(), nil
}

// Update sets the title (when title is not nil), bumps Version and sets UpdateTime, and returns the
// conversation as stored. expectVersion 0 means no precondition; otherwise a different stored version is
// ErrConflict. With a nil title nothing changes: it returns the stored conversation (after checking
// expectVersion). ErrNotFound if it does not exist in tenantID. Archived conversations can be updated;
// whether they may is the caller's policy.
func (r *Conversations) Update(ctx context.Context, tenantID, id string, expectVersion int64, title *string) (Conversation, error) {
	if title == nil {
		c, err := r.Get(ctx, tenantID, id)
		if err != nil {
			return Conversation{}, fmt.Errorf("update conversation: %w", err)
		}
		if expectVersion != 0 && c.Version != expectVersion {
			return Conversation{}, fmt.Errorf("update conversation %s: version %d, expected %d: %w", id, c.Version, expectVersion, ErrConflict)
		}
		return c, nil
	}
	filter := conversationFilter(tenantID, id)
	if expectVersion != 0 {
		filter = append(filter, bson.E{Key: "version", Value: expectVersion})
	}
	update := bson.D{
		{Key: "$set", Value: bson.D{{Key: "title", Value: *title}, {Key: "update_time", Value: r.core.now()}}},
		{Key: "$inc", Value: bson.D{{Key: "version", Value: int64(1)}}},
	}
	doc, err := r.findOneAndUpdate(ctx, filter, update)
	if err == nil {
		return doc.conversation(), nil
	}
	if !errors.Is(err, mongo.ErrNoDocuments) {
		return Conversation{}, fmt.Errorf("update conversation %s: %w", id, err)
	}
	// Nothing matched: missing, or (with a precondition) another version.
	c, err := r.Get(ctx, tenantID, id)
	if err != nil {
		return Conversation{}, fmt.Errorf("update conversation: %w", err)
	}
	return Conversation{}, fmt.Errorf("update conversation %s: version %d, expected %d: %w", id, c.Version, expectVersion, ErrConflict)
}

// Archive soft-deletes a conversation: State archived, DeleteTime and UpdateTime now, Version bumped.
// Idempotent: archiving an archived conversation returns it unchanged. ErrNotFound if it does not exist
// in tenantID.
func (r *Conversations) Archive(ctx context.Context, tenantID, id string) (Conversation, error) {
	now := r.core.now()
	filter := append(conversationFilter(tenantID, id), bson.E{Key: "state", Value: string(ConversationActive)})
	update := bson.D{
		{Key: "$set", Value: bson.D{
			{Key: "state", Value: string(ConversationArchived)},
			{Key: "delete_time", Value: now},
			{Key: "update_time", Value: now},
		}},
		{Key: "$inc", Value: bson.D{{Key: "version", Value: int64(1)}}},
	}
	doc, err := r.findOneAndUpdate(ctx, filter, update)
	if err == nil {
		return doc.conversation(), nil
	}
	if !errors.Is(err, mongo.ErrNoDocuments) {
		return Conversation{}, fmt.Errorf("archive conversation %s: %w", id, err)
	}
	// Already archived, or missing.
	c, err := r.Get(ctx, tenantID, id)
	if err != nil {
		return Conversation{}, fmt.Errorf("archive conversation: %w", err)
	}
	return c, nil
}

func (r *Conversations) findOneAndUpdate(ctx context.Context, filter, update bson.D) (conversationDoc, error) {
	var doc conversationDoc
	err := r.core.guard.Write(ctx, func(ctx context.Context) error {
		return r.core.conversations.FindOneAndUpdate(ctx, filter, update,
			options.FindOneAndUpdate().SetReturnDocument(options.After)).Decode(&doc)
	})
	return doc, err
}

// ListForUser returns the conversations userID is a member of in tenantID, by conversation id descending
// (newest first), archived ones only when includeArchived. pageSize goes through PageSize. The next page
// token is "" on the last page.
//
// Keyset pagination on the conversation id: a page continues strictly below the last id returned, so
// conversations created (or joined) between page fetches never shift the pages: none of those that existed
// when the first page was read is skipped or repeated. Newer ones show up on a new first page; older ones
// the user joined meanwhile may show up on a later page.
//
// Memberships are read from the {tenant_id, user_id, conversation_id} index in batches and joined with
// their conversations ($in on _id); memberships without a conversation (a Create cut short) and, unless
// includeArchived, archived conversations are skipped, and the walk continues until the page is full.
// ErrBadPageToken for a token not issued by this list with the same tenant, user and includeArchived.
func (r *Conversations) ListForUser(ctx context.Context, tenantID, userID string, includeArchived bool, pageSize int, pageToken string) ([]Conversation, string, error) {
	size := PageSize(pageSize)
	scope := tokenScope(tenantID, userID, fmt.Sprint(includeArchived))
	after, err := decodePageToken(pageToken, tokenConversations, scope)
	if err != nil {
		return nil, "", fmt.Errorf("list conversations: %w", err)
	}

	// One more than a page, to know whether a next page exists without issuing a token for an empty one.
	want := size + 1
	out := make([]Conversation, 0, want)
	batch := int64(want)
	for len(out) < want {
		filter := bson.D{{Key: "tenant_id", Value: tenantID}, {Key: "user_id", Value: userID}}
		if after != "" {
			filter = append(filter, bson.E{Key: "conversation_id", Value: bson.D{{Key: "$lt", Value: after}}})
		}
		var ms []struct {
			ConversationID string `bson:"conversation_id"`
		}
		if err := r.core.guard.Read(ctx, func(ctx context.Context) error {
			ms = nil
			cur, err := r.core.memberships.Find(ctx, filter, options.Find().
				SetSort(bson.D{{Key: "conversation_id", Value: -1}}).
				SetLimit(batch).
				SetProjection(bson.D{{Key: "conversation_id", Value: 1}}))
			if err != nil {
				return fmt.Errorf("find memberships: %w", err)
			}
			if err := cur.All(ctx, &ms); err != nil {
				return fmt.Errorf("read memberships: %w", err)
			}
			return nil
		}); err != nil {
			return nil, "", fmt.Errorf("list conversations: %w", err)
		}
		if len(ms) == 0 {
			break
		}
		ids := make([]string, len(ms))
		for i, m := range ms {
			ids[i] = m.ConversationID
		}
		byID, err := r.byIDs(ctx, tenantID, ids, includeArchived)
		if err != nil {
			return nil, "", fmt.Errorf("list conversations: %w", err)
		}
		for _, id := range ids {
			if c, ok := byID[id]; ok && len(out) < want {
				out = append(out, c)
			}
		}
		if int64(len(ms)) < batch {
			break // no more memberships
		}
		after = ids[len(ids)-1]
		// Many skipped (archived) conversations: read bigger batches.
		batch = min(batch*2, 1000)
	}

	next := ""
	if len(out) > size {
		out = out[:size]
		next = encodePageToken(tokenConversations, scope, out[size-1].ID)
	}
	return out, next, nil
}

// GetMany returns the conversations of tenantID among ids, archived or not, by id, with one query; an id
// that does not exist in tenantID is absent from the map. The pipeline checks a batch's conversations
// with it instead of one Get each.
func (r *Conversations) GetMany(ctx context.Context, tenantID string, ids []string) (map[string]Conversation, error) {
	if len(ids) == 0 {
		return map[string]Conversation{}, nil
	}
	out, err := r.byIDs(ctx, tenantID, ids, true)
	if err != nil {
		return nil, fmt.Errorf("get %d conversations of tenant %s: %w", len(ids), tenantID, err)
	}
	return out, nil
}

// GetByIDs returns the conversations among ids, by id, whatever their tenant, with one query on _id: the
// caller must check TenantID. The pipeline reads all the conversations of a polled batch with it before
// it knows the records' tenants (a record's key is its conversation id).
func (r *Conversations) GetByIDs(ctx context.Context, ids []string) (map[string]Conversation, error) {
	out := make(map[string]Conversation, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	var docs []conversationDoc
	if err := r.core.guard.Read(ctx, func(ctx context.Context) error {
		docs = nil
		cur, err := r.core.conversations.Find(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}})
		if err != nil {
			return err
		}
		return cur.All(ctx, &docs)
	}); err != nil {
		return nil, fmt.Errorf("get %d conversations: %w", len(ids), err)
	}
	for _, d := range docs {
		out[d.ID] = d.conversation()
	}
	return out, nil
}

// byIDs returns the conversations of tenantID among ids, by id.
func (r *Conversations) byIDs(ctx context.Context, tenantID string, ids []string, includeArchived bool) (map[string]Conversation, error) {
	filter := bson.D{{Key: "tenant_id", Value: tenantID}, {Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}}
	if !includeArchived {
		filter = append(filter, bson.E{Key: "state", Value: bson.D{{Key: "$ne", Value: string(ConversationArchived)}}})
	}
	var docs []conversationDoc
	if err := r.core.guard.Read(ctx, func(ctx context.Context) error {
		docs = nil
		cur, err := r.core.conversations.Find(ctx, filter)
		if err != nil {
			return fmt.Errorf("find conversations: %w", err)
		}
		if err := cur.All(ctx, &docs); err != nil {
			return fmt.Errorf("read conversations: %w", err)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	out := make(map[string]Conversation, len(docs))
	for _, d := range docs {
		out[d.ID] = d.conversation()
	}
	return out, nil
}

// adjustMemberCount adds delta to a conversation's member_count, bumping its version and update_time.
// A missing conversation is not an error (nothing to keep in step).
func (c *storeCore) adjustMemberCount(ctx context.Context, tenantID, conversationID string, delta int64, now time.Time) error {
	err := c.guard.Write(ctx, func(ctx context.Context) error {
		_, err := c.conversations.UpdateOne(ctx, conversationFilter(tenantID, conversationID), bson.D{
			{Key: "$inc", Value: bson.D{{Key: "member_count", Value: delta}, {Key: "version", Value: int64(1)}}},
			{Key: "$set", Value: bson.D{{Key: "update_time", Value: now}}},
		})
		return err
	})
	if err != nil {
		return fmt.Errorf("update member count of conversation %s: %w", conversationID, err)
	}
	return nil
}
