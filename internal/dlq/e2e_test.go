package dlq_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"google.golang.org/protobuf/types/known/timestamppb"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/config"
	"github.com/msgplatform/platform/internal/dlq"
	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/pipeline"
	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/testenv"
)

// A transient failure (the store stopped) is dead-lettered by the pipeline, stored by the processor once
// the store is back, republished automatically by the scheduler, and lands exactly once.
func TestDeadLetterTransientFailureLandsAfterTheStoreIsBack(t *testing.T) {
	broker := testenv.Kafka(t)
	mongo := testenv.StartMongoServer(t)
	vars := map[string]string{
		"KAFKA_BROKERS": broker, "MONGO_URI": mongo.URI(), "MONGO_DATABASE": "platform", "REDIS_URL": testenv.Redis(t),
		"SHUTDOWN_TIMEOUT": "10s", "KAFKA_SIGNING_KEYS": "test=dlq-test-signing-secret-0123456789abcdef",
	}
	cfg, err := config.Load(func(k string) string { return vars[k] })
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	client, err := store.Connect(ctx, mongo.URI())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Disconnect(context.Background()) })
	st := store.New(client.Database(cfg.MongoDatabase))
	dls := store.NewDeadLetters(client.Database(cfg.MongoDatabase))

	logger := testLogger(t)
	runCtx, cancel := context.WithCancel(context.Background())
	// The pipeline gives a record up as transient after a short outage instead of pausing until the store
	// is back (its default), so the DLQ path is what brings the message home.
	pipe, err := pipeline.Open(ctx, cfg, pipeline.Config{TransientRetryTimeout: 200 * time.Millisecond, StageTimeout: 300 * time.Millisecond,
		RetryInitial: 50 * time.Millisecond}, prometheus.NewRegistry(), logger)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	dq, err := dlq.Open(ctx, cfg, dlq.Config{Interval: 20 * time.Millisecond,
		Policy: dlq.Policy{MaxAttempts: 1000, InitialDelay: 50 * time.Millisecond}}, reg, logger)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := pipe.Run(runCtx); err != nil {
			t.Errorf("pipeline: %v", err)
		}
	})
	wg.Go(func() {
		if err := dq.Run(runCtx); err != nil {
			t.Errorf("dlq: %v", err)
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		closeCtx, cancelClose := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancelClose()
		_ = pipe.Close(closeCtx)
		_ = dq.Close(closeCtx)
	})

	conv, err := st.Conversations.Create(ctx, store.Conversation{TenantID: "t1", Title: "c", CreatorID: "alice"}, []store.Member{{UserID: "bob"}})
	if err != nil {
		t.Fatal(err)
	}
	producer, err := kafka.NewProducer(cfg.KafkaBrokers, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	admin := kadm.NewClient(producer)
	dlqRecords := func() int64 {
		offs, err := admin.ListEndOffsets(ctx, kafka.TopicDLQ)
		if err != nil {
			t.Fatal(err)
		}
		var n int64
		offs.Each(func(o kadm.ListedOffset) { n += o.Offset })
		return n
	}

	mongo.Stop()
	in := &platformv1.InboundMessage{Id: ulid.Make().String(), TenantId: "t1", ConversationId: conv.ID, SenderId: "bob",
		Body: "through the outage", SendTime: timestamppb.Now(), SenderRoles: []string{"user"}}
	rec, err := envelope.InboundRecord(in, cfg.KafkaSigningKeys)
	if err != nil {
		t.Fatal(err)
	}
	if err := producer.ProduceSync(ctx, rec).FirstErr(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the transient failure on messages.dlq", func() bool { return dlqRecords() == 1 })
	mongo.Start()

	var m store.Message
	eventually(t, "the message persisted", func() bool {
		m, err = st.Messages.Get(ctx, "t1", conv.ID, in.GetId())
		return err == nil
	})
	if m.State != store.MessagePersisted || m.Body != "through the outage" {
		t.Errorf("persisted %+v", m)
	}
	var entries []store.DeadLetter
	eventually(t, "the entry marked retried", func() bool {
		entries, _, err = dls.List(ctx, store.DeadLetterFilter{}, 0, "")
		return err == nil && len(entries) == 1 && entries[0].Status == store.DeadLetterRetried
	})
	d := entries[0]
	if d.ErrorClass != dlq.ClassTransient || d.TenantID != "t1" || d.MessageID != in.GetId() || d.Attempts < 1 || d.Retries != 1 {
		t.Errorf("dead letter: %+v", d)
	}
	msgs, _, err := st.Messages.List(ctx, "t1", conv.ID, 0, "")
	if err != nil || len(msgs) != 1 {
		t.Errorf("%d messages, want exactly 1 (%v)", len(msgs), err)
	}
	if n := dlqRecords(); n != 1 {
		t.Errorf("%d records on messages.dlq, want 1: the retried record must not fail again", n)
	}
}
