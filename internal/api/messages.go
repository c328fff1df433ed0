package api

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/authz"
	"github.com/msgplatform/platform/internal/convcache"
	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/events"
	"github.com/msgplatform/platform/internal/protoconv"
	"github.com/msgplatform/platform/internal/requestid"
	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/stream"
)

// Producer is the part of a franz-go client SendMessage uses.
type Producer interface {
	ProduceSync(ctx context.Context, rs ...*kgo.Record) kgo.ProduceResults
}

// Messages implements platform.v1.MessageService.
type Messages struct {
	platformv1.UnimplementedMessageServiceServer
	Deps
	producer Producer
	keys     *envelope.Keys // sign the inbound records
	sendKeys *SendKeys
	hub      *stream.Hub
	authz    *authz.Authorizer
	streams  *streamSlots
}

// NewMessages returns the MessageService handler: SendMessage produces with producer, signing with keys.
func NewMessages(d Deps, producer Producer, keys *envelope.Keys, sendKeys *SendKeys, hub *stream.Hub, authorizer *authz.Authorizer) *Messages {
	if d.Now == nil {
		d.Now = time.Now
	}
	return &Messages{Deps: d, producer: producer, keys: keys, sendKeys: sendKeys, hub: hub, authz: authorizer,
		streams: newStreamSlots(d.MaxStreamsPerPrincipal)}
}

func validBody(v *violations, field, body string) {
	if err := envelope.CheckBody(body); err != nil {
		v.add(field, "%v", err)
	}
}

// sendFields maps the envelope's field names to the SendMessageRequest's, for the violations a request
// can cause (sender and tenant come from the token, checked when it was verified).
var sendFields = map[string]string{"conversation_id": "conversation_id", "body": "body",
	"client_message_id": "client_message_id", "metadata": "metadata", "thread_id": "reply_to_message_id"}

// validateSend checks the message SendMessage is about to publish with envelope.Validate, the rules the
// pipeline's validate stage applies: what is accepted here is never refused there.
func validateSend(in *platformv1.InboundMessage) error {
	err := envelope.Validate(in)
	if err == nil {
		return nil
	}
	var v violations
	for _, vi := range envelope.Violations(err) {
		field := vi.Field
		if f, ok := sendFields[strings.SplitN(field, "[", 2)[0]]; ok {
			field = f + strings.TrimPrefix(field, strings.SplitN(field, "[", 2)[0])
		}
		v.add(field, "%s", vi.Description)
	}
	return v.err()
}

// SendMessage validates the message, publishes it to messages.inbound and answers once Kafka has
// acknowledged it. A repeated client_message_id returns the first send's id and publishes nothing.
func (s *Messages) SendMessage(ctx context.Context, req *platformv1.SendMessageRequest) (*platformv1.SendMessageResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	now := s.Now()
	id := newID()
	convID := req.GetConversationId()
	in := &platformv1.InboundMessage{
		Id: id, TenantId: p.TenantID, ConversationId: convID, SenderId: p.Subject, Body: req.GetBody(),
		ClientMessageId: req.GetClientMessageId(), Metadata: req.GetMetadata(), RequestId: requestid.From(ctx),
		SendTime: timestamppb.New(now), SenderRoles: p.Roles,
	}
	if err := validateSend(in); err != nil {
		return nil, err
	}
	if err := s.activeConversation(ctx, p.TenantID, convID); err != nil {
		return nil, err
	}
	if replyTo := req.GetReplyToMessageId(); replyTo != "" {
		if in.ThreadId, err = s.threadOf(ctx, p.TenantID, convID, replyTo); err != nil {
			return nil, err
		}
	}
	var key string
	if cmid := req.GetClientMessageId(); cmid != "" {
		key = sendKey(p.TenantID, convID, p.Subject, cmid)
		earlier, claimed, err := s.sendKeys.Claim(ctx, key, id)
		if err != nil {
			s.Logger.WarnContext(ctx, "idempotency store unavailable", "error", err)
			return nil, status.Error(codes.Unavailable, "cannot guarantee client_message_id idempotency right now; retry later")
		}
		if !claimed {
			return &platformv1.SendMessageResponse{MessageId: earlier.ID, State: platformv1.MessageState_MESSAGE_STATE_ACCEPTED,
				CreateTime: timestamppb.New(earlier.Time), Duplicate: true}, nil
		}
	}

	rec, err := envelope.InboundRecord(in, s.keys)
	if err != nil {
		s.Logger.ErrorContext(ctx, "cannot encode the inbound record", "error", err)
		return nil, status.Error(codes.Internal, "encode message")
	}
	if err := s.producer.ProduceSync(ctx, rec).FirstErr(); err != nil {
		if key != "" {
			if rerr := s.sendKeys.Release(context.WithoutCancel(ctx), key, id); rerr != nil {
				s.Logger.WarnContext(ctx, "idempotency claim not released; it expires by itself", "error", rerr)
			}
		}
		s.Logger.WarnContext(ctx, "message not accepted: kafka produce failed", "conversation_id", convID, "error", err)
		if errors.Is(err, context.Canceled) {
			return nil, status.Error(codes.Canceled, "request cancelled before Kafka acknowledged the message; it was not accepted")
		}
		return nil, status.Error(codes.Unavailable, "message not accepted: the message broker is unavailable; retry later")
	}
	if key != "" {
		if err := s.sendKeys.Done(context.WithoutCancel(ctx), key, id, now); err != nil {
			s.Logger.WarnContext(ctx, "idempotency key not completed", "error", err)
		}
	}
	return &platformv1.SendMessageResponse{MessageId: id, State: platformv1.MessageState_MESSAGE_STATE_ACCEPTED, CreateTime: in.GetSendTime()}, nil
}

