package api_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/embedded"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/testenv"
)

func newConversation(t *testing.T, g *gateway, owner string, members ...string) string {
	t.Helper()
	c, err := g.conv.CreateConversation(as(owner), &platformv1.CreateConversationRequest{Title: "chat", MemberIds: members})
	if err != nil {
		t.Fatal(err)
	}
	return c.GetConversation().GetId()
}

// inbound reads every record of messages.inbound.
func inbound(t *testing.T, broker string, want int) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(broker), kgo.ConsumeTopics(kafka.TopicInbound))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var recs []*kgo.Record
	for len(recs) < want {
		f := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			break
		}
		recs = append(recs, f.Records()...)
	}
	// Anything beyond want would be a duplicate publish: give it a moment to show up.
	more, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	recs = append(recs, cl.PollFetches(more).Records()...)
	return recs
}

func TestSendMessagePublishesTheEnvelope(t *testing.T) {
	g := startGateway(t, testenv.Kafka(t), gatewayOnly)
	alice, bob := testenv.Token(t, "alice", "t1"), testenv.Token(t, "bob", "t1")
	conv := newConversation(t, g, alice, "bob")

	resp, err := g.msgs.SendMessage(as(bob), &platformv1.SendMessageRequest{ConversationId: conv, Body: "hi @alice", Metadata: map[string]string{"k": "v"}})
	if err != nil || resp.GetState() != platformv1.MessageState_MESSAGE_STATE_ACCEPTED || len(resp.GetMessageId()) != 26 || resp.GetDuplicate() {
		t.Fatalf("SendMessage = %v, %v", resp, err)
	}
	recs := inbound(t, g.kafka, 1)
	if len(recs) != 1 {
		t.Fatalf("%d records on %s, want 1", len(recs), kafka.TopicInbound)
	}
	var in platformv1.InboundMessage
	if err := proto.Unmarshal(recs[0].Value, &in); err != nil {
		t.Fatal(err)
	}
	if string(recs[0].Key) != conv || in.GetId() != resp.GetMessageId() || in.GetTenantId() != "t1" || in.GetSenderId() != "bob" ||
		in.GetBody() != "hi @alice" || in.GetMetadata()["k"] != "v" || in.GetRequestId() == "" || in.GetSendTime() == nil ||
		strings.Join(in.GetSenderRoles(), ",") != "user" {
		t.Errorf("record key %q, envelope %v", recs[0].Key, &in)
	}
}

// Concurrent retries with one client_message_id get one id back and publish one record.
func TestSendMessageIdempotentUnderConcurrentRetries(t *testing.T) {
	g := startGateway(t, testenv.Kafka(t), gatewayOnly)
	alice := testenv.Token(t, "alice", "t1")
	conv := newConversation(t, g, alice)
	const retries = 12
	ids := make([]string, retries)
	errs := make([]error, retries)
	var wg sync.WaitGroup
	for i := range retries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := g.msgs.SendMessage(as(alice), &platformv1.SendMessageRequest{ConversationId: conv, Body: "once", ClientMessageId: "cm-1"})
			ids[i], errs[i] = r.GetMessageId(), err
		}()
	}
	wg.Wait()
	for i := range retries {
		if errs[i] != nil || ids[i] != ids[0] {
			t.Fatalf("retry %d: id %q err %v; want all %q", i, ids[i], errs[i], ids[0])
		}
	}
	// Another client_message_id, or another sender with the same one, is a new message.
	other, err := g.msgs.SendMessage(as(alice), &platformv1.SendMessageRequest{ConversationId: conv, Body: "twice", ClientMessageId: "cm-2"})
	if err != nil || other.GetMessageId() == ids[0] {
		t.Fatalf("different key = %v, %v", other, err)
	}
	if recs := inbound(t, g.kafka, 2); len(recs) != 2 {
		t.Fatalf("%d records published, want 2 (one per client_message_id)", len(recs))
	}
	again, err := g.msgs.SendMessage(as(alice), &platformv1.SendMessageRequest{ConversationId: conv, Body: "once", ClientMessageId: "cm-1"})
	if err != nil || !again.GetDuplicate() || again.GetMessageId() != ids[0] || again.GetCreateTime() == nil {
		t.Errorf("later retry = %v, %v", again, err)
	}
}

