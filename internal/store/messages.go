package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// MessageState is where a message is on its way from the API to storage.
type MessageState string

// Message states.
const (
	MessageAccepted  MessageState = "accepted"
	MessagePersisted MessageState = "persisted"
	MessageDeleted   MessageState = "deleted"
)

// Message is one message of a conversation.
type Message struct {
	ID              string // ULID, the document _id: sorting by id sorts by send time
	TenantID        string
	ConversationID  string
	SenderID        string
	Body            string // "" on a deleted message
	ClientMessageID string
	Metadata        map[string]string // nil on a deleted message
	Mentions        []string          // nil on a deleted message
	State           MessageState
	CreateTime      time.Time // accepted by the API
	PersistTime     time.Time // stored by the pipeline
	UpdateTime      time.Time
	EditTime        *time.Time
	DeleteTime      *time.Time
	Version         int64
	RequestID       string
	// ThreadID is the root's id on a reply, "" on a top-level message.
	ThreadID string
	// ReplyCount and LastReplyTime are a root's thread counters (see Messages.RecountThreads).
	ReplyCount    int32
	LastReplyTime *time.Time
}

// messageDoc is a document of the messages collection.
type messageDoc struct {
	ID              string     `bson:"_id"`
	TenantID        string     `bson:"tenant_id"`
	ConversationID  string     `bson:"conversation_id"`
	SenderID        string     `bson:"sender_id"`
	Body            string     `bson:"body"`
	ClientMessageID string     `bson:"client_message_id,omitempty"`
	Metadata        []metaPair `bson:"metadata,omitempty"`
	Mentions        []string   `bson:"mentions,omitempty"`
	State           string     `bson:"state"`
	CreateTime      time.Time  `bson:"create_time"`
	PersistTime     time.Time  `bson:"persist_time"`
	UpdateTime      time.Time  `bson:"update_time"`
	EditTime        *time.Time `bson:"edit_time,omitempty"`
	DeleteTime      *time.Time `bson:"delete_time,omitempty"`
	Version         int64      `bson:"version"`
	RequestID       string     `bson:"request_id,omitempty"`
	ThreadID        string     `bson:"thread_id,omitempty"`
	ReplyCount      int32      `bson:"reply_count,omitempty"`
	LastReplyTime   *time.Time `bson:"last_reply_time,omitempty"`
}

// contentBytes is about what the message weighs in a response: its strings (the fixed-size fields add a
// few dozen bytes, well inside MaxPageBytes' margin).
func (d messageDoc) contentBytes() int {
	n := len(d.ID) + len(d.TenantID) + len(d.ConversationID) + len(d.SenderID) + len(d.Body) + len(d.ClientMessageID) + len(d.RequestID) + len(d.ThreadID) + 80
	for _, p := range d.Metadata {
		n += len(p.K) + len(p.V)
	}
	for _, m := range d.Mentions {
		n += len(m)
	}
	return n
}

// metaPair is one metadata entry. Metadata is stored as an array of pairs, sorted by key, not as a
// sub-document: its keys are the sender's, and field names with "." or a leading "$" are refused by some
// servers (FerretDB, MongoDB before 5.0).
type metaPair struct {
	K string `bson:"k"`
	V string `bson:"v"`
}

func encodeMetadata(m map[string]string) []metaPair {
	if len(m) == 0 {
		return nil
	}
	out := make([]metaPair, 0, len(m))
	for k, v := range m {
		out = append(out, metaPair{K: k, V: v})
	}
	slices.SortFunc(out, func(a, b metaPair) int { return strings.Compare(a.K, b.K) })
	return out
}

func decodeMetadata(ps []metaPair) map[string]string {
	if len(ps) == 0 {
		return nil
	}
	out := make(map[string]string, len(ps))
	for _, p := range ps {
		out[p.K] = p.V
	}
	return out
}

// DecodeMessage decodes a document of the messages collection (e.g. a change event's fullDocument).
func DecodeMessage(raw bson.Raw) (Message, error) {
	var d messageDoc
	if err := bson.Unmarshal(raw, &d); err != nil {
		return Message{}, fmt.Errorf("decode message document: %w", err)
	}
	return d.message(), nil
}

