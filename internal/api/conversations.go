package api

import (
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/oklog/ulid/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/convcache"
	"github.com/msgplatform/platform/internal/protoconv"
	"github.com/msgplatform/platform/internal/store"
)

// Limits of conversation requests.
const (
	maxTitleLen      = 200 // characters
	maxUserIDLen     = 128 // bytes
	maxInitialMember = 100
)

// MembershipInvalidator drops cached memberships after a change (authz.MembershipCache).
type MembershipInvalidator interface {
	Invalidate(ctx context.Context, tenantID, conversationID, userID string) error
}

// EventPublisher publishes to messages.events (events.Publisher).
type EventPublisher interface {
	Publish(ctx context.Context, ev *platformv1.Event) error
}

// Deps are what the handlers need.
type Deps struct {
	Store   *store.Store
	Members MembershipInvalidator
	Events  EventPublisher
	// Active caches SendMessage's check that the conversation is active (nil: read it every time).
	Active *convcache.Cache
	Logger *slog.Logger
	Now    func() time.Time // nil: time.Now
	// MaxStreamsPerPrincipal caps the live StreamMessages of one principal on this process (≤ 0: none).
	MaxStreamsPerPrincipal int
}

// Conversations implements platform.v1.ConversationService.
type Conversations struct {
	platformv1.UnimplementedConversationServiceServer
	Deps
}

// NewConversations returns the ConversationService handler.
func NewConversations(d Deps) *Conversations {
	if d.Now == nil {
		d.Now = time.Now
	}
	return &Conversations{Deps: d}
}

func newID() string { return ulid.MustNew(ulid.Now(), rand.Reader).String() }

func validUserID(v *violations, field, id string) {
	switch {
	case id == "":
		v.add(field, "must not be empty")
	case len(id) > maxUserIDLen:
		v.add(field, "at most %d bytes", maxUserIDLen)
	case !utf8.ValidString(id) || strings.ContainsFunc(id, func(r rune) bool { return r < 0x20 }):
		v.add(field, "must be printable UTF-8")
	}
}

func validTitle(v *violations, field, title string) string {
	title = strings.TrimSpace(title)
	switch n := utf8.RuneCountInString(title); {
	case n == 0:
		v.add(field, "must not be empty")
	case n > maxTitleLen:
		v.add(field, "at most %d characters", maxTitleLen)
	case !utf8.ValidString(title):
		v.add(field, "must be UTF-8")
	}
	return title
}

// afterMembershipChange makes a change visible: the cache entry goes first (the very next call must see
// it), then the event. Neither failure undoes the stored change; both are logged and counted.
func (d Deps) afterMembershipChange(ctx context.Context, tenantID, conversationID, userID string, ev *platformv1.Event) {
	if err := d.Members.Invalidate(ctx, tenantID, conversationID, userID); err != nil {
		d.Logger.WarnContext(ctx, "membership cache invalidation deferred", "conversation_id", conversationID, "error", err)
	}
	d.publish(ctx, ev)
}

func (d Deps) publish(ctx context.Context, ev *platformv1.Event) {
	if err := d.Events.Publish(ctx, ev); err != nil {
		d.Logger.ErrorContext(ctx, "event not published", "type", ev.GetType().String(), "conversation_id", ev.GetConversationId(), "error", err)
	}
}

