package pipeline

import (
	"context"
	"fmt"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/msgplatform/platform/internal/envelope"
)

// Verifier checks a record's signature: *envelope.Keys.
type Verifier interface {
	Verify(r *kgo.Record) error
}

// authenticateStage runs before any stage reads the record: a record over envelope.MaxRecordBytes, or
// one without a valid signature of the platform's keys (unsigned, tampered, unknown key), fails for good.
// No later stage ever sees identity or roles from a record nobody vouched for.
type authenticateStage struct{ keys Verifier }

func (authenticateStage) Name() string { return StageAuthenticate }

func (s authenticateStage) Process(_ context.Context, b *Batch) {
	for _, it := range b.Items {
		if err := envelope.CheckSize(it.Record); err != nil {
			it.Fail(Permanent, err)
			continue
		}
		if err := s.keys.Verify(it.Record); err != nil {
			it.Fail(Permanent, fmt.Errorf("verify signature: %w", err))
		}
	}
}
