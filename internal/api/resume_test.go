package api_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/api"
	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/testenv"
)

// streamItems reads a gRPC stream in the background: its items on C, then its final error on Err.
type streamItems struct {
	C   chan *platformv1.StreamMessagesResponse
	Err chan error
}

func readStream(s platformv1.MessageService_StreamMessagesClient) *streamItems {
	r := &streamItems{C: make(chan *platformv1.StreamMessagesResponse, 2048), Err: make(chan error, 1)}
	go func() {
		for {
			item, err := s.Recv()
			if err != nil {
				r.Err <- err
				return
			}
			r.C <- item
		}
	}()
	return r
}

// next returns the next item, failing the test when none comes within 10 s or the stream ends.
func (r *streamItems) next(t *testing.T) *platformv1.StreamMessagesResponse {
	t.Helper()
	select {
	case item := <-r.C:
		return item
	case err := <-r.Err:
		t.Fatalf("stream ended: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no stream item within 10s")
	}
	return nil
}

// quiet fails the test if an item arrives within d.
func (r *streamItems) quiet(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case item := <-r.C:
		t.Fatalf("unexpected item %v", item)
	case <-time.After(d):
	}
}

// openStream opens a StreamMessages call and waits until the server has subscribed (its headers arrived).
func openStream(t *testing.T, ctx context.Context, g *gateway, conv, after string) *streamItems {
	t.Helper()
	s, err := g.msgs.StreamMessages(ctx, &platformv1.StreamMessagesRequest{ConversationId: conv, AfterMessageId: after})
	if err != nil {
		t.Fatal(err)
	}
	if md, err := s.Header(); err != nil || md == nil {
		_, rerr := s.Recv()
		t.Fatalf("stream did not start: %v %v", err, rerr)
	}
	return readStream(s)
}

// A client reading a stream while another sends, that disconnects, misses messages and reconnects with
// after_message_id set to the last one it received, gets every message exactly once and in order: the
// ones sent while it was away replayed, then the live ones, with no gap or duplicate at the seam (the
// sender does not pause while the client reconnects). Real pipeline: SendMessage, Kafka, persist, events.
func TestStreamMessagesResumeAfterDisconnect(t *testing.T) {
	g := startGateway(t, testenv.Kafka(t), gatewayAndPipeline)
	alice, bob := testenv.Token(t, "alice", "t1"), testenv.Token(t, "bob", "t1")
	conv := newConversation(t, g, alice, "bob")

	ctx1, cancel1 := context.WithCancel(as(bob))
	first := openStream(t, ctx1, g, conv, "")

	const total = 40
	sent := make(chan string, total)
	sendErr := make(chan error, 1)
	go func() {
		for i := range total {
			resp, err := g.msgs.SendMessage(as(alice), &platformv1.SendMessageRequest{ConversationId: conv, Body: fmt.Sprintf("m%d", i)})
			if err != nil {
				sendErr <- err
				return
			}
			sent <- resp.GetMessageId()
			time.Sleep(10 * time.Millisecond) // one sender, ids strictly increasing
		}
		close(sent)
	}()

	var got []string
	for len(got) < 10 {
		item := first.next(t)
		if item.GetType() != platformv1.EventType_EVENT_TYPE_MESSAGE_PERSISTED {
			t.Fatalf("item %v", item)
		}
		got = append(got, item.GetMessage().GetId())
	}
	cancel1() // disconnect; the sender goes on
	time.Sleep(300 * time.Millisecond)

	second := openStream(t, as(bob), g, conv, got[len(got)-1])
	for len(got) < total {
		item := second.next(t)
		if item.GetType() != platformv1.EventType_EVENT_TYPE_MESSAGE_PERSISTED {
			t.Fatalf("item %v", item)
		}
		got = append(got, item.GetMessage().GetId())
	}
	second.quiet(t, 500*time.Millisecond)

	select {
	case err := <-sendErr:
		t.Fatal(err)
	default:
	}
	var want []string
	for id := range sent {
		want = append(want, id)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("received\n%v\nwant every message once, in order\n%v", got, want)
	}
}

