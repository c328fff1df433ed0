package pipeline

import (
	"context"

	"github.com/msgplatform/platform/internal/envelope"
)

// deserializeStage decodes the record's value into a platform.v1.InboundMessage (envelope.DecodeInbound:
// protojson when the content-type header is application/json, protobuf otherwise).
type deserializeStage struct{}

func (deserializeStage) Name() string { return StageDeserialize }

func (deserializeStage) Process(_ context.Context, batch []*Item) {
	for _, it := range batch {
		msg, err := envelope.DecodeInbound(it.Record)
		if err != nil {
			it.Fail(Permanent, err)
			continue
		}
		it.Inbound = msg
	}
}
