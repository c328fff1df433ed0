package store

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// Read state: a member's read cursor is a field of its membership document (last_read_message_id), moved
// only forward with $max (message ids are ULIDs: a greater id is a newer message), so a repeated or late
// move is a no-op and concurrent moves converge on the newest. The unread count is not stored: it is
// counted when read, from the messages after the cursor (see UnreadCounts). Removing the member deletes
// its document, and its read state with it.

// MarkRead moves userID's read cursor of the conversation forward to messageID (never backward) and
// returns the cursor before and after. ErrNotFound if the user is not a member. The caller checks that
// messageID is a message of the conversation.
func (r *Members) MarkRead(ctx context.Context, tenantID, conversationID, userID, messageID string) (before, after string, err error) {
	if messageID == "" {
		return "", "", fmt.Errorf("mark read: %w", errMissing("message id"))
	}
	var doc memberDoc
	err = r.core.guard.Write(ctx, func(ctx context.Context) error {
		return r.core.memberships.FindOneAndUpdate(ctx, membershipFilter(tenantID, conversationID, userID),
			bson.D{{Key: "$max", Value: bson.D{{Key: "last_read_message_id", Value: messageID}}}},
			options.FindOneAndUpdate().SetReturnDocument(options.Before)).Decode(&doc)
	})
	if err != nil {
		return "", "", fmt.Errorf("mark read of member %s of conversation %s: %w", userID, conversationID, notFound(err))
	}
	return doc.LastRead, max(doc.LastRead, messageID), nil
}

// Cursor is a read cursor to move forward: the member's, to MessageID.
type Cursor struct {
	TenantID, ConversationID, UserID, MessageID string
}

// AdvanceCursors moves each cursor forward (never backward) with one unordered bulk write of $max
// updates by _id. A cursor of someone who is not a member changes nothing. Idempotent.
func (r *Members) AdvanceCursors(ctx context.Context, cursors []Cursor) error {
	if len(cursors) == 0 {
		return nil
	}
	models := make([]mongo.WriteModel, len(cursors))
	for i, c := range cursors {
		models[i] = mongo.NewUpdateOneModel().
			SetFilter(bson.D{{Key: "_id", Value: MembershipID(c.TenantID, c.ConversationID, c.UserID)}}).
			SetUpdate(bson.D{{Key: "$max", Value: bson.D{{Key: "last_read_message_id", Value: c.MessageID}}}})
	}
	err := r.core.guard.Write(ctx, func(ctx context.Context) error {
		_, err := r.core.memberships.BulkWrite(ctx, models, options.BulkWrite().SetOrdered(false))
		return err
	})
	if err != nil {
		return fmt.Errorf("advance %d read cursors: %w", len(cursors), err)
	}
	return nil
}

// ReadCursors returns userID's read cursors of the conversations among conversationIDs it is a member
// of ("" for a member that has read nothing yet; absent for a non-member), with one query on _id.
func (r *Members) ReadCursors(ctx context.Context, tenantID, userID string, conversationIDs []string) (map[string]string, error) {
	out := make(map[string]string, len(conversationIDs))
	if len(conversationIDs) == 0 {
		return out, nil
	}
	ids := make([]string, len(conversationIDs))
	for i, c := range conversationIDs {
		ids[i] = MembershipID(tenantID, c, userID)
	}
	var docs []memberDoc
	if err := r.core.guard.Read(ctx, func(ctx context.Context) error {
		docs = nil
		cur, err := r.core.memberships.Find(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}})
		if err != nil {
			return err
		}
		return cur.All(ctx, &docs)
	}); err != nil {
		return nil, fmt.Errorf("read cursors of %s: %w", userID, err)
	}
	for _, d := range docs {
		if d.TenantID == tenantID && d.UserID == userID {
			out[d.ConversationID] = d.LastRead
		}
	}
	return out, nil
}

