package api_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/testenv"
)

// sendPersisted sends a message (a reply when replyTo is set) and waits until the pipeline stored it.
func sendPersisted(t *testing.T, g *gateway, tok, conv, body, replyTo string) string {
	t.Helper()
	resp, err := g.msgs.SendMessage(as(tok), &platformv1.SendMessageRequest{ConversationId: conv, Body: body, ReplyToMessageId: replyTo})
	if err != nil {
		t.Fatalf("send %q: %v", body, err)
	}
	waitPersisted(t, g, conv, resp.GetMessageId())
	return resp.GetMessageId()
}

func unread(t *testing.T, g *gateway, tok, conv string) (int64, string) {
	t.Helper()
	c, err := g.conv.GetConversation(as(tok), &platformv1.GetConversationRequest{ConversationId: conv})
	if err != nil {
		t.Fatal(err)
	}
	return c.GetConversation().GetUnreadCount(), c.GetConversation().GetLastReadMessageId()
}

// Unread counts go up as others send and down on MarkRead; the reader's own messages never count (and
// sending moves the sender's cursor); MarkRead is idempotent and never moves backward; a message of
// another conversation is INVALID_ARGUMENT; the read state shows in ListConversations, over gRPC and
// REST; a removed member loses access to it. The reader's stream gets its own read-state events and
// nobody else's.
func TestReadStateAndUnreadCounts(t *testing.T) {
	g := startGateway(t, testenv.Kafka(t), gatewayAndPipeline)
	alice, bob := testenv.Token(t, "alice", "t1"), testenv.Token(t, "bob", "t1")
	conv := newConversation(t, g, alice, "bob")
	other := newConversation(t, g, alice, "bob")
	bobStream := openStream(t, as(bob), g, conv, "")
	aliceStream := openStream(t, as(alice), g, conv, "")

	var ids []string
	for i := range 3 {
		ids = append(ids, sendPersisted(t, g, alice, conv, fmt.Sprintf("hi %d", i), ""))
	}
	if n, cur := unread(t, g, bob, conv); n != 3 || cur != "" {
		t.Fatalf("bob: unread %d, cursor %q; want 3, none", n, cur)
	}
	// Alice's own messages never count, and sending moved her cursor.
	testenv.Eventually(t, "alice's cursor at her newest message", 10*time.Second, func() bool {
		n, cur := unread(t, g, alice, conv)
		return n == 0 && cur == ids[2]
	})

	r, err := g.msgs.MarkRead(as(bob), &platformv1.MarkReadRequest{ConversationId: conv, MessageId: ids[1]})
	if err != nil || r.GetUnreadCount() != 1 || r.GetLastReadMessageId() != ids[1] {
		t.Fatalf("MarkRead = %v, %v; want 1 unread, cursor %s", r, err, ids[1])
	}
	// Twice is once; an older message leaves the cursor where it is.
	for _, id := range []string{ids[1], ids[0]} {
		r, err = g.msgs.MarkRead(as(bob), &platformv1.MarkReadRequest{ConversationId: conv, MessageId: id})
		if err != nil || r.GetUnreadCount() != 1 || r.GetLastReadMessageId() != ids[1] {
			t.Fatalf("MarkRead(%s) again = %v, %v; want the cursor unchanged at %s", id, r, err, ids[1])
		}
	}
	// A message of bob's does not count for bob, and moves his cursor past what he had not read.
	sendPersisted(t, g, bob, conv, "bob's own", "")
	testenv.Eventually(t, "bob's cursor at his own message", 10*time.Second, func() bool {
		n, _ := unread(t, g, bob, conv)
		return n == 0
	})

	// A message of another conversation is INVALID_ARGUMENT; a missing one too.
	foreign := sendPersisted(t, g, alice, other, "elsewhere", "")
	if _, err := g.msgs.MarkRead(as(bob), &platformv1.MarkReadRequest{ConversationId: conv, MessageId: foreign}); code(err) != codes.InvalidArgument {
		t.Fatalf("MarkRead with another conversation's message: %v, want InvalidArgument", err)
	}

	// ListConversations over REST shows both badges.
	status, body := restCall(t, g, bob, "GET", "/v1/conversations", "")
	if status != 200 {
		t.Fatalf("GET /v1/conversations: %d %v", status, body)
	}
	badges := map[string]string{}
	for _, c := range body["conversations"].([]any) {
		c := c.(map[string]any)
		badges[c["id"].(string)] = fmt.Sprint(c["unreadCount"]) // int64: a JSON string
	}
	if badges[conv] != "0" || badges[other] != "1" {
		// Bob sent after MarkRead, so his cursor is at his own message: nothing unread in conv.
		t.Fatalf("REST badges %v, want %s: 0, %s: 1", badges, conv, other)
	}
	status, body = restCall(t, g, bob, "POST", "/v1/conversations/"+other+":markRead", `{"messageId":"`+foreign+`"}`)
	if status != 200 || body["lastReadMessageId"] != foreign || fmt.Sprint(body["unreadCount"]) != "0" {
		t.Fatalf("REST markRead: %d %v", status, body)
	}

	// Bob's stream got his read-state events (the ones that moved the cursor), alice's got none.
	var moved []string
	for len(moved) < 1 {
		it := bobStream.next(t)
		if it.GetType() == platformv1.EventType_EVENT_TYPE_READ_STATE_UPDATED {
			if it.GetReadState().GetUserId() != "bob" {
				t.Fatalf("bob's stream shows %v", it)
			}
			moved = append(moved, it.GetReadState().GetLastReadMessageId())
		}
	}
	if moved[0] != ids[1] {
		t.Fatalf("bob's read event at %v, want %s", moved, ids[1])
	}
	for {
		select {
		case it := <-aliceStream.C:
			if it.GetType() == platformv1.EventType_EVENT_TYPE_READ_STATE_UPDATED {
				t.Fatalf("alice's stream shows bob's read state: %v", it)
			}
			continue
		case <-time.After(500 * time.Millisecond):
		}
		break
	}

	// Removed, bob loses his read state.
	if _, err := g.conv.RemoveMember(as(alice), &platformv1.RemoveMemberRequest{ConversationId: conv, UserId: "bob"}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "bob refused", 10*time.Second, func() bool {
		_, err1 := g.msgs.MarkRead(as(bob), &platformv1.MarkReadRequest{ConversationId: conv, MessageId: ids[2]})
		_, err2 := g.conv.GetConversation(as(bob), &platformv1.GetConversationRequest{ConversationId: conv})
		return code(err1) == codes.PermissionDenied && code(err2) == codes.PermissionDenied
	})
	if _, err := g.st.Members.Get(context.Background(), "t1", conv, "bob"); err == nil {
		t.Fatal("bob's membership (and read state) still stored")
	}
}

