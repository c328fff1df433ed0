package latency

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/store"
)

// UnreadResult is list_conversations_unread_p50_ms and what it was measured on.
type UnreadResult struct {
	P50Millis, P90Millis float64 // ListConversations (one page of every conversation) over gRPC
	Conversations        int
	UnreadEach           int
	Calls                int
}

// MeasureUnreadList measures ListConversations with unread counts for a user in conversations
// conversations with unreadEach unread messages each (sent by another member; the user has read none),
// listing them all in one page (page_size = conversations, at most 200), over gRPC on a gateway started
// by app.Run over FerretDB, redis-server and kfake. Each call reads the page's memberships, conversations,
// the caller's cursors and one aggregation counting the unread messages (see store.Messages.UnreadCounts):
// on FerretDB that aggregation scans the messages collection, so this is the devstack's cost.
func MeasureUnreadList(tb testing.TB, conversations, unreadEach, calls int) (UnreadResult, error) {
	g, err := newGateway(tb)
	if err != nil {
		return UnreadResult{}, err
	}
	ctx := context.Background()
	client, err := store.Connect(ctx, g.mongoURI)
	if err != nil {
		return UnreadResult{}, err
	}
	tb.Cleanup(func() { _ = client.Disconnect(context.Background()) })
	st := store.New(client.Database(g.db))
	// The gateway's bench conversation is one of them.
	for i := 1; i < conversations; i++ {
		if _, err := st.Conversations.Create(ctx, store.Conversation{TenantID: benchTenant, Title: fmt.Sprintf("c%d", i), CreatorID: benchNonMember},
			[]store.Member{{UserID: benchMember}}); err != nil {
			return UnreadResult{}, fmt.Errorf("create conversation %d: %w", i, err)
		}
	}
	cs, _, err := st.Conversations.ListForUser(ctx, benchTenant, benchMember, false, 200, "")
	if err != nil {
		return UnreadResult{}, err
	}
	var msgs []store.Message
	for _, c := range cs {
		for j := range unreadEach {
			msgs = append(msgs, store.Message{ID: ulid.Make().String(), TenantID: benchTenant, ConversationID: c.ID,
				SenderID: benchNonMember, Body: fmt.Sprintf("message %d", j)})
		}
	}
	for len(msgs) > 0 {
		n := min(len(msgs), 1000)
		if _, _, err := st.Messages.InsertMany(ctx, msgs[:n]); err != nil {
			return UnreadResult{}, err
		}
		msgs = msgs[n:]
	}
	list := func() (time.Duration, error) {
		start := time.Now()
		resp, err := g.grpcList(int32(min(conversations, 200)))
		d := time.Since(start)
		if err != nil {
			return d, err
		}
		for _, c := range resp.GetConversations() {
			if c.GetUnreadCount() != int64(unreadEach) {
				return d, fmt.Errorf("conversation %s: unread %d, want %d", c.GetId(), c.GetUnreadCount(), unreadEach)
			}
		}
		if len(resp.GetConversations()) != min(conversations, 200) {
			return d, fmt.Errorf("%d conversations listed, want %d", len(resp.GetConversations()), min(conversations, 200))
		}
		return d, nil
	}
	for range 3 { // warm-up
		if _, err := list(); err != nil {
			return UnreadResult{}, err
		}
	}
	ms := make([]float64, calls)
	for i := range ms {
		d, err := list()
		if err != nil {
			return UnreadResult{}, err
		}
		ms[i] = float64(d.Microseconds()) / 1000
	}
	slices.Sort(ms)
	return UnreadResult{P50Millis: ms[len(ms)/2], P90Millis: ms[len(ms)*9/10], Conversations: conversations, UnreadEach: unreadEach, Calls: calls}, nil
}

func (g *gateway) grpcList(size int32) (*platformv1.ListConversationsResponse, error) {
	return g.grpc.ListConversations(withToken(g.member), &platformv1.ListConversationsRequest{PageSize: size})
}
