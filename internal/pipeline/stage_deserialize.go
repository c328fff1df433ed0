package pipeline

import (
	"context"

	"github.com/msgplatform/platform/internal/envelope"
)

// deserializeStage decodes the record's value into a platform.v1.InboundMessage (envelope.DecodeInbound:
// protojson when the content-type header is application/json, protobuf otherwise).
type deserializeStage struct{}

func (deserializeStage) Name() string { return StageDeserialize }

func (deserializeStage) Process(_ context.Context, b *Batch) {
	for _, it := range b.Items {
		msg, err := envelope.DecodeInbound(it.Record)
		if err != nil {
			it.Fail(Permanent, err)
			continue
		}
		it.Inbound = msg
	}
}
