package devstack_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/testenv"
)

// TestKafkaTrustBoundary is issue 13's "done when", from outside, as kcat and grpcurl would do it against
// `make run`: a plain Kafka client (no signing key) and the public gRPC API.
//
//	(a) a ~1 MB record, then a message sent through the API to another tenant's conversation: the later
//	    message is stored within seconds, and the big record is listed by ListDeadLetters;
//	(b) a record claiming sender_roles ["service"] from a non-member, and one in a real member's name that
//	    did not come through the API: neither is stored, both are dead-lettered at authenticate;
//	(c) a forged messages.dlq entry pointing at messages.events is never republished there.
func TestKafkaTrustBoundary(t *testing.T) {
	_, addrs, cancel, _ := startDevstack(t)
	defer cancel()
	conn, err := grpc.NewClient(addrs.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	convs, msgs, dls := platformv1.NewConversationServiceClient(conn), platformv1.NewMessageServiceClient(conn),
		platformv1.NewDeadLetterServiceClient(conn)
	as := func(sub, tenant string, roles ...string) context.Context {
		tok, err := auth.MintHS256([]byte(auth.DevHMACSecret), auth.Principal{Subject: sub, TenantID: tenant, Roles: roles}, time.Hour, "", "")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		t.Cleanup(cancel)
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}
	alice, carol, ops := as("alice", "t1", "user"), as("carol", "t2", "user"), as("ops", "t0", "platform_operator") // unsigned records belong to no tenant
	a, err := convs.CreateConversation(alice, &platformv1.CreateConversationRequest{Title: "alice's", MemberIds: []string{"bob"}})
	if err != nil {
		t.Fatal(err)
	}
	c, err := convs.CreateConversation(carol, &platformv1.CreateConversationRequest{Title: "carol's"})
	if err != nil {
		t.Fatal(err)
	}
	convA, convC := a.GetConversation().GetId(), c.GetConversation().GetId()

	// A producer with produce access to the topics and no signing key: what kcat is.
	kc, err := kgo.NewClient(kgo.SeedBrokers(addrs.Kafka), kgo.RecordDeliveryTimeout(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	produce := func(recs ...*kgo.Record) {
		t.Helper()
		if err := kc.ProduceSync(context.Background(), recs...).FirstErr(); err != nil {
			t.Fatalf("produce: %v", err)
		}
	}
	forged := func(sender, body string, roles ...string) *kgo.Record {
		in := &platformv1.InboundMessage{Id: ulid.Make().String(), TenantId: "t1", ConversationId: convA, SenderId: sender, Body: body,
			SendTime: timestamppb.Now(), SenderRoles: roles}
		v, err := proto.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		return &kgo.Record{Topic: kafka.TopicInbound, Key: []byte(convA), Value: v}
	}

	// (a)
	produce(&kgo.Record{Topic: kafka.TopicInbound, Key: []byte(convA), Value: []byte(strings.Repeat("x", 999_900))})
	sent, err := msgs.SendMessage(carol, &platformv1.SendMessageRequest{ConversationId: convC, Body: "after the big one"})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	testenv.Eventually(t, "carol's message stored", 20*time.Second, func() bool {
		_, err := msgs.GetMessage(carol, &platformv1.GetMessageRequest{ConversationId: convC, MessageId: sent.GetMessageId()})
		return err == nil
	})
	t.Logf("(a) the message sent after a 999,900-byte record was stored %v later", time.Since(start).Round(time.Millisecond))
	authn := &platformv1.DeadLetterFilter{Stage: "authenticate"}
	var big *platformv1.DeadLetter
	testenv.Eventually(t, "the big record listed", 20*time.Second, func() bool {
		r, err := dls.ListDeadLetters(ops, &platformv1.ListDeadLettersRequest{Filter: authn})
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range r.GetDeadLetters() {
			if d.GetPayloadTruncated() {
				big = d
			}
		}
		return big != nil
	})
	if big.GetOriginalSize() != 999_900 || len(big.GetPayload()) != 1024 || big.GetStatus() != platformv1.DeadLetterStatus_DEAD_LETTER_STATUS_PARKED {
		t.Errorf("(a) dead letter of the big record: size %d, %d payload bytes, %v", big.GetOriginalSize(), len(big.GetPayload()), big.GetStatus())
	}

	// (b)
	service, impostor := forged("mallory", "I am a service", "service"), forged("alice", "alice never wrote this", "user")
	produce(service, impostor)
	testenv.Eventually(t, "both forgeries dead-lettered at authenticate", 20*time.Second, func() bool {
		r, err := dls.ListDeadLetters(ops, &platformv1.ListDeadLettersRequest{Filter: authn})
		if err != nil {
			t.Fatal(err)
		}
		return len(r.GetDeadLetters()) == 3
	})
	for _, r := range []*kgo.Record{service, impostor} {
		var in platformv1.InboundMessage
		if err := proto.Unmarshal(r.Value, &in); err != nil {
			t.Fatal(err)
		}
		if _, err := msgs.GetMessage(alice, &platformv1.GetMessageRequest{ConversationId: convA, MessageId: in.GetId()}); status.Code(err) != codes.NotFound {
			t.Errorf("(b) forged message from %s: GetMessage = %v, want NOT_FOUND", in.GetSenderId(), err)
		}
	}

	// (c) A forged dead letter whose payload is an event and whose original topic is messages.events.
	evID := ulid.Make().String()
	ev, err := proto.Marshal(&platformv1.Event{Id: evID, Type: platformv1.EventType_EVENT_TYPE_MESSAGE_PERSISTED, TenantId: "t1",
		ConversationId: convA, Payload: &platformv1.Event_Message{Message: &platformv1.Message{Id: evID, Body: "nobody sent this"}}})
	if err != nil {
		t.Fatal(err)
	}
	h := func(k, v string) kgo.RecordHeader { return kgo.RecordHeader{Key: k, Value: []byte(v)} }
	produce(&kgo.Record{Topic: kafka.TopicDLQ, Key: []byte(convA), Value: ev, Headers: []kgo.RecordHeader{
		h("dlq.error", "x"), h("dlq.error_class", "transient"), h("dlq.stage", "notify"), h("dlq.attempts", "1"),
		h("dlq.original_topic", kafka.TopicEvents), h("dlq.original_partition", "0"), h("dlq.original_offset", "999"),
		h("dlq.first_failed_at", "2030-01-01T00:00:00.000Z"), h("dlq.tenant_id", "t1"),
	}})
	id := "messages.events-0-999-1"
	testenv.Eventually(t, "the forged entry stored", 20*time.Second, func() bool {
		_, err := dls.GetDeadLetter(ops, &platformv1.GetDeadLetterRequest{Id: id})
		return err == nil
	})
	d, err := dls.GetDeadLetter(ops, &platformv1.GetDeadLetterRequest{Id: id})
	if err != nil || d.GetDeadLetter().GetStatus() != platformv1.DeadLetterStatus_DEAD_LETTER_STATUS_PARKED || d.GetDeadLetter().GetTenantId() != "" {
		t.Errorf("(c) forged entry: %v, %v; want parked and attributed to no tenant", d, err)
	}
	if _, err := dls.RetryDeadLetter(ops, &platformv1.RetryDeadLetterRequest{Id: id}); status.Code(err) != codes.FailedPrecondition ||
		!strings.Contains(err.Error(), "not a retry target") {
		t.Errorf("(c) RetryDeadLetter = %v, want FAILED_PRECONDITION: not a retry target", err)
	}
	time.Sleep(3 * time.Second) // three passes of the retry scheduler
	events, err := kgo.NewClient(kgo.SeedBrokers(addrs.Kafka), kgo.ConsumeTopics(kafka.TopicEvents))
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()
	ctx, cancelPoll := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancelPoll()
	for {
		f := events.PollFetches(ctx)
		if ctx.Err() != nil {
			break
		}
		f.EachRecord(func(r *kgo.Record) {
			var e platformv1.Event
			if proto.Unmarshal(r.Value, &e) == nil && e.GetId() == evID {
				t.Errorf("(c) the forged event reached %s at offset %d", kafka.TopicEvents, r.Offset)
			}
		})
	}
}