// CreateConversation creates a conversation; the caller becomes its owner and member_ids its members.
func (s *Conversations) CreateConversation(ctx context.Context, req *platformv1.CreateConversationRequest) (*platformv1.CreateConversationResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	var v violations
	title := validTitle(&v, "title", req.GetTitle())
	var ids []string
	for i, id := range req.GetMemberIds() {
		validUserID(&v, "member_ids["+itoa(i)+"]", id)
		if id != p.Subject && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	if len(ids) > maxInitialMember {
		v.add("member_ids", "at most %d members at creation", maxInitialMember)
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	now := s.Now()
	c := store.Conversation{ID: newID(), TenantID: p.TenantID, Title: title, CreatorID: p.Subject,
		State: store.ConversationActive, CreateTime: now, UpdateTime: now}
	members := []store.Member{{TenantID: p.TenantID, ConversationID: c.ID, UserID: p.Subject, Role: store.RoleOwner, AddedBy: p.Subject, CreateTime: now, UpdateTime: now}}
	for _, id := range ids {
		members = append(members, store.Member{TenantID: p.TenantID, ConversationID: c.ID, UserID: id, Role: store.RoleMember, AddedBy: p.Subject, CreateTime: now, UpdateTime: now})
	}
	created, err := s.Store.Conversations.Create(ctx, c, members)
	if err != nil {
		return nil, storeError(ctx, s.Logger, "conversation", err)
	}
	out := protoconv.ConversationToProto(created)
	s.publish(ctx, &platformv1.Event{Type: platformv1.EventType_EVENT_TYPE_CONVERSATION_CREATED, TenantId: p.TenantID,
		ConversationId: c.ID, ActorId: p.Subject, Payload: &platformv1.Event_Conversation{Conversation: out}})
	for _, m := range members {
		s.afterMembershipChange(ctx, p.TenantID, c.ID, m.UserID, &platformv1.Event{Type: platformv1.EventType_EVENT_TYPE_MEMBER_ADDED,
			TenantId: p.TenantID, ConversationId: c.ID, ActorId: p.Subject, Payload: &platformv1.Event_Member{Member: protoconv.MemberToProto(m)}})
	}
	return &platformv1.CreateConversationResponse{Conversation: out}, nil
}

// GetConversation returns one conversation, with the caller's read state.
func (s *Conversations) GetConversation(ctx context.Context, req *platformv1.GetConversationRequest) (*platformv1.GetConversationResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	c, err := s.Store.Conversations.Get(ctx, p.TenantID, req.GetConversationId())
	if err != nil {
		return nil, storeError(ctx, s.Logger, "conversation", err)
	}
	out := protoconv.ConversationToProto(c)
	if err := s.fillReadState(ctx, p.TenantID, p.Subject, []*platformv1.Conversation{out}); err != nil {
		return nil, storeError(ctx, s.Logger, "read state", err)
	}
	return &platformv1.GetConversationResponse{Conversation: out}, nil
}

// ListConversations lists the caller's conversations, newest first, each with the caller's read state.
func (s *Conversations) ListConversations(ctx context.Context, req *platformv1.ListConversationsRequest) (*platformv1.ListConversationsResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	size, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	cs, next, err := s.Store.Conversations.ListForUser(ctx, p.TenantID, p.Subject, req.GetIncludeArchived(), size, req.GetPageToken())
	if err != nil {
		return nil, storeError(ctx, s.Logger, "conversations", err)
	}
	resp := &platformv1.ListConversationsResponse{NextPageToken: next}
	for _, c := range cs {
		resp.Conversations = append(resp.Conversations, protoconv.ConversationToProto(c))
	}
	if err := s.fillReadState(ctx, p.TenantID, p.Subject, resp.Conversations); err != nil {
		return nil, storeError(ctx, s.Logger, "read state", err)
	}
	return resp, nil
}

// UpdateConversation updates the title. An empty update_mask means the fields present (title).
func (s *Conversations) UpdateConversation(ctx context.Context, req *platformv1.UpdateConversationRequest) (*platformv1.UpdateConversationResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	in := req.GetConversation()
	var v violations
	paths := req.GetUpdateMask().GetPaths()
	if len(paths) == 0 && in.GetTitle() != "" {
		paths = []string{"title"}
	}
	var title *string
	for _, path := range paths {
		switch path {
		case "title":
			t := validTitle(&v, "conversation.title", in.GetTitle())
			title = &t
		case "version": // a precondition, not a field to write
		default:
			v.add("update_mask", "field %q cannot be updated (updatable: title)", path)
		}
	}
	if title == nil && len(v) == 0 {
		v.add("update_mask", "nothing to update (updatable: title)")
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	if err := s.writableConversation(ctx, p.TenantID, in.GetId()); err != nil {
		return nil, err
	}
	c, err := s.Store.Conversations.Update(ctx, p.TenantID, in.GetId(), in.GetVersion(), title)
	if err != nil {
		return nil, storeError(ctx, s.Logger, "conversation", err)
	}
	out := protoconv.ConversationToProto(c)
	s.publish(ctx, &platformv1.Event{Type: platformv1.EventType_EVENT_TYPE_CONVERSATION_UPDATED, TenantId: p.TenantID,
		ConversationId: c.ID, ActorId: p.Subject, Payload: &platformv1.Event_Conversation{Conversation: out}})
	return &platformv1.UpdateConversationResponse{Conversation: out}, nil
}

// DeleteConversation archives the conversation (soft delete).
func (s *Conversations) DeleteConversation(ctx context.Context, req *platformv1.DeleteConversationRequest) (*platformv1.DeleteConversationResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	c, err := s.Store.Conversations.Archive(ctx, p.TenantID, req.GetConversationId())
	if err != nil {
		return nil, storeError(ctx, s.Logger, "conversation", err)
	}
	s.Active.Forget(p.TenantID, c.ID)
	out := protoconv.ConversationToProto(c)
	s.publish(ctx, &platformv1.Event{Type: platformv1.EventType_EVENT_TYPE_CONVERSATION_DELETED, TenantId: p.TenantID,
		ConversationId: c.ID, ActorId: p.Subject, Payload: &platformv1.Event_Conversation{Conversation: out}})
	return &platformv1.DeleteConversationResponse{Conversation: out}, nil
}

// AddMember adds a member or changes its role. Only owners grant or take away the owner role (an admin
// must not be able to make itself owner), and the last owner cannot be demoted.
func (s *Conversations) AddMember(ctx context.Context, req *platformv1.AddMemberRequest) (*platformv1.AddMemberResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	var v violations
	validUserID(&v, "user_id", req.GetUserId())
	role, ok := protoconv.RoleFromProto(req.GetRole())
	if !ok {
		v.add("role", "unknown role %d", int32(req.GetRole()))
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	tenant, convID, userID := p.TenantID, req.GetConversationId(), req.GetUserId()
	if err := s.writableConversation(ctx, tenant, convID); err != nil {
		return nil, err
	}
	callerRole, err := s.roleOf(ctx, tenant, convID, p.Subject)
	if err != nil {
		return nil, err
	}
	existing, err := s.Store.Members.Get(ctx, tenant, convID, userID)
	switch {
	case err == nil:
	case isNotFound(err):
		existing = store.Member{}
	default:
		return nil, storeError(ctx, s.Logger, "member", err)
	}
	if (role == store.RoleOwner || existing.Role == store.RoleOwner) && callerRole != store.RoleOwner {
		return nil, status.Error(codes.PermissionDenied, "only an owner may grant or change the owner role")
	}
	now := s.Now()
	m, err := s.Store.Members.Put(ctx, store.Member{TenantID: tenant, ConversationID: convID, UserID: userID, Role: role,
		AddedBy: p.Subject, CreateTime: now, UpdateTime: now})
	if err != nil {
		return nil, memberError(ctx, s.Logger, err)
	}
	out := protoconv.MemberToProto(m)
	s.afterMembershipChange(ctx, tenant, convID, userID, &platformv1.Event{Type: platformv1.EventType_EVENT_TYPE_MEMBER_ADDED,
		TenantId: tenant, ConversationId: convID, ActorId: p.Subject, Payload: &platformv1.Event_Member{Member: out}})
	return &platformv1.AddMemberResponse{Member: out}, nil
}

// RemoveMember removes a member. Only owners remove owners; the last owner cannot be removed.
func (s *Conversations) RemoveMember(ctx context.Context, req *platformv1.RemoveMemberRequest) (*platformv1.RemoveMemberResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	tenant, convID, userID := p.TenantID, req.GetConversationId(), req.GetUserId()
	if err := s.writableConversation(ctx, tenant, convID); err != nil {
		return nil, err
	}
	target, err := s.Store.Members.Get(ctx, tenant, convID, userID)
	if err != nil {
		return nil, storeError(ctx, s.Logger, "member", err)
	}
	if target.Role == store.RoleOwner {
		callerRole, err := s.roleOf(ctx, tenant, convID, p.Subject)
		if err != nil {
			return nil, err
		}
		if callerRole != store.RoleOwner {
			return nil, status.Error(codes.PermissionDenied, "only an owner may remove an owner")
		}
	}
	if err := s.Store.Members.Remove(ctx, tenant, convID, userID); err != nil {
		return nil, memberError(ctx, s.Logger, err)
	}
	s.afterMembershipChange(ctx, tenant, convID, userID, &platformv1.Event{Type: platformv1.EventType_EVENT_TYPE_MEMBER_REMOVED,
		TenantId: tenant, ConversationId: convID, ActorId: p.Subject, Payload: &platformv1.Event_Member{Member: protoconv.MemberToProto(target)}})
	return &platformv1.RemoveMemberResponse{}, nil
}

// ListMembers lists the members, by user id.
func (s *Conversations) ListMembers(ctx context.Context, req *platformv1.ListMembersRequest) (*platformv1.ListMembersResponse, error) {
	p, err := principal(ctx)
	if err != nil {
		return nil, err
	}
	size, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	ms, next, err := s.Store.Members.List(ctx, p.TenantID, req.GetConversationId(), size, req.GetPageToken())
	if err != nil {
		return nil, storeError(ctx, s.Logger, "members", err)
	}
	resp := &platformv1.ListMembersResponse{NextPageToken: next}
	for _, m := range ms {
		resp.Members = append(resp.Members, protoconv.MemberToProto(m))
	}
	return resp, nil
}

// writableConversation refuses changes (membership, message edits) in archived conversations.
func (d Deps) writableConversation(ctx context.Context, tenant, convID string) error {
	switch err := convcache.CheckActive(ctx, d.Store, tenant, convID); {
	case err == nil:
		return nil
	case errors.Is(err, convcache.ErrArchived):
		return status.Error(codes.FailedPrecondition, "conversation is archived (read-only)")
	default:
		return storeError(ctx, d.Logger, "conversation", err)
	}
}

func (s *Conversations) roleOf(ctx context.Context, tenant, convID, userID string) (store.Role, error) {
	m, err := s.Store.Members.Get(ctx, tenant, convID, userID)
	switch {
	case isNotFound(err):
		// The interceptor saw the caller as a member; a change that completed since removed it.
		return "", status.Error(codes.PermissionDenied, "the caller is no longer a member of this conversation")
	case err != nil:
		return "", storeError(ctx, s.Logger, "member", err)
	}
	return m.Role, nil
}

// memberError maps the error of a membership change. The last-owner rule is decided by the store
// (store.ErrLastOwner), under the conversation's membership lock, so it holds when owners change each
// other at the same moment; a handler's own check beforehand could not see the other change.
func memberError(ctx context.Context, logger *slog.Logger, err error) error {
	switch {
	case errors.Is(err, store.ErrLastOwner):
		return status.Error(codes.FailedPrecondition, "the last owner cannot be removed or demoted")
	case errors.Is(err, store.ErrMembershipBusy):
		return status.Error(codes.Aborted, "another membership change of this conversation is in progress; retry")
	}
	return storeError(ctx, logger, "member", err)
}
