package pipeline

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/store"
)

// benchMessages is the backlog each approach drains per operation.
const benchMessages = 5000

// BenchmarkIngest compares, on one FerretDB and one kfake, the time to store a backlog of benchMessages
// inbound messages: the pipeline (every stage, bulk writes, events); a plain consumer decoding each record
// and storing it with one InsertOne; and the store's own ceiling, unordered InsertMany of the same
// documents in chunks of 500 with no Kafka at all. It logs the ratios. Run it with
//
//	go test -run '^$' -bench Ingest -benchtime 1x ./internal/pipeline/
func BenchmarkIngest(b *testing.B) {
	e := newEnv(b)
	w := e.workload("t1", 20, 3)
	rates := map[string]float64{}
	run := func(name string, drain func(recs []*kgo.Record, msgs []*platformv1.InboundMessage)) {
		b.Run(name, func(b *testing.B) {
			var total time.Duration
			for range b.N {
				b.StopTimer()
				first := len(w.msgs)
				recs := w.next(benchMessages)
				msgs := w.msgs[first:]
				b.StartTimer()
				start := time.Now()
				drain(recs, msgs)
				total += time.Since(start)
			}
			rate := float64(b.N*benchMessages) / total.Seconds()
			rates[name] = rate
			b.ReportMetric(rate, "msgs/s")
		})
	}
	stored := func() int64 {
		n, err := e.messagesCollection().CountDocuments(context.Background(), map[string]any{})
		if err != nil {
			b.Fatal(err)
		}
		return n
	}

	run("pipeline", func(recs []*kgo.Record, _ []*platformv1.InboundMessage) {
		want := stored() + int64(len(recs))
		b.StopTimer()
		e.produce(recs...) // the backlog exists before the pipeline starts
		b.StartTimer()
		p := e.start(Config{})
		// Watch the pipeline's own counter: counting documents would load FerretDB, the bottleneck.
		ctx := testCtx(b)
		for p.metric("platform_pipeline_messages_total") < float64(len(recs)) && ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
		}
		_ = p.stop()
		if got := stored(); got != want {
			b.Fatalf("%d messages stored, want %d", got, want)
		}
	})

	group := 0
	run("insert_one_consumer", func(recs []*kgo.Record, _ []*platformv1.InboundMessage) {
		b.StopTimer()
		// A new group positioned at the end of the topic, so it reads exactly the new backlog.
		group++
		name := fmt.Sprintf("bench-insert-one-%d", group)
		ends, err := e.admin.ListEndOffsets(context.Background(), kafka.TopicInbound)
		if err != nil {
			b.Fatal(err)
		}
		if err := e.admin.CommitAllOffsets(context.Background(), name, ends.Offsets()); err != nil {
			b.Fatal(err)
		}
		e.produce(recs...)
		b.StartTimer()
		insertOneConsumer(b, e, name, len(recs))
	})

	run("insert_many_ceiling", func(_ []*kgo.Record, msgs []*platformv1.InboundMessage) {
		docs := make([]store.Message, len(msgs))
		for i, in := range msgs {
			docs[i] = store.Message{ID: in.GetId(), TenantID: in.GetTenantId(), ConversationID: in.GetConversationId(),
				SenderID: in.GetSenderId(), Body: in.GetBody(), Metadata: in.GetMetadata(), RequestID: in.GetRequestId(),
				CreateTime: in.GetSendTime().AsTime()}
		}
		for i := 0; i < len(docs); i += store.DefaultBulkMaxDocs {
			if _, _, err := e.st.Messages.InsertMany(context.Background(), docs[i:min(i+store.DefaultBulkMaxDocs, len(docs))]); err != nil {
				b.Fatal(err)
			}
		}
	})

	if rates["insert_one_consumer"] > 0 && rates["insert_many_ceiling"] > 0 {
		b.Logf("pipeline %.0f msgs/s = %.1f× the InsertOne consumer (%.0f msgs/s) and %.0f%% of the InsertMany ceiling (%.0f msgs/s)",
			rates["pipeline"], rates["pipeline"]/rates["insert_one_consumer"], rates["insert_one_consumer"],
			100*rates["pipeline"]/rates["insert_many_ceiling"], rates["insert_many_ceiling"])
	}
}

// insertOneConsumer is the naive baseline: a group consumer storing each record with its own insert
// command (Messages.InsertMany of one message: on the wire the same single-document insert as InsertOne),
// then committing what it polled, until it stored n records.
func insertOneConsumer(b *testing.B, e *env, group string, n int) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.cfg.KafkaBrokers...), kgo.ConsumerGroup(group), kgo.ConsumeTopics(kafka.TopicInbound),
		kgo.DisableAutoCommit(), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	ctx := testCtx(b)
	for done := 0; done < n; {
		fetches := cl.PollRecords(ctx, 1000)
		if ctx.Err() != nil {
			b.Fatal("insert-one consumer: deadline")
		}
		fetches.EachRecord(func(r *kgo.Record) {
			in := &platformv1.InboundMessage{}
			if err := proto.Unmarshal(r.Value, in); err != nil {
				b.Fatal(err)
			}
			if _, _, err := e.st.Messages.InsertMany(ctx, []store.Message{{ID: in.GetId(), TenantID: in.GetTenantId(),
				ConversationID: in.GetConversationId(), SenderID: in.GetSenderId(), Body: in.GetBody(),
				Metadata: in.GetMetadata(), RequestID: in.GetRequestId(), CreateTime: in.GetSendTime().AsTime()}}); err != nil {
				b.Fatal(err)
			}
			done++
		})
		if err := cl.CommitUncommittedOffsets(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
