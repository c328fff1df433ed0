package store

import (
	"context"
	"fmt"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// ListAfter returns the conversation's persisted messages (not deleted ones, not merely accepted ones)
// whose id is greater than afterID, by id ascending (oldest first), at most limit of them (limit ≤ 0:
// none). It serves a stream's resume point: a caller that wants to know whether more follow asks for
// one more than it will use. A conversation not in tenantID lists empty.
func (r *Messages) ListAfter(ctx context.Context, tenantID, conversationID, afterID string, limit int) ([]Message, error) {
	if limit <= 0 {
		return nil, nil
	}
	filter := bson.D{
		{Key: "tenant_id", Value: tenantID},
		{Key: "conversation_id", Value: conversationID},
		{Key: "state", Value: string(MessagePersisted)},
		{Key: "_id", Value: bson.D{{Key: "$gt", Value: afterID}}},
	}
	var docs []messageDoc
	if err := r.core.guard.Read(ctx, func(ctx context.Context) error {
		docs = nil
		cur, err := r.core.messages.Find(ctx, filter, options.Find().
			SetSort(bson.D{{Key: "_id", Value: 1}}).
			SetLimit(int64(limit)))
		if err != nil {
			return err
		}
		return cur.All(ctx, &docs)
	}); err != nil {
		return nil, fmt.Errorf("list messages of conversation %s after %s: %w", conversationID, afterID, err)
	}
	out := make([]Message, len(docs))
	for i, d := range docs {
		out[i] = d.message()
	}
	return out, nil
}