func (d messageDoc) message() Message {
	return Message{
		ID:              d.ID,
		TenantID:        d.TenantID,
		ConversationID:  d.ConversationID,
		SenderID:        d.SenderID,
		Body:            d.Body,
		ClientMessageID: d.ClientMessageID,
		Metadata:        decodeMetadata(d.Metadata),
		Mentions:        d.Mentions,
		State:           MessageState(d.State),
		CreateTime:      d.CreateTime.UTC(),
		PersistTime:     d.PersistTime.UTC(),
		UpdateTime:      d.UpdateTime.UTC(),
		EditTime:        storeTimePtr(d.EditTime),
		DeleteTime:      storeTimePtr(d.DeleteTime),
		Version:         d.Version,
		RequestID:       d.RequestID,
		ThreadID:        d.ThreadID,
		ReplyCount:      d.ReplyCount,
		LastReplyTime:   storeTimePtr(d.LastReplyTime),
	}
}

// Messages is the repository of messages.
type Messages struct{ core *storeCore }

// InsertMany stores messages with one unordered bulk insert, _id = message id. A message whose id is
// already stored counts as a duplicate (a redelivery: already stored, left as it is), not as an error, and
// does not stop the others. err reports anything else (then inserted and duplicates count what is known).
//
// Defaults for fields left zero: State MessagePersisted, PersistTime now, CreateTime and UpdateTime =
// PersistTime, Version 1. ID, TenantID and ConversationID are required: a message without them fails the
// whole call before anything is written.
func (r *Messages) InsertMany(ctx context.Context, msgs []Message) (inserted int, duplicates int, err error) {
	if len(msgs) == 0 {
		return 0, 0, nil
	}
	now := r.core.now()
	docs := make([]any, len(msgs))
	for i, m := range msgs {
		switch {
		case m.ID == "":
			return 0, 0, fmt.Errorf("insert messages: item %d: %w", i, errMissing("id"))
		case m.TenantID == "":
			return 0, 0, fmt.Errorf("insert messages: item %d (%s): %w", i, m.ID, errMissing("tenant id"))
		case m.ConversationID == "":
			return 0, 0, fmt.Errorf("insert messages: item %d (%s): %w", i, m.ID, errMissing("conversation id"))
		}
		docs[i] = newMessageDoc(m, now)
	}
	// Breaker only, never retried here: the caller (pipeline) retries, and a duplicate-key answer is the
	// server's reply, not a breaker failure (see countsAsFailure).
	err = r.core.guard.Write(ctx, func(ctx context.Context) error {
		_, err := r.core.messages.InsertMany(ctx, docs, options.InsertMany().SetOrdered(false))
		return err
	})
	if err == nil {
		return len(docs), 0, nil
	}
	dups, failed, err := splitDuplicates(err)
	if err != nil && failed == 0 {
		// Not an item error (network, write concern, ...): which items landed is unknown.
		return 0, dups, fmt.Errorf("insert messages: %w", err)
	}
	inserted = len(docs) - dups - failed
	if err != nil {
		return inserted, dups, fmt.Errorf("insert messages: %d of %d failed: %w", failed, len(docs), err)
	}
	return inserted, dups, nil
}

func newMessageDoc(m Message, now time.Time) messageDoc {
	if m.State == "" {
		m.State = MessagePersisted
	}
	if m.PersistTime.IsZero() {
		m.PersistTime = now
	}
	if m.CreateTime.IsZero() {
		m.CreateTime = m.PersistTime
	}
	if m.UpdateTime.IsZero() {
		m.UpdateTime = m.PersistTime
	}
	if m.Version == 0 {
		m.Version = 1
	}
	return messageDoc{
		ID:              m.ID,
		TenantID:        m.TenantID,
		ConversationID:  m.ConversationID,
		SenderID:        m.SenderID,
		Body:            m.Body,
		ClientMessageID: m.ClientMessageID,
		Metadata:        encodeMetadata(m.Metadata),
		Mentions:        m.Mentions,
		State:           string(m.State),
		CreateTime:      storeTime(m.CreateTime),
		PersistTime:     storeTime(m.PersistTime),
		UpdateTime:      storeTime(m.UpdateTime),
		EditTime:        storeTimePtr(m.EditTime),
		DeleteTime:      storeTimePtr(m.DeleteTime),
		Version:         m.Version,
		RequestID:       m.RequestID,
		ThreadID:        m.ThreadID,
		ReplyCount:      m.ReplyCount,
		LastReplyTime:   storeTimePtr(m.LastReplyTime),
	}
}