// Replies: they join the root's thread (a reply to a reply too), appear only in it, bump the root's
// reply_count (shown on the root's stream as MESSAGE_UPDATED), count as unread; a resend with the same
// client_message_id is the same reply; replying to a message of another conversation is
// INVALID_ARGUMENT, to a deleted root FAILED_PRECONDITION.
func TestThreads(t *testing.T) {
	g := startGateway(t, testenv.Kafka(t), gatewayAndPipeline)
	alice, bob := testenv.Token(t, "alice", "t1"), testenv.Token(t, "bob", "t1")
	conv := newConversation(t, g, alice, "bob")
	other := newConversation(t, g, alice, "bob")
	stream := openStream(t, as(bob), g, conv, "")

	root := sendPersisted(t, g, alice, conv, "root", "")
	top := sendPersisted(t, g, alice, conv, "top-level", "")
	r1 := sendPersisted(t, g, bob, conv, "reply 1", root)
	r2 := sendPersisted(t, g, alice, conv, "reply to the reply", r1)

	// Idempotent resend of a reply.
	req := &platformv1.SendMessageRequest{ConversationId: conv, Body: "reply 3", ReplyToMessageId: root, ClientMessageId: "k-3"}
	a, err := g.msgs.SendMessage(as(alice), req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := g.msgs.SendMessage(as(alice), req)
	if err != nil || b.GetMessageId() != a.GetMessageId() || !b.GetDuplicate() {
		t.Fatalf("resend = %v, %v; want the same reply %s", b, err, a.GetMessageId())
	}
	waitPersisted(t, g, conv, a.GetMessageId())

	testenv.Eventually(t, "root's reply_count 3", 10*time.Second, func() bool {
		m, err := g.msgs.GetMessage(as(bob), &platformv1.GetMessageRequest{ConversationId: conv, MessageId: root})
		return err == nil && m.GetMessage().GetReplyCount() == 3 && m.GetMessage().GetLastReplyTime() != nil
	})
	got, err := g.msgs.GetMessage(as(bob), &platformv1.GetMessageRequest{ConversationId: conv, MessageId: r2})
	if err != nil || got.GetMessage().GetThreadId() != root {
		t.Fatalf("reply to a reply: %v, %v; want thread %s", got, err, root)
	}

	// Top level: root and top only; the thread: its three replies, newest first (gRPC and REST).
	l, err := g.msgs.ListMessages(as(bob), &platformv1.ListMessagesRequest{ConversationId: conv})
	if err != nil {
		t.Fatal(err)
	}
	if ids := msgIDs(l.GetMessages()); fmt.Sprint(ids) != fmt.Sprint([]string{top, root}) {
		t.Fatalf("top-level list %v, want %v", ids, []string{top, root})
	}
	status, body := restCall(t, g, bob, "GET", "/v1/conversations/"+conv+"/messages?thread_id="+root+"&page_size=2", "")
	if status != 200 {
		t.Fatalf("REST thread list: %d %v", status, body)
	}
	var page []string
	for _, m := range body["messages"].([]any) {
		page = append(page, m.(map[string]any)["id"].(string))
	}
	if fmt.Sprint(page) != fmt.Sprint([]string{a.GetMessageId(), r2}) || body["nextPageToken"] == "" {
		t.Fatalf("REST thread page %v (next %v), want %v and a next page", page, body["nextPageToken"], []string{a.GetMessageId(), r2})
	}
	l, err = g.msgs.ListMessages(as(bob), &platformv1.ListMessagesRequest{ConversationId: conv, ThreadId: root, PageSize: 2, PageToken: body["nextPageToken"].(string)})
	if err != nil || fmt.Sprint(msgIDs(l.GetMessages())) != fmt.Sprint([]string{r1}) {
		t.Fatalf("thread page 2 = %v, %v; want [%s]", l, err, r1)
	}

	// Replies count as unread: bob sent r1 (cursor there), then alice sent r2 and reply 3.
	if n, _ := unread(t, g, bob, conv); n != 2 {
		t.Fatalf("bob unread %d, want 2", n)
	}

	// The stream showed the root's counter moving.
	testenv.Eventually(t, "root MESSAGE_UPDATED with reply_count 3 on the stream", 10*time.Second, func() bool {
		for {
			select {
			case it := <-stream.C:
				if it.GetType() == platformv1.EventType_EVENT_TYPE_MESSAGE_UPDATED && it.GetMessage().GetId() == root && it.GetMessage().GetReplyCount() == 3 {
					return true
				}
			default:
				return false
			}
		}
	})

	// Impossible replies.
	foreign := sendPersisted(t, g, alice, other, "elsewhere", "")
	if _, err := g.msgs.SendMessage(as(alice), &platformv1.SendMessageRequest{ConversationId: conv, Body: "x", ReplyToMessageId: foreign}); code(err) != codes.InvalidArgument {
		t.Fatalf("reply to another conversation's message: %v, want InvalidArgument", err)
	}
	if _, err := g.msgs.DeleteMessage(as(alice), &platformv1.DeleteMessageRequest{ConversationId: conv, MessageId: root}); err != nil {
		t.Fatal(err)
	}
	for _, to := range []string{root, r1} {
		if _, err := g.msgs.SendMessage(as(bob), &platformv1.SendMessageRequest{ConversationId: conv, Body: "x", ReplyToMessageId: to}); code(err) != codes.FailedPrecondition {
			t.Fatalf("reply to %s of a deleted root: %v, want FailedPrecondition", to, err)
		}
	}
}

func msgIDs(ms []*platformv1.Message) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.GetId()
	}
	return out
}
