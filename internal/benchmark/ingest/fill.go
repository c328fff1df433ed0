package ingest

import (
	"context"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/msgplatform/platform/internal/benchmark/ingest/workload"
	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/testenv"
)

// fillChunk is how many records are generated, then produced, at a time: a million-record backlog holds
// only one chunk in memory here (kfake keeps what it was sent).
const fillChunk = 10_000

// signingKeys are the keys of the pipeline's configuration in the benchmarks (testenv.SigningKeysSpec),
// with which the gateway would have signed the records.
var signingKeys = func() *envelope.Keys {
	k, err := envelope.ParseKeys(testenv.SigningKeysSpec)
	if err != nil {
		panic(err)
	}
	return k
}()

// FillBacklog writes n messages of the ingest workload (protobuf, as SendMessage produces them, signed
// with testenv.SigningKeysSpec) to messages.inbound on brokers, after creating their conversations and
// memberships in st (the default shape: 300 conversations of 5 members over 3 tenants).
func FillBacklog(ctx context.Context, st *store.Store, brokers string, n int) error {
	w := workload.New(1, workload.Shape{})
	if err := w.Create(ctx, st); err != nil {
		return err
	}
	producer, err := kafka.NewProducer([]string{brokers}, time.Minute)
	if err != nil {
		return fmt.Errorf("kafka producer: %w", err)
	}
	defer producer.Close()
	return fill(ctx, producer, w, workload.Protobuf, n)
}

// fill produces the next n messages of w, encoded as enc and signed, to messages.inbound.
func fill(ctx context.Context, producer *kgo.Client, w *workload.Workload, enc workload.Encoding, n int) error {
	recs := make([]*kgo.Record, 0, min(n, fillChunk))
	for done := 0; done < n; done += len(recs) {
		recs = recs[:0]
		for range min(fillChunk, n-done) {
			rec, err := workload.Record(w.Next(), enc, signingKeys)
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