// splitDuplicates takes the error of an unordered bulk insert apart: how many items failed with a
// duplicate key, how many with something else, and an error for the rest (nil when every failure was a
// duplicate key).
func splitDuplicates(err error) (duplicates, failed int, rest error) {
	var bwe mongo.BulkWriteException
	if !errors.As(err, &bwe) {
		return 0, 0, err
	}
	var other []error
	for _, we := range bwe.WriteErrors {
		if mongo.IsDuplicateKeyError(we.WriteError) {
			duplicates++
			continue
		}
		failed++
		if len(other) < 3 { // enough to diagnose; the count says how many
			other = append(other, fmt.Errorf("item %d: %w", we.Index, we.WriteError))
		}
	}
	if bwe.WriteConcernError != nil {
		other = append(other, bwe.WriteConcernError)
	}
	return duplicates, failed, errors.Join(other...)
}

func messageFilter(tenantID, conversationID, id string) bson.D {
	return bson.D{{Key: "_id", Value: id}, {Key: "tenant_id", Value: tenantID}, {Key: "conversation_id", Value: conversationID}}
}

// Get returns a message in any state (a deleted one is its tombstone; the caller decides what to show).
// ErrNotFound if it does not exist in that tenant and conversation.
func (r *Messages) Get(ctx context.Context, tenantID, conversationID, id string) (Message, error) {
	var doc messageDoc
	if err := r.core.guard.Read(ctx, func(ctx context.Context) error {
		return r.core.messages.FindOne(ctx, messageFilter(tenantID, conversationID, id)).Decode(&doc)
	}); err != nil {
		return Message{}, fmt.Errorf("get message %s: %w", id, notFound(err))
	}
	return doc.message(), nil
}

// List returns the conversation's persisted top-level messages (not replies, not deleted ones, not merely
// accepted ones), by id descending (newest first), keyset-paginated on the id: messages stored between
// page fetches are newer than the cursor and never shift later pages. pageSize goes through PageSize; the
// next (older) page token is "" on the last page. ErrBadPageToken for a token not issued by this list for
// the same tenant and conversation. A conversation not in tenantID lists empty.
func (r *Messages) List(ctx context.Context, tenantID, conversationID string, pageSize int, pageToken string) ([]Message, string, error) {
	return r.list(ctx, tenantID, conversationID, "", pageSize, pageToken)
}

// ListThread is List over the replies of the thread whose root is threadID (the root itself excluded).
// Its page tokens are bound to the thread.
func (r *Messages) ListThread(ctx context.Context, tenantID, conversationID, threadID string, pageSize int, pageToken string) ([]Message, string, error) {
	if threadID == "" {
		return nil, "", fmt.Errorf("list thread: %w", errMissing("thread id"))
	}
	return r.list(ctx, tenantID, conversationID, threadID, pageSize, pageToken)
}

// list serves List (threadID "": thread_id absent) and ListThread, on the index {tenant_id,
// conversation_id, thread_id, _id}.
func (r *Messages) list(ctx context.Context, tenantID, conversationID, threadID string, pageSize int, pageToken string) ([]Message, string, error) {
	size := PageSize(pageSize)
	scope := tokenScope(tenantID, conversationID)
	if threadID != "" {
		scope = tokenScope(tenantID, conversationID, "thread", threadID)
	}
	after, err := decodePageToken(pageToken, tokenMessages, scope)
	if err != nil {
		return nil, "", fmt.Errorf("list messages: %w", err)
	}
	var thread any // nil matches a missing thread_id: a top-level message
	if threadID != "" {
		thread = threadID
	}
	filter := bson.D{
		{Key: "tenant_id", Value: tenantID},
		{Key: "conversation_id", Value: conversationID},
		{Key: "thread_id", Value: thread},
		{Key: "state", Value: string(MessagePersisted)},
	}
	if after != "" {
		filter = append(filter, bson.E{Key: "_id", Value: bson.D{{Key: "$lt", Value: after}}})
	}
	var docs []messageDoc
	if err := r.core.guard.Read(ctx, func(ctx context.Context) error {
		docs = nil
		// Small batches, and no more than one past what fits MaxPageBytes: a page of the largest messages
		// stops after a few dozen documents instead of reading all size+1 from the server.
		cur, err := r.core.messages.Find(ctx, filter, options.Find().
			SetSort(bson.D{{Key: "_id", Value: -1}}).
			SetLimit(int64(size)+1).SetBatchSize(50))
		if err != nil {
			return err
		}
		defer cur.Close(context.WithoutCancel(ctx))
		weight := 0
		for cur.Next(ctx) {
			var d messageDoc
			if err := cur.Decode(&d); err != nil {
				return err
			}
			docs = append(docs, d)
			if weight += d.contentBytes(); weight > MaxPageBytes && len(docs) > 1 {
				break // pageFit below ends the page before this one
			}
		}
		return cur.Err()
	}); err != nil {
		return nil, "", fmt.Errorf("list messages of conversation %s: %w", conversationID, err)
	}
	next := ""
	if n := pageFit(min(len(docs), size), func(i int) int { return docs[i].contentBytes() }); n < len(docs) {
		docs = docs[:n]
		next = encodePageToken(tokenMessages, scope, docs[n-1].ID)
	}
	out := make([]Message, len(docs))
	for i, d := range docs {
		out[i] = d.message()
	}
	return out, next, nil
}