// The live events a replay already covers are dropped, later changes to replayed messages are not: a
// duplicate MESSAGE_PERSISTED event of a replayed message (as the pipeline's redelivery or the change
// stream would publish) is not sent again, an edit made after the replay is.
func TestStreamMessagesResumeDropsWhatTheReplayCovered(t *testing.T) {
	g := startGateway(t, testenv.Kafka(t), gatewayOnly)
	alice, bob := testenv.Token(t, "alice", "t1"), testenv.Token(t, "bob", "t1")
	conv := newConversation(t, g, alice, "bob")
	ids := []string{"01HC0000000000000000000001", "01HC0000000000000000000002", "01HC0000000000000000000003", "01HC0000000000000000000004"}
	persist(t, g,
		store.Message{ID: ids[0], TenantID: "t1", ConversationID: conv, SenderID: "alice", Body: "one"},
		store.Message{ID: ids[1], TenantID: "t1", ConversationID: conv, SenderID: "alice", Body: "two"},
		store.Message{ID: ids[2], TenantID: "t1", ConversationID: conv, SenderID: "alice", Body: "three"})

	items := openStream(t, as(bob), g, conv, ids[0])
	for _, want := range []string{ids[1], ids[2]} {
		if item := items.next(t); item.GetMessage().GetId() != want || item.GetType() != platformv1.EventType_EVENT_TYPE_MESSAGE_PERSISTED {
			t.Fatalf("replayed %v, want %s", item, want)
		}
	}

	cl, err := kgo.NewClient(kgo.SeedBrokers(g.kafka))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	publish := func(typ platformv1.EventType, id string, version int64, body string) {
		t.Helper()
		ev := &platformv1.Event{Id: fmt.Sprintf("%s.v%d", id, version), Type: typ, TenantId: "t1", ConversationId: conv, ActorId: "alice",
			EventTime: timestamppb.Now(), Payload: &platformv1.Event_Message{Message: &platformv1.Message{Id: id, ConversationId: conv,
				SenderId: "alice", Body: body, Version: version, State: platformv1.MessageState_MESSAGE_STATE_PERSISTED}}}
		rec, err := envelope.EventRecord(ev, testenv.SigningKeys(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := cl.ProduceSync(context.Background(), rec).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	publish(platformv1.EventType_EVENT_TYPE_MESSAGE_PERSISTED, ids[2], 1, "three") // covered by the replay
	if _, err := g.msgs.UpdateMessage(as(alice), &platformv1.UpdateMessageRequest{ConversationId: conv,
		Message: &platformv1.Message{Id: ids[1], Body: "two, edited"}}); err != nil {
		t.Fatal(err)
	}
	persist(t, g, store.Message{ID: ids[3], TenantID: "t1", ConversationID: conv, SenderID: "alice", Body: "four"})
	publish(platformv1.EventType_EVENT_TYPE_MESSAGE_PERSISTED, ids[3], 1, "four")

	if item := items.next(t); item.GetType() != platformv1.EventType_EVENT_TYPE_MESSAGE_UPDATED || item.GetMessage().GetId() != ids[1] ||
		item.GetMessage().GetBody() != "two, edited" {
		t.Fatalf("after the replay: %v, want the edit of %s", item, ids[1])
	}
	if item := items.next(t); item.GetType() != platformv1.EventType_EVENT_TYPE_MESSAGE_PERSISTED || item.GetMessage().GetId() != ids[3] {
		t.Fatalf("then %v, want %s", item, ids[3])
	}
	items.quiet(t, 300*time.Millisecond)
}

// after_message_id must be a message of the conversation, and at most api.MaxReplay messages may follow it.
func TestStreamMessagesResumePoint(t *testing.T) {
	g := startGateway(t, testenv.Kafka(t), gatewayOnly)
	alice := testenv.Token(t, "alice", "t1")
	conv := newConversation(t, g, alice)
	other := newConversation(t, g, alice)
	persist(t, g, store.Message{ID: "01HC0000000000000000000OTH", TenantID: "t1", ConversationID: other, SenderID: "alice", Body: "elsewhere"})
	msgs := make([]store.Message, api.MaxReplay+2)
	for i := range msgs {
		msgs[i] = store.Message{ID: fmt.Sprintf("01HC00000000000000000%05d", i), TenantID: "t1", ConversationID: conv, SenderID: "alice", Body: "x"}
	}
	persist(t, g, msgs...)

	for _, tc := range []struct {
		name, after string
		want        codes.Code
		replayed    int
	}{
		{"not an id", "bad\u200bid", codes.InvalidArgument, 0},
		{"unknown message", "01HC0000000000000000000NOPE", codes.InvalidArgument, 0},
		{"message of another conversation", "01HC0000000000000000000OTH", codes.InvalidArgument, 0},
		{"too far behind", msgs[0].ID, codes.FailedPrecondition, 0},
		{"exactly the most replayed", msgs[1].ID, codes.OK, api.MaxReplay},
		{"the newest", msgs[len(msgs)-1].ID, codes.OK, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(as(alice))
			defer cancel()
			s, err := g.msgs.StreamMessages(ctx, &platformv1.StreamMessagesRequest{ConversationId: conv, AfterMessageId: tc.after})
			if err != nil {
				t.Fatal(err)
			}
			items := readStream(s)
			if tc.want != codes.OK {
				select {
				case err := <-items.Err:
					if code(err) != tc.want {
						t.Fatalf("StreamMessages = %v, want %v", err, tc.want)
					}
					if tc.want == codes.FailedPrecondition && !hasPrecondition(err, api.ResumeTooFarBehind) {
						t.Errorf("no PreconditionFailure %s in %v", api.ResumeTooFarBehind, err)
					}
				case item := <-items.C:
					t.Fatalf("got %v, want %v", item, tc.want)
				case <-time.After(10 * time.Second):
					t.Fatal("no answer")
				}
				return
			}
			prev := tc.after
			for range tc.replayed {
				item := items.next(t)
				if id := item.GetMessage().GetId(); id <= prev {
					t.Fatalf("replayed %s after %s: not ascending past the resume point", id, prev)
				}
				prev = item.GetMessage().GetId()
			}
			items.quiet(t, 200*time.Millisecond)
		})
	}

	// Over REST: the same refusal is an HTTP status before the stream starts.
	status, body := restCall(t, g, alice, http.MethodGet, "/v1/conversations/"+conv+"/messages:stream?after_message_id="+msgs[0].ID, "")
	errBody, _ := body["error"].(map[string]any) // a stream's error, as grpc-gateway writes it
	if status != http.StatusBadRequest || errBody["code"] != float64(codes.FailedPrecondition) {
		t.Errorf("REST too far behind = %d %v, want 400 FAILED_PRECONDITION", status, body)
	}
}

func hasPrecondition(err error, typ string) bool {
	for _, d := range status.Convert(err).Details() {
		if pf, ok := d.(*errdetails.PreconditionFailure); ok {
			for _, v := range pf.GetViolations() {
				if v.GetType() == typ {
					return true
				}
			}
		}
	}
	return false
}