func TestSendMessageValidation(t *testing.T) {
	g := startGateway(t, testenv.Kafka(t), gatewayOnly)
	alice := testenv.Token(t, "alice", "t1")
	conv := newConversation(t, g, alice)
	many := map[string]string{}
	for i := range 17 {
		many[fmt.Sprint(i)] = "v"
	}
	tests := []struct {
		name  string
		req   *platformv1.SendMessageRequest
		field string
	}{
		{"empty body", &platformv1.SendMessageRequest{Body: " \n"}, "body"},
		{"body over 16 KiB", &platformv1.SendMessageRequest{Body: strings.Repeat("a", 16<<10+1)}, "body"},
		{"long client id", &platformv1.SendMessageRequest{Body: "b", ClientMessageId: strings.Repeat("c", 129)}, "client_message_id"},
		{"too much metadata", &platformv1.SendMessageRequest{Body: "b", Metadata: many}, "metadata"},
		{"long metadata value", &platformv1.SendMessageRequest{Body: "b", Metadata: map[string]string{"k": strings.Repeat("v", 513)}}, "metadata[k]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.ConversationId = conv
			_, err := g.msgs.SendMessage(as(alice), tc.req)
			if code(err) != codes.InvalidArgument || !contains(badRequestFields(err), tc.field) {
				t.Errorf("err = %v, fields %v; want INVALID_ARGUMENT naming %s", err, badRequestFields(err), tc.field)
			}
		})
	}
	if recs := inbound(t, g.kafka, 0); len(recs) != 0 {
		t.Errorf("invalid messages were published: %d records", len(recs))
	}
}

// With Kafka gone, SendMessage answers UNAVAILABLE (within KAFKA_PRODUCE_TIMEOUT), never a silent OK,
// over gRPC and REST (503).
func TestSendMessageKafkaUnavailable(t *testing.T) {
	k, err := embedded.StartKafka("127.0.0.1:0", kafka.Topics)
	if err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, k.Addr(), gatewayOnly)
	alice := testenv.Token(t, "alice", "t1")
	conv := newConversation(t, g, alice)
	if _, err := g.msgs.SendMessage(as(alice), &platformv1.SendMessageRequest{ConversationId: conv, Body: "before"}); err != nil {
		t.Fatalf("with Kafka up: %v", err)
	}
	k.Close()
	_, err = g.msgs.SendMessage(as(alice), &platformv1.SendMessageRequest{ConversationId: conv, Body: "during", ClientMessageId: "x1"})
	if code(err) != codes.Unavailable {
		t.Fatalf("with Kafka down: %v, want Unavailable", err)
	}
	status, body := restCall(t, g, alice, http.MethodPost, "/v1/conversations/"+conv+"/messages", `{"body":"during"}`)
	if status != http.StatusServiceUnavailable {
		t.Errorf("REST with Kafka down = %d %v, want 503", status, body)
	}
}