// UpdateBody replaces a message's body, sets EditTime and UpdateTime to now, bumps Version and returns the
// message as stored. expectVersion 0 means no precondition; otherwise a different stored version is
// ErrConflict. ErrNotFound if it does not exist in that tenant and conversation, or is deleted. Mentions
// are left as they are.
func (r *Messages) UpdateBody(ctx context.Context, tenantID, conversationID, id string, expectVersion int64, body string, now time.Time) (Message, error) {
	now = storeTime(now)
	filter := append(messageFilter(tenantID, conversationID, id),
		bson.E{Key: "state", Value: bson.D{{Key: "$ne", Value: string(MessageDeleted)}}})
	if expectVersion != 0 {
		filter = append(filter, bson.E{Key: "version", Value: expectVersion})
	}
	update := bson.D{
		{Key: "$set", Value: bson.D{{Key: "body", Value: body}, {Key: "edit_time", Value: now}, {Key: "update_time", Value: now}}},
		{Key: "$inc", Value: bson.D{{Key: "version", Value: int64(1)}}},
	}
	doc, err := r.findOneAndUpdate(ctx, filter, update)
	if err == nil {
		return doc.message(), nil
	}
	if !errors.Is(err, mongo.ErrNoDocuments) {
		return Message{}, fmt.Errorf("update message %s: %w", id, err)
	}
	// Nothing matched: missing, deleted, or (with a precondition) another version.
	m, err := r.Get(ctx, tenantID, conversationID, id)
	if err != nil {
		return Message{}, fmt.Errorf("update message: %w", err)
	}
	if m.State == MessageDeleted {
		return Message{}, fmt.Errorf("update message %s: deleted: %w", id, ErrNotFound)
	}
	return Message{}, fmt.Errorf("update message %s: version %d, expected %d: %w", id, m.Version, expectVersion, ErrConflict)
}

// Delete replaces a message with its tombstone: State deleted, Body "", Metadata and Mentions removed,
// DeleteTime and UpdateTime now, Version bumped; it returns the tombstone. Idempotent: deleting a deleted
// message returns the tombstone unchanged. ErrNotFound if it does not exist in that tenant and
// conversation.
func (r *Messages) Delete(ctx context.Context, tenantID, conversationID, id string, now time.Time) (Message, error) {
	now = storeTime(now)
	filter := append(messageFilter(tenantID, conversationID, id),
		bson.E{Key: "state", Value: bson.D{{Key: "$ne", Value: string(MessageDeleted)}}})
	update := bson.D{
		{Key: "$set", Value: bson.D{
			{Key: "state", Value: string(MessageDeleted)},
			{Key: "body", Value: ""},
			{Key: "delete_time", Value: now},
			{Key: "update_time", Value: now},
		}},
		{Key: "$unset", Value: bson.D{{Key: "metadata", Value: ""}, {Key: "mentions", Value: ""}}},
		{Key: "$inc", Value: bson.D{{Key: "version", Value: int64(1)}}},
	}
	doc, err := r.findOneAndUpdate(ctx, filter, update)
	if err == nil {
		return doc.message(), nil
	}
	if !errors.Is(err, mongo.ErrNoDocuments) {
		return Message{}, fmt.Errorf("delete message %s: %w", id, err)
	}
	// Already a tombstone, or missing.
	m, err := r.Get(ctx, tenantID, conversationID, id)
	if err != nil {
		return Message{}, fmt.Errorf("delete message: %w", err)
	}
	return m, nil
}

func (r *Messages) findOneAndUpdate(ctx context.Context, filter, update bson.D) (messageDoc, error) {
	var doc messageDoc
	err := r.core.guard.Write(ctx, func(ctx context.Context) error {
		return r.core.messages.FindOneAndUpdate(ctx, filter, update,
			options.FindOneAndUpdate().SetReturnDocument(options.After)).Decode(&doc)
	})
	return doc, err
}