// UnreadCounts counts, per conversation of cursors (conversation id → read cursor, "" for none), the
// persisted messages after the cursor not sent by userID, top-level and replies alike, with one
// aggregation: a $or of one clause per conversation, each a range on the {tenant_id, conversation_id,
// _id} index on MongoDB, so the cost is the unread messages, not the conversations' history. (FerretDB
// scans the collection once per call.) A conversation with nothing unread is absent from the answer.
func (r *Messages) UnreadCounts(ctx context.Context, tenantID, userID string, cursors map[string]string) (map[string]int64, error) {
	out := make(map[string]int64, len(cursors))
	if len(cursors) == 0 {
		return out, nil
	}
	clauses := make(bson.A, 0, len(cursors))
	for conv, cursor := range cursors {
		c := bson.D{{Key: "tenant_id", Value: tenantID}, {Key: "conversation_id", Value: conv}}
		if cursor != "" {
			c = append(c, bson.E{Key: "_id", Value: bson.D{{Key: "$gt", Value: cursor}}})
		}
		clauses = append(clauses, c)
	}
	pipeline := mongo.Pipeline{
		{{Key: "$match", Value: bson.D{
			{Key: "$or", Value: clauses},
			{Key: "state", Value: string(MessagePersisted)},
			{Key: "sender_id", Value: bson.D{{Key: "$ne", Value: userID}}},
		}}},
		{{Key: "$group", Value: bson.D{{Key: "_id", Value: "$conversation_id"}, {Key: "n", Value: bson.D{{Key: "$sum", Value: 1}}}}}},
	}
	var rows []struct {
		ID string `bson:"_id"`
		N  int64  `bson:"n"`
	}
	if err := r.core.guard.Read(ctx, func(ctx context.Context) error {
		rows = nil
		cur, err := r.core.messages.Aggregate(ctx, pipeline)
		if err != nil {
			return err
		}
		return cur.All(ctx, &rows)
	}); err != nil {
		return nil, fmt.Errorf("count unread messages of %s: %w", userID, err)
	}
	for _, row := range rows {
		out[row.ID] = row.N
	}
	return out, nil
}

// LastSent returns, per conversation among conversationIDs, the id of userID's newest persisted message
// (absent where it sent none): sending reads what came before, so a member's effective read cursor is
// the greater of its stored cursor and this. On MongoDB a backward walk of {tenant_id, conversation_id,
// _id} per conversation, filtered by sender (FerretDB scans). Computed on read rather than
// written at send time: membership updates beside the pipeline's inserts stall FerretDB's single writer.
func (r *Messages) LastSent(ctx context.Context, tenantID, userID string, conversationIDs []string) (map[string]string, error) {
	out := make(map[string]string, len(conversationIDs))
	// One newest-first lookup per conversation (FerretDB implements neither $max nor $first in $group).
	for _, conv := range conversationIDs {
		var doc struct {
			ID string `bson:"_id"`
		}
		err := r.core.guard.Read(ctx, func(ctx context.Context) error {
			return r.core.messages.FindOne(ctx, bson.D{
				{Key: "tenant_id", Value: tenantID}, {Key: "conversation_id", Value: conv},
				{Key: "sender_id", Value: userID}, {Key: "state", Value: string(MessagePersisted)},
			}, options.FindOne().SetSort(bson.D{{Key: "_id", Value: -1}}).SetProjection(bson.D{{Key: "_id", Value: 1}})).Decode(&doc)
		})
		switch {
		case errors.Is(err, mongo.ErrNoDocuments):
			continue
		case err != nil:
			return nil, fmt.Errorf("newest message sent by %s: %w", userID, err)
		}
		out[conv] = doc.ID
	}
	return out, nil
}

// ByIDs returns the messages among ids, by id, whatever their tenant or conversation: the caller checks
// TenantID and ConversationID. The pipeline reads a batch's thread roots with it: one FindOne by _id
// alone per id (a batch has few roots), the one filter FerretDB answers without a collection scan.
func (r *Messages) ByIDs(ctx context.Context, ids []string) (map[string]Message, error) {
	out := make(map[string]Message, len(ids))
	for _, id := range ids {
		m, err := r.byID(ctx, id)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out[id] = m
	}
	return out, nil
}

func (r *Messages) byID(ctx context.Context, id string) (Message, error) {
	var doc messageDoc
	if err := r.core.guard.Read(ctx, func(ctx context.Context) error {
		return r.core.messages.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&doc)
	}); err != nil {
		return Message{}, fmt.Errorf("get message %s: %w", id, notFound(err))
	}
	return doc.message(), nil
}

