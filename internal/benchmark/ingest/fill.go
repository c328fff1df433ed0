package ingest

import (
	"context"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/store"
)

// FillBacklog writes n messages of the same realistic workload MeasureIngest uses to messages.inbound on
// brokers, after creating their conversations and memberships in st (the default shape: DefaultTenants ×
// DefaultConversations × DefaultMembers). Records are generated and produced in chunks, so filling a
// million-record backlog holds only one chunk in memory here (kfake keeps what it was sent).
func FillBacklog(ctx context.Context, st *store.Store, brokers string, n int) error {
	w, err := createConversations(ctx, st, DefaultTenants, DefaultConversations, DefaultMembers, 2)
	if err != nil {
		return err
	}
	producer, err := kafka.NewProducer([]string{brokers}, time.Minute)
	if err != nil {
		return err
	}
	defer producer.Close()
	const chunk = 10_000
	recs := make([]*kgo.Record, 0, chunk)
	for done := 0; done < n; done += len(recs) {
		recs = recs[:0]
		now := time.Now()
		for range min(chunk, n-done) {
			rec, err := record(w.message(now))
			if err != nil {
				return err
			}
			recs = append(recs, rec)
		}
		if err := producer.ProduceSync(ctx, recs...).FirstErr(); err != nil {
			return fmt.Errorf("produce records %d-%d of the backlog: %w", done, done+len(recs), err)
		}
	}
	return nil
}
