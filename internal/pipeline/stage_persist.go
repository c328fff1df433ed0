package pipeline

import (
	"context"
	"errors"
	"fmt"

	"github.com/msgplatform/platform/internal/store"
)

// Writer stores messages in bulk: *store.BulkWriter.
type Writer interface {
	Write(ctx context.Context, msgs []store.Message) []store.BulkResult
}

// persistStage stores the batch's messages through the bulk writer (one unordered InsertMany shared with
// the other partitions' batches), _id = message id. A duplicate is a redelivery of a stored message:
// success, and the item carries the message as stored.
type persistStage struct{ w Writer }

func (persistStage) Name() string { return StagePersist }

func (s persistStage) Process(ctx context.Context, b *Batch) {
	batch := b.Items
	msgs := make([]store.Message, len(batch))
	for i, it := range batch {
		msgs[i] = it.Message
	}
	for i, res := range s.w.Write(ctx, msgs) {
		it := batch[i]
		switch {
		case errors.Is(res.Err, store.ErrPermanent):
			it.Fail(Permanent, fmt.Errorf("store message: %w", res.Err))
		case res.Err != nil:
			it.Fail(Transient, fmt.Errorf("store message: %w", res.Err))
		case res.Duplicate && (res.Message.TenantID != msgs[i].TenantID || res.Message.ConversationID != msgs[i].ConversationID):
			it.Fail(Permanent, fmt.Errorf("store message: id %s is already used by a message of another conversation", msgs[i].ID))
		default:
			it.Message, it.Duplicate = res.Message, res.Duplicate
		}
	}
}
