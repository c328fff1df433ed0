package pipeline

import (
	"context"

	"github.com/msgplatform/platform/internal/envelope"
)

// validateStage checks the envelope with envelope.Validate, the very rules SendMessage applied before
// accepting it: a message the API accepted is never refused here.
type validateStage struct{}

func (validateStage) Name() string { return StageValidate }

func (validateStage) Process(_ context.Context, b *Batch) {
	for _, it := range b.Items {
		if err := envelope.Validate(it.Inbound); err != nil {
			it.Fail(Permanent, err)
		}
	}
}