func TestMessageReadEditDelete(t *testing.T) {
	g := startGateway(t, testenv.Kafka(t), gatewayOnly)
	alice, bob, vic := testenv.Token(t, "alice", "t1"), testenv.Token(t, "bob", "t1"), testenv.Token(t, "vic", "t1")
	conv := newConversation(t, g, alice, "bob")
	if _, err := g.conv.AddMember(as(alice), &platformv1.AddMemberRequest{ConversationId: conv, UserId: "vic", Role: platformv1.MemberRole_MEMBER_ROLE_VIEWER}); err != nil {
		t.Fatal(err)
	}
	persist(t, g,
		store.Message{ID: "01HZZZZZZZZZZZZZZZZZZZZZZ1", TenantID: "t1", ConversationID: conv, SenderID: "bob", Body: "first"},
		store.Message{ID: "01HZZZZZZZZZZZZZZZZZZZZZZ2", TenantID: "t1", ConversationID: conv, SenderID: "bob", Body: "second"},
		store.Message{ID: "01HZZZZZZZZZZZZZZZZZZZZZZ3", TenantID: "t1", ConversationID: conv, SenderID: "alice", Body: "third"},
	)
	list, err := g.msgs.ListMessages(as(vic), &platformv1.ListMessagesRequest{ConversationId: conv})
	if err != nil || len(list.GetMessages()) != 3 || list.GetMessages()[0].GetBody() != "third" {
		t.Fatalf("viewer ListMessages = %v, %v (want newest first)", list, err)
	}

	up, err := g.msgs.UpdateMessage(as(bob), &platformv1.UpdateMessageRequest{ConversationId: conv,
		Message: &platformv1.Message{Id: "01HZZZZZZZZZZZZZZZZZZZZZZ1", Body: "first, edited", Version: 1}})
	if err != nil || up.GetMessage().GetBody() != "first, edited" || up.GetMessage().GetEditTime() == nil || up.GetMessage().GetVersion() != 2 {
		t.Fatalf("author edit = %v, %v", up, err)
	}
	if _, err := g.msgs.UpdateMessage(as(bob), &platformv1.UpdateMessageRequest{ConversationId: conv,
		Message: &platformv1.Message{Id: "01HZZZZZZZZZZZZZZZZZZZZZZ1", Body: "stale", Version: 1}}); code(err) != codes.Aborted {
		t.Errorf("stale edit = %v, want Aborted", err)
	}
	if _, err := g.msgs.UpdateMessage(as(alice), &platformv1.UpdateMessageRequest{ConversationId: conv,
		Message: &platformv1.Message{Id: "01HZZZZZZZZZZZZZZZZZZZZZZ1", Body: "owner edit"}}); code(err) != codes.PermissionDenied {
		t.Errorf("owner editing bob's message = %v, want PermissionDenied (author only)", err)
	}
	if _, err := g.msgs.DeleteMessage(as(bob), &platformv1.DeleteMessageRequest{ConversationId: conv, MessageId: "01HZZZZZZZZZZZZZZZZZZZZZZ3"}); code(err) != codes.PermissionDenied {
		t.Errorf("member deleting the owner's message = %v", err)
	}
	del, err := g.msgs.DeleteMessage(as(alice), &platformv1.DeleteMessageRequest{ConversationId: conv, MessageId: "01HZZZZZZZZZZZZZZZZZZZZZZ2"})
	if err != nil || del.GetMessage().GetState() != platformv1.MessageState_MESSAGE_STATE_DELETED || del.GetMessage().GetBody() != "" {
		t.Fatalf("owner deleting bob's message = %v, %v", del, err)
	}
	list, _ = g.msgs.ListMessages(as(bob), &platformv1.ListMessagesRequest{ConversationId: conv})
	if len(list.GetMessages()) != 2 {
		t.Errorf("deleted message still listed: %v", list)
	}
	got, err := g.msgs.GetMessage(as(bob), &platformv1.GetMessageRequest{ConversationId: conv, MessageId: "01HZZZZZZZZZZZZZZZZZZZZZZ2"})
	if err != nil || got.GetMessage().GetState() != platformv1.MessageState_MESSAGE_STATE_DELETED {
		t.Errorf("GetMessage of a deleted message = %v, %v (want its tombstone)", got, err)
	}
	if _, err := g.msgs.GetMessage(as(bob), &platformv1.GetMessageRequest{ConversationId: conv, MessageId: "01HNOPE0000000000000000000"}); code(err) != codes.NotFound {
		t.Errorf("unknown message = %v", err)
	}
	// REST: PATCH body is the resource's own fields; the mask is derived from them.
	status, body := restCall(t, g, bob, http.MethodPatch, "/v1/conversations/"+conv+"/messages/01HZZZZZZZZZZZZZZZZZZZZZZ1", `{"body":"via REST"}`)
	if status != http.StatusOK || body["message"].(map[string]any)["body"] != "via REST" {
		t.Errorf("REST PATCH = %d %v", status, body)
	}
}