// threadOf returns the thread a reply to replyTo joins: replyTo's own when it is a root, its root's when
// it is a reply. INVALID_ARGUMENT when replyTo is not a message of the conversation; FAILED_PRECONDITION
// when it, or its root, is deleted.
func (s *Messages) threadOf(ctx context.Context, tenant, convID, replyTo string) (string, error) {
	m, err := s.Store.Messages.Get(ctx, tenant, convID, replyTo)
	if errors.Is(err, store.ErrNotFound) {
		return "", invalid("reply_to_message_id", "not a message of this conversation")
	}
	if err != nil {
		return "", storeError(ctx, s.Logger, "message", err)
	}
	if m.ThreadID != "" {
		if m, err = s.Store.Messages.Get(ctx, tenant, convID, m.ThreadID); err != nil {
			return "", storeError(ctx, s.Logger, "thread root", err)
		}
	}
	if m.State == store.MessageDeleted {
		return "", status.Error(codes.FailedPrecondition, "the thread's root message is deleted: it takes no new replies")
	}
	return m.ID, nil
}

// activeConversation refuses a conversation that is missing in the tenant or archived, through the
// conversation cache.
func (s *Messages) activeConversation(ctx context.Context, tenant, convID string) error {
	err := s.Active.Check(ctx, s.Store, tenant, convID)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, convcache.ErrArchived):
		return status.Error(codes.FailedPrecondition, "conversation is archived: it takes no new messages")
	default:
		return storeError(ctx, s.Logger, "conversation", err)
	}
}

// ListMessages lists persisted, not deleted messages, newest first: the top-level ones, or with thread_id
// that thread's replies.
func (s *Messages) ListMessages(ctx context.Context, req *platformv1.ListMessagesRequest) (*platformv1.ListMessagesResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	size, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	var ms []store.Message
	var next string
	if th := req.GetThreadId(); th != "" {
		ms, next, err = s.Store.Messages.ListThread(ctx, p.TenantID, req.GetConversationId(), th, size, req.GetPageToken())
	} else {
		ms, next, err = s.Store.Messages.List(ctx, p.TenantID, req.GetConversationId(), size, req.GetPageToken())
	}
	if err != nil {
		return nil, storeError(ctx, s.Logger, "messages", err)
	}
	resp := &platformv1.ListMessagesResponse{NextPageToken: next}
	for _, m := range ms {
		resp.Messages = append(resp.Messages, protoconv.MessageToProto(m))
	}
	return resp, nil
}

// GetMessage returns one persisted message (a deleted one as its tombstone).
func (s *Messages) GetMessage(ctx context.Context, req *platformv1.GetMessageRequest) (*platformv1.GetMessageResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	m, err := s.Store.Messages.Get(ctx, p.TenantID, req.GetConversationId(), req.GetMessageId())
	if err != nil {
		return nil, storeError(ctx, s.Logger, "message", err)
	}
	return &platformv1.GetMessageResponse{Message: protoconv.MessageToProto(m)}, nil
}

