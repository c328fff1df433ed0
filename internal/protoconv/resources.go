// Package resources converts store documents to platform.v1 API resources, for the API handlers and the
// pipeline's events alike.
package protoconv

import (
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/store"
)

// RoleToProto maps store roles to the API enum.
var RoleToProto = map[store.Role]platformv1.MemberRole{
	store.RoleOwner:  platformv1.MemberRole_MEMBER_ROLE_OWNER,
	store.RoleAdmin:  platformv1.MemberRole_MEMBER_ROLE_ADMIN,
	store.RoleMember: platformv1.MemberRole_MEMBER_ROLE_MEMBER,
	store.RoleViewer: platformv1.MemberRole_MEMBER_ROLE_VIEWER,
}

// RoleFromProto maps the API enum to a store role; unspecified means member.
func RoleFromProto(r platformv1.MemberRole) (store.Role, bool) {
	if r == platformv1.MemberRole_MEMBER_ROLE_UNSPECIFIED {
		return store.RoleMember, true
	}
	for s, p := range RoleToProto {
		if p == r {
			return s, true
		}
	}
	return "", false
}

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func tsPtr(t *time.Time) *timestamppb.Timestamp {
	if t == nil {
		return nil
	}
	return ts(*t)
}

// ConversationToProto converts a conversation.
func ConversationToProto(c store.Conversation) *platformv1.Conversation {
	state := platformv1.ConversationState_CONVERSATION_STATE_ACTIVE
	if c.State == store.ConversationArchived {
		state = platformv1.ConversationState_CONVERSATION_STATE_ARCHIVED
	}
	return &platformv1.Conversation{
		Id: c.ID, TenantId: c.TenantID, Title: c.Title, CreatorId: c.CreatorID, State: state,
		MemberCount: int32(c.MemberCount), CreateTime: ts(c.CreateTime), UpdateTime: ts(c.UpdateTime),
		DeleteTime: tsPtr(c.DeleteTime), Version: c.Version,
	}
}

// MemberToProto converts a membership.
func MemberToProto(m store.Member) *platformv1.Member {
	return &platformv1.Member{UserId: m.UserID, Role: RoleToProto[m.Role], AddedBy: m.AddedBy,
		CreateTime: ts(m.CreateTime), UpdateTime: ts(m.UpdateTime)}
}

var messageStateToProto = map[store.MessageState]platformv1.MessageState{
	store.MessageAccepted:  platformv1.MessageState_MESSAGE_STATE_ACCEPTED,
	store.MessagePersisted: platformv1.MessageState_MESSAGE_STATE_PERSISTED,
	store.MessageDeleted:   platformv1.MessageState_MESSAGE_STATE_DELETED,
}

// MessageToProto converts a stored message to the API resource (the pipeline's events use it too).
func MessageToProto(m store.Message) *platformv1.Message {
	return &platformv1.Message{
		Id: m.ID, TenantId: m.TenantID, ConversationId: m.ConversationID, SenderId: m.SenderID, Body: m.Body,
		ClientMessageId: m.ClientMessageID, Metadata: m.Metadata, State: messageStateToProto[m.State],
		Mentions: m.Mentions, CreateTime: ts(m.CreateTime), PersistTime: ts(m.PersistTime),
		UpdateTime: ts(m.UpdateTime), EditTime: tsPtr(m.EditTime), DeleteTime: tsPtr(m.DeleteTime),
		Version: m.Version, RequestId: m.RequestID,
		ThreadId: m.ThreadID, ReplyCount: m.ReplyCount, LastReplyTime: tsPtr(m.LastReplyTime),
	}
}