// Thread names a thread, its root, and the accept time of the newest reply of it the caller stored.
type Thread struct {
	TenantID, ConversationID, RootID string
	// LastReplyTime is the newest CreateTime among the replies the caller just stored (zero: unknown).
	LastReplyTime time.Time
}

// RecountThreads sets each root's reply_count from its replies as stored (every reply, deleted ones
// included, so the count only grows) and raises its last_reply_time to the thread's LastReplyTime, and
// returns the roots as they are after. Counting rather than incrementing makes it exact however often a
// batch is redelivered: a reply stored twice is one document, and a recount after a crash between the
// inserts and the recount catches up; last_reply_time is a $max, as idempotent. A root's counters only
// move forward ($max), so concurrent recounts converge on the largest, and a recount that changes
// nothing does not bump the root's version. A root that does not
// exist is left out of the answer.
//
// The counts of all the threads are one aggregation (a $or of {tenant_id, conversation_id, thread_id}
// clauses, each an index range on MongoDB; FerretDB scans the collection once), then per root a read by
// _id and, when it is behind, a findAndModify by _id raising the counters with $max (monotonic whatever
// the order of concurrent recounts).
func (r *Messages) RecountThreads(ctx context.Context, threads []Thread, now time.Time) ([]Message, error) {
	if len(threads) == 0 {
		return nil, nil
	}
	now = storeTime(now)
	clauses := make(bson.A, len(threads))
	for i, th := range threads {
		clauses[i] = bson.D{{Key: "tenant_id", Value: th.TenantID}, {Key: "conversation_id", Value: th.ConversationID}, {Key: "thread_id", Value: th.RootID}}
	}
	var rows []struct {
		Root string `bson:"_id"`
		N    int64  `bson:"n"`
	}
	if err := r.core.guard.Read(ctx, func(ctx context.Context) error {
		rows = nil
		cur, err := r.core.messages.Aggregate(ctx, mongo.Pipeline{
			{{Key: "$match", Value: bson.D{{Key: "$or", Value: clauses}}}},
			{{Key: "$group", Value: bson.D{{Key: "_id", Value: "$thread_id"}, {Key: "n", Value: bson.D{{Key: "$sum", Value: 1}}}}}},
		})
		if err != nil {
			return err
		}
		return cur.All(ctx, &rows)
	}); err != nil {
		return nil, fmt.Errorf("count the replies of %d threads: %w", len(threads), err)
	}
	counts := make(map[string]int32, len(rows))
	for _, row := range rows {
		counts[row.Root] = int32(min(row.N, math.MaxInt32))
	}
	var out []Message
	for _, th := range threads {
		n, ok := counts[th.RootID]
		if !ok {
			continue // no reply stored (yet)
		}
		// Read, then (if behind) raise with $max, both by _id alone: the one filter FerretDB answers
		// without a scan. The root's tenant and conversation were checked before its replies were stored.
		m, err := r.byID(ctx, th.RootID)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return out, fmt.Errorf("recount thread: %w", err)
		}
		if m.TenantID != th.TenantID || m.ConversationID != th.ConversationID {
			continue
		}
		last := storeTime(th.LastReplyTime)
		if m.ReplyCount >= n && (th.LastReplyTime.IsZero() || (m.LastReplyTime != nil && !m.LastReplyTime.Before(last))) {
			out = append(out, m) // up to date already (a redelivery)
			continue
		}
		maxes := bson.D{{Key: "reply_count", Value: n}}
		if !th.LastReplyTime.IsZero() {
			maxes = append(maxes, bson.E{Key: "last_reply_time", Value: last})
		}
		doc, err := r.findOneAndUpdate(ctx, bson.D{{Key: "_id", Value: th.RootID}}, bson.D{
			{Key: "$max", Value: maxes},
			{Key: "$set", Value: bson.D{{Key: "update_time", Value: now}}},
			{Key: "$inc", Value: bson.D{{Key: "version", Value: int64(1)}}},
		})
		if err != nil {
			return out, fmt.Errorf("recount thread %s: %w", th.RootID, err)
		}
		out = append(out, doc.message())
	}
	return out, nil
}
