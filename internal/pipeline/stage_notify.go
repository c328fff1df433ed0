package pipeline

import (
	"context"
	"fmt"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/types/known/timestamppb"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/events"
	"github.com/msgplatform/platform/internal/protoconv"
)

// Producer is the part of a franz-go client the pipeline produces dead letters with.
type Producer interface {
	ProduceSync(ctx context.Context, rs ...*kgo.Record) kgo.ProduceResults
}

// Events publishes events to messages.events: *events.Publisher.
type Events interface {
	// PublishBatch produces the events in order and waits for all their acknowledgements; one error per
	// event, nil when acknowledged.
	PublishBatch(ctx context.Context, evs []*platformv1.Event) []error
}

// notifyStage publishes an EVENT_TYPE_MESSAGE_PERSISTED event per stored message (duplicates included: the
// event of a redelivered message may never have gone out), keyed by conversation id, all of a batch at
// once and in message order (Kafka keeps a partition's order; the acknowledgements are awaited together).
// The event id is the message id, so a redelivery repeats the same event id and consumers that
// deduplicate on it see it once.
type notifyStage struct{ events Events }

func (notifyStage) Name() string { return StageNotify }

// A reply whose root persist recounted is followed by the root's EVENT_TYPE_MESSAGE_UPDATED (its new
// reply_count and last_reply_time), with the id the change-stream watcher gives the same change
// (events.MessageEventID), so the two, and the repeats of a redelivery, deduplicate.
func (s notifyStage) Process(ctx context.Context, b *Batch) {
	evs := make([]*platformv1.Event, len(b.Items), len(b.Items)+1)
	owner := make([]int, len(b.Items), len(b.Items)+1) // the item each event is for
	for i, it := range b.Items {
		owner[i] = i
		m := it.Message
		evs[i] = &platformv1.Event{
			Id:             m.ID,
			Type:           platformv1.EventType_EVENT_TYPE_MESSAGE_PERSISTED,
			TenantId:       m.TenantID,
			ConversationId: m.ConversationID,
			ActorId:        m.SenderID,
			RequestId:      m.RequestID,
			Payload:        &platformv1.Event_Message{Message: protoconv.MessageToProto(m)},
		}
		if !m.PersistTime.IsZero() {
			evs[i].EventTime = timestamppb.New(m.PersistTime)
		}
	}
	for i, it := range b.Items {
		if r := it.Root; r != nil {
			evs = append(evs, &platformv1.Event{
				Id:             events.MessageEventID(r.ID, r.Version),
				Type:           platformv1.EventType_EVENT_TYPE_MESSAGE_UPDATED,
				TenantId:       r.TenantID,
				ConversationId: r.ConversationID,
				ActorId:        it.Message.SenderID,
				RequestId:      it.Message.RequestID,
				EventTime:      timestamppb.New(r.UpdateTime),
				Payload:        &platformv1.Event_Message{Message: protoconv.MessageToProto(*r)},
			})
			owner = append(owner, i)
		}
	}
	for k, err := range s.events.PublishBatch(ctx, evs) {
		if err != nil && !b.Items[owner[k]].Failed() {
			b.Items[owner[k]].Fail(Transient, fmt.Errorf("publish persisted event: %w", err))
		}
	}
}
