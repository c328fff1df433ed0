package pipeline

import (
	"context"
	"fmt"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/types/known/timestamppb"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
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

func (s notifyStage) Process(ctx context.Context, b *Batch) {
	evs := make([]*platformv1.Event, len(b.Items))
	for i, it := range b.Items {
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
	for i, err := range s.events.PublishBatch(ctx, evs) {
		if err != nil {
			b.Items[i].Fail(Transient, fmt.Errorf("publish persisted event: %w", err))
		}
	}
}
