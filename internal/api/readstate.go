package api

import (
	"context"
	"errors"

	"google.golang.org/protobuf/types/known/timestamppb"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/store"
)

// MarkRead moves the caller's read cursor forward to message_id and answers the cursor and the unread
// count after it. The cursor only moves forward, so a repeated or older MarkRead changes nothing and
// publishes nothing; a move publishes EVENT_TYPE_READ_STATE_UPDATED, which streams deliver to the caller
// only.
func (s *Messages) MarkRead(ctx context.Context, req *platformv1.MarkReadRequest) (*platformv1.MarkReadResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	convID, msgID := req.GetConversationId(), req.GetMessageId()
	if msgID == "" {
		return nil, invalid("message_id", "must not be empty")
	}
	if _, err := s.Store.Messages.Get(ctx, p.TenantID, convID, msgID); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, invalid("message_id", "not a message of this conversation")
		}
		return nil, storeError(ctx, s.Logger, "message", err)
	}
	before, after, err := s.Store.Members.MarkRead(ctx, p.TenantID, convID, p.Subject, msgID)
	if err != nil {
		return nil, storeError(ctx, s.Logger, "membership", err)
	}
	moved := after != before // the stored cursor moved; the effective one may be ahead (LastSent)
	effective := map[string]string{convID: after}
	if err := s.withLastSent(ctx, p.TenantID, p.Subject, effective); err != nil {
		return nil, storeError(ctx, s.Logger, "read state", err)
	}
	after = effective[convID]
	counts, err := s.Store.Messages.UnreadCounts(ctx, p.TenantID, p.Subject, effective)
	if err != nil {
		return nil, storeError(ctx, s.Logger, "unread count", err)
	}
	resp := &platformv1.MarkReadResponse{LastReadMessageId: after, UnreadCount: counts[convID]}
	if moved {
		s.publish(ctx, &platformv1.Event{Id: newID(), Type: platformv1.EventType_EVENT_TYPE_READ_STATE_UPDATED,
			TenantId: p.TenantID, ConversationId: convID, ActorId: p.Subject, EventTime: timestamppb.New(s.Now()),
			Payload: &platformv1.Event_ReadState{ReadState: &platformv1.ReadState{UserId: p.Subject,
				LastReadMessageId: after, UnreadCount: resp.GetUnreadCount()}}})
	}
	return resp, nil
}

// fillReadState sets the caller's unread_count and last_read_message_id on conversations it is a member
// of, with two queries whatever their number: the cursors (memberships by _id) and the counts (one
// aggregation, see store.Messages.UnreadCounts).
func (d Deps) fillReadState(ctx context.Context, tenantID, userID string, convs []*platformv1.Conversation) error {
	if len(convs) == 0 {
		return nil
	}
	ids := make([]string, len(convs))
	for i, c := range convs {
		ids[i] = c.GetId()
	}
	cursors, err := d.Store.Members.ReadCursors(ctx, tenantID, userID, ids)
	if err != nil {
		return err
	}
	if err := d.withLastSent(ctx, tenantID, userID, cursors); err != nil {
		return err
	}
	counts, err := d.Store.Messages.UnreadCounts(ctx, tenantID, userID, cursors)
	if err != nil {
		return err
	}
	for _, c := range convs {
		c.LastReadMessageId = cursors[c.GetId()]
		c.UnreadCount = counts[c.GetId()]
	}
	return nil
}

// withLastSent raises each cursor (conversation → read cursor, of conversations userID is a member of) to
// userID's newest message there, if newer: sending reads what came before (store.Messages.LastSent).
func (d Deps) withLastSent(ctx context.Context, tenantID, userID string, cursors map[string]string) error {
	ids := make([]string, 0, len(cursors))
	for id := range cursors {
		ids = append(ids, id)
	}
	last, err := d.Store.Messages.LastSent(ctx, tenantID, userID, ids)
	if err != nil {
		return err
	}
	for id, m := range last {
		cursors[id] = max(cursors[id], m)
	}
	return nil
}
