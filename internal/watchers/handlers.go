package watchers

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/events"
	"github.com/msgplatform/platform/internal/protoconv"
	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/store/changes"
)

// Invalidator drops one cached membership (*authz.MembershipCache has this method).
type Invalidator interface {
	Invalidate(ctx context.Context, tenantID, conversationID, userID string) error
}

// MembershipInvalidator is the changes.Handler of the memberships collection: every insert, update, replace and
// delete invalidates the membership cache entry of (tenant, conversation, user), read from the document
// key (store.ParseMembershipID), which every event carries, deletes included. It catches writes made
// outside the API (migrations, manual fixes); the API invalidates on its own writes too, so a change is
// usually invalidated twice, which is harmless. A document key that is not a membership id is skipped.
type MembershipInvalidator struct{ Cache Invalidator }

// Handle implements changes.Handler.
func (h MembershipInvalidator) Handle(ctx context.Context, ev changes.Event) error {
	switch ev.OperationType {
	case changes.OpInsert, changes.OpUpdate, changes.OpReplace, changes.OpDelete:
	default:
		return nil
	}
	id, ok := ev.ID().StringValueOK()
	if !ok {
		return nil // not a document the store wrote; nothing cached under it
	}
	tenant, conversation, user, err := store.ParseMembershipID(id)
	if err != nil {
		return nil
	}
	if err := h.Cache.Invalidate(ctx, tenant, conversation, user); err != nil {
		return fmt.Errorf("invalidate membership %s: %w", id, err)
	}
	return nil
}

// Publisher publishes one event (*events.Publisher has this method).
type Publisher interface {
	Publish(ctx context.Context, ev *platformv1.Event) error
}

// MessageEvents is the changes.Handler of the messages collection: for insert, update and replace it publishes
// the message's state (the looked-up full document) to messages.events:
//   - state persisted, version <= 1: EVENT_TYPE_MESSAGE_PERSISTED, id = message id (same as the pipeline's);
//   - state deleted: EVENT_TYPE_MESSAGE_DELETED, id = events.MessageEventID(id, version);
//   - otherwise: EVENT_TYPE_MESSAGE_UPDATED, id = events.MessageEventID(id, version).
//
// With updateLookup the full document is the CURRENT one, possibly newer than the change: two updates in
// quick succession may both yield the latest version, under the same event id, which dedupes them.
// Skipped: messages not yet persisted (state accepted), events without a full document (deleted since),
// hard deletes (no document to describe; the API only soft-deletes), and documents that do not decode.
type MessageEvents struct{ Publisher Publisher }

// Handle implements changes.Handler.
func (h MessageEvents) Handle(ctx context.Context, ev changes.Event) error {
	switch ev.OperationType {
	case changes.OpInsert, changes.OpUpdate, changes.OpReplace:
	default:
		return nil
	}
	if ev.FullDocument == nil {
		return nil
	}
	m, err := store.DecodeMessage(ev.FullDocument)
	if err != nil || m.ID == "" || m.TenantID == "" || m.ConversationID == "" {
		return nil
	}
	out := &platformv1.Event{
		Id:             events.MessageEventID(m.ID, m.Version),
		TenantId:       m.TenantID,
		ConversationId: m.ConversationID,
		Payload:        &platformv1.Event_Message{Message: protoconv.MessageToProto(m)},
	}
	var at time.Time
	switch {
	case m.State == store.MessageDeleted:
		out.Type = platformv1.EventType_EVENT_TYPE_MESSAGE_DELETED
		if m.DeleteTime != nil {
			at = *m.DeleteTime
		}
		// The deleter (author, owner or admin) is not stored: ActorId stays empty.
	case m.State == store.MessagePersisted && m.Version <= 1:
		out.Type = platformv1.EventType_EVENT_TYPE_MESSAGE_PERSISTED
		out.ActorId, out.RequestId, at = m.SenderID, m.RequestID, m.PersistTime
	case m.State == store.MessagePersisted:
		out.Type = platformv1.EventType_EVENT_TYPE_MESSAGE_UPDATED
		out.ActorId, at = m.SenderID, m.UpdateTime // only the author may update
	default:
		return nil // accepted, not yet persisted
	}
	if !at.IsZero() {
		out.EventTime = timestamppb.New(at)
	}
	if err := h.Publisher.Publish(ctx, out); err != nil {
		return fmt.Errorf("publish %s of message %s: %w", out.Type, m.ID, err)
	}
	return nil
}