func TestListMessagesPaginationUnderInserts(t *testing.T) {
	g := startGateway(t, testenv.Kafka(t), gatewayOnly)
	alice := testenv.Token(t, "alice", "t1")
	conv := newConversation(t, g, alice)
	existing := map[string]bool{}
	for i := range 9 {
		id := fmt.Sprintf("01HA%022d", i)
		existing[id] = true
		persist(t, g, store.Message{ID: id, TenantID: "t1", ConversationID: conv, SenderID: "alice", Body: "m"})
	}
	seen := map[string]int{}
	token, prev := "", ""
	for page := 0; ; page++ {
		resp, err := g.msgs.ListMessages(as(alice), &platformv1.ListMessagesRequest{ConversationId: conv, PageSize: 4, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range resp.GetMessages() {
			seen[m.GetId()]++
			if prev != "" && m.GetId() >= prev {
				t.Errorf("order: %s after %s, want descending ids", m.GetId(), prev)
			}
			prev = m.GetId()
		}
		// Newer messages arrive while the client pages through older ones.
		persist(t, g, store.Message{ID: fmt.Sprintf("01HZ%022d", page), TenantID: "t1", ConversationID: conv, SenderID: "alice", Body: "new"})
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	for id := range existing {
		if seen[id] != 1 {
			t.Errorf("message %s seen %d times", id, seen[id])
		}
	}
}

// Every read path of another tenant's conversation is NOT_FOUND, never PERMISSION_DENIED.
func TestTenantIsolation(t *testing.T) {
	g := startGateway(t, testenv.Kafka(t), gatewayOnly)
	alice, eve := testenv.Token(t, "alice", "t1"), testenv.Token(t, "alice", "t2") // same user id, other tenant
	conv := newConversation(t, g, alice)
	persist(t, g, store.Message{ID: "01HB0000000000000000000001", TenantID: "t1", ConversationID: conv, SenderID: "alice", Body: "secret"})
	ctx := as(eve)
	calls := map[string]error{}
	_, calls["GetConversation"] = g.conv.GetConversation(ctx, &platformv1.GetConversationRequest{ConversationId: conv})
	_, calls["ListMembers"] = g.conv.ListMembers(ctx, &platformv1.ListMembersRequest{ConversationId: conv})
	_, calls["ListMessages"] = g.msgs.ListMessages(ctx, &platformv1.ListMessagesRequest{ConversationId: conv})
	_, calls["GetMessage"] = g.msgs.GetMessage(ctx, &platformv1.GetMessageRequest{ConversationId: conv, MessageId: "01HB0000000000000000000001"})
	_, calls["SendMessage"] = g.msgs.SendMessage(ctx, &platformv1.SendMessageRequest{ConversationId: conv, Body: "x"})
	stream, err := g.msgs.StreamMessages(ctx, &platformv1.StreamMessagesRequest{ConversationId: conv})
	if err == nil {
		_, err = stream.Recv()
	}
	calls["StreamMessages"] = err
	for name, err := range calls {
		if code(err) != codes.NotFound {
			t.Errorf("%s across tenants = %v, want NotFound", name, err)
		}
	}
	list, err := g.conv.ListConversations(ctx, &platformv1.ListConversationsRequest{})
	if err != nil || len(list.GetConversations()) != 0 {
		t.Errorf("other tenant's list = %v, %v", list, err)
	}
	if status, _ := restCall(t, g, eve, http.MethodGet, "/v1/conversations/"+conv+"/messages", ""); status != http.StatusNotFound {
		t.Errorf("REST across tenants = %d, want 404", status)
	}
}

// A stream receives, in order, what another client does; over gRPC and over REST (newline-delimited
// JSON); a member removed mid-stream stops receiving.
func TestStreamMessages(t *testing.T) {
	g := startGateway(t, testenv.Kafka(t), gatewayOnly)
	alice, bob := testenv.Token(t, "alice", "t1"), testenv.Token(t, "bob", "t1")
	conv := newConversation(t, g, alice, "bob")
	persist(t, g, store.Message{ID: "01HC0000000000000000000001", TenantID: "t1", ConversationID: conv, SenderID: "alice", Body: "v1"})

	ctx, cancel := context.WithCancel(as(bob))
	defer cancel()
	grpcStream, err := g.msgs.StreamMessages(ctx, &platformv1.StreamMessagesRequest{ConversationId: conv})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := grpcStream.Header(); err != nil { // the server has subscribed once headers arrive
		t.Fatal(err)
	}
	// grpc-gateway writes the HTTP status with the first item, so the REST request runs in the background;
	// the subscriber gauge tells when both streams are subscribed.
	type answer struct {
		resp *http.Response
		err  error
	}
	restCh := make(chan answer, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, g.rest+"/v1/conversations/"+conv+"/messages:stream", nil)
		req.Header.Set("Authorization", "Bearer "+bob)
		resp, err := http.DefaultClient.Do(req)
		restCh <- answer{resp, err}
	}()
	waitMetric(t, g, "platform_stream_subscribers 2")

	for i := 2; i <= 4; i++ {
		if _, err := g.msgs.UpdateMessage(as(alice), &platformv1.UpdateMessageRequest{ConversationId: conv,
			Message: &platformv1.Message{Id: "01HC0000000000000000000001", Body: fmt.Sprintf("v%d", i)}}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 2; i <= 4; i++ {
		ev, err := grpcStream.Recv()
		if err != nil || ev.GetType() != platformv1.EventType_EVENT_TYPE_MESSAGE_UPDATED || ev.GetMessage().GetBody() != fmt.Sprintf("v%d", i) {
			t.Fatalf("gRPC event %d = %v, %v", i, ev, err)
		}
	}
	rest := <-restCh
	if rest.err != nil || rest.resp.StatusCode != http.StatusOK {
		t.Fatalf("REST stream = %v, %v", rest.resp, rest.err)
	}
	defer rest.resp.Body.Close()
	lines := bufio.NewScanner(rest.resp.Body)
	for i := 2; i <= 4; i++ {
		if !lines.Scan() {
			t.Fatalf("REST stream ended early: %v", lines.Err())
		}
		var item struct {
			Result struct {
				Type    string `json:"type"`
				Message struct {
					Body string `json:"body"`
				} `json:"message"`
			} `json:"result"`
		}
		if err := json.Unmarshal(lines.Bytes(), &item); err != nil || item.Result.Message.Body != fmt.Sprintf("v%d", i) ||
			item.Result.Type != "EVENT_TYPE_MESSAGE_UPDATED" {
			t.Fatalf("REST line %d = %s (%v)", i, lines.Bytes(), err)
		}
	}

	if _, err := g.conv.RemoveMember(as(alice), &platformv1.RemoveMemberRequest{ConversationId: conv, UserId: "bob"}); err != nil {
		t.Fatal(err)
	}
	if _, err := g.msgs.UpdateMessage(as(alice), &platformv1.UpdateMessageRequest{ConversationId: conv,
		Message: &platformv1.Message{Id: "01HC0000000000000000000001", Body: "after removal"}}); err != nil {
		t.Fatal(err)
	}
	if ev, err := grpcStream.Recv(); code(err) != codes.PermissionDenied {
		t.Fatalf("removed member's stream = %v, %v; want PermissionDenied and nothing more", ev, err)
	}
}
