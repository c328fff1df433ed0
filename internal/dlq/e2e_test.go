package dlq_test

import (
	"context"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/twmb/franz-go/pkg/kadm"
	"google.golang.org/protobuf/types/known/timestamppb"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/app"
	"github.com/msgplatform/platform/internal/app/apptest"
	"github.com/msgplatform/platform/internal/dlq"
	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/testenv"
)

// A transient failure (the store stopped) is dead-lettered by the pipeline, stored by the processor once
// the store is back, republished automatically by the scheduler, and lands exactly once. The pipeline
// process runs as services/pipeline runs it (app.Run with the pipeline role).
func TestDeadLetterTransientFailureLandsAfterTheStoreIsBack(t *testing.T) {
	broker := testenv.Kafka(t)
	mongo := testenv.StartMongoServer(t)
	cfg := testenv.Config(t, map[string]string{
		"KAFKA_BROKERS": broker, "MONGO_URI": mongo.URI(), "MONGO_DATABASE": "platform", "REDIS_URL": testenv.Redis(t),
		"SHUTDOWN_TIMEOUT": "10s",
		// The pipeline gives a record up as transient after a short outage instead of pausing until the
		// store is back (its default), so the DLQ path is what brings the message home. (Its backoff's
		// first delay, 100 ms by default, has no variable.)
		"PIPELINE_TRANSIENT_RETRY_TIMEOUT": "200ms", "PIPELINE_STAGE_TIMEOUT": "300ms",
		// The scheduler retries soon and never parks the entry while the store is still coming back. (Its
		// pass interval, 1 s by default, has no variable.)
		"DLQ_MAX_ATTEMPTS": "1000", "DLQ_RETRY_INITIAL_DELAY": "50ms",
	})
	ctx := testCtx(t)
	client, err := store.Connect(ctx, mongo.URI())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Disconnect(context.Background()) })
	st := store.New(client.Database(cfg.MongoDatabase))
	dls := store.NewDeadLetters(client.Database(cfg.MongoDatabase))

	apptest.Start(t, cfg, app.Roles{Pipeline: true}, testLogger(t))

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
	testenv.Eventually(t, "the transient failure on messages.dlq", 0, func() bool { return dlqRecords() == 1 })
	mongo.Start()

	var m store.Message
	testenv.Eventually(t, "the message persisted", 0, func() bool {
		m, err = st.Messages.Get(ctx, "t1", conv.ID, in.GetId())
		return err == nil
	})
	if m.State != store.MessagePersisted || m.Body != "through the outage" {
		t.Errorf("persisted %+v", m)
	}
	var entries []store.DeadLetter
	testenv.Eventually(t, "the entry marked retried", 0, func() bool {
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