// UpdateMessage edits the body (the author only; checked by the access rule).
func (s *Messages) UpdateMessage(ctx context.Context, req *platformv1.UpdateMessageRequest) (*platformv1.UpdateMessageResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	in := req.GetMessage()
	var v violations
	paths := req.GetUpdateMask().GetPaths()
	if len(paths) == 0 {
		paths = []string{"body"}
	}
	for _, path := range paths {
		switch path {
		case "body":
			validBody(&v, "message.body", in.GetBody())
		case "version":
		default:
			v.add("update_mask", "field %q cannot be updated (updatable: body)", path)
		}
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	if err := s.writableConversation(ctx, p.TenantID, req.GetConversationId()); err != nil {
		return nil, err
	}
	m, err := s.Store.Messages.UpdateBody(ctx, p.TenantID, req.GetConversationId(), in.GetId(), in.GetVersion(), in.GetBody(), s.Now())
	if err != nil {
		return nil, storeError(ctx, s.Logger, "message", err)
	}
	out := protoconv.MessageToProto(m)
	// The id the change-stream watcher would give the same change, so consumers deduplicate the two.
	s.publish(ctx, &platformv1.Event{Id: events.MessageEventID(m.ID, m.Version), Type: platformv1.EventType_EVENT_TYPE_MESSAGE_UPDATED, TenantId: p.TenantID,
		ConversationId: m.ConversationID, ActorId: p.Subject, Payload: &platformv1.Event_Message{Message: out}})
	return &platformv1.UpdateMessageResponse{Message: out}, nil
}

// DeleteMessage replaces the message with a tombstone.
func (s *Messages) DeleteMessage(ctx context.Context, req *platformv1.DeleteMessageRequest) (*platformv1.DeleteMessageResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.writableConversation(ctx, p.TenantID, req.GetConversationId()); err != nil {
		return nil, err
	}
	m, err := s.Store.Messages.Delete(ctx, p.TenantID, req.GetConversationId(), req.GetMessageId(), s.Now())
	if err != nil {
		return nil, storeError(ctx, s.Logger, "message", err)
	}
	out := protoconv.MessageToProto(m)
	s.publish(ctx, &platformv1.Event{Id: events.MessageEventID(m.ID, m.Version), Type: platformv1.EventType_EVENT_TYPE_MESSAGE_DELETED, TenantId: p.TenantID,
		ConversationId: m.ConversationID, ActorId: p.Subject, Payload: &platformv1.Event_Message{Message: out}})
	return &platformv1.DeleteMessageResponse{Message: out}, nil
}

// StreamMessages sends the conversation's message events as they happen, after replaying the persisted
// messages after req.after_message_id when it is set (see loadReplay). The caller's right to read is
// checked again before every message (through the membership cache), so a member removed mid-stream
// stops receiving at once; its own removal event ends the stream with PERMISSION_DENIED.
func (s *Messages) StreamMessages(req *platformv1.StreamMessagesRequest, srv grpc.ServerStreamingServer[platformv1.StreamMessagesResponse]) error {
	ctx := srv.Context()
	p, err := principal(ctx)
	if err != nil {
		return err
	}
	release, err := s.streams.acquire(p)
	if err != nil {
		return err
	}
	defer release()
	// Subscribe first, then read the replay: whatever is persisted in between is in one or both, and
	// the replay drops the live events it covers, so there is no gap and no duplicate.
	sub := s.hub.Subscribe(p.TenantID, req.GetConversationId())
	defer sub.Close()
	replayed, err := s.loadReplay(ctx, p, req)
	if err != nil {
		return err
	}
	// Send headers now so REST clients (curl -N) see the response start before the first message; the
	// REST gateway starts its HTTP response on StreamStartedHeader.
	if err := srv.SendHeader(metadata.Pairs(StreamStartedHeader, "true")); err != nil {
		return err
	}
	if err := replayed.send(srv); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-sub.C:
			if !ok {
				if errors.Is(sub.Err(), stream.ErrTooSlow) {
					return status.Error(codes.ResourceExhausted, "stream fell behind; reconnect")
				}
				return status.Error(codes.Unavailable, "server shutting down; reconnect")
			}
			if replayed.covers(ev) {
				continue
			}
			if err := s.forward(ctx, p, ev, srv); err != nil {
				return err
			}
		}
	}
}

func (s *Messages) forward(ctx context.Context, p auth.Principal, ev *platformv1.Event, srv grpc.ServerStreamingServer[platformv1.StreamMessagesResponse]) error {
	switch ev.GetType() {
	case platformv1.EventType_EVENT_TYPE_MEMBER_REMOVED:
		if ev.GetMember().GetUserId() == p.Subject {
			return status.Error(codes.PermissionDenied, "no longer a member of this conversation")
		}
		return nil
	case platformv1.EventType_EVENT_TYPE_READ_STATE_UPDATED:
		if ev.GetReadState().GetUserId() != p.Subject {
			return nil // another member's read state is its own business
		}
		return srv.Send(&platformv1.StreamMessagesResponse{Type: ev.GetType(), ReadState: ev.GetReadState()})
	case platformv1.EventType_EVENT_TYPE_MESSAGE_PERSISTED, platformv1.EventType_EVENT_TYPE_MESSAGE_UPDATED, platformv1.EventType_EVENT_TYPE_MESSAGE_DELETED:
		if err := authz.Status(s.authz.Decide(ctx, p, authz.Request{Permission: authz.MessageRead, ConversationID: ev.GetConversationId(), RequireMembership: true})); err != nil {
			return err
		}
		return srv.Send(&platformv1.StreamMessagesResponse{Type: ev.GetType(), Message: ev.GetMessage()})
	default:
		return nil
	}
}
