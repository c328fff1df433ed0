// Package authz decides who may do what. The rules live beside each RPC as (platform.v1.access) method
// options; this package reads them once at start-up into a table, holds the role → permission matrix as
// data, looks memberships up through a Redis cache, and enforces all of it in one gRPC interceptor. The
// same Authorizer serves the ingest pipeline's authorize stage, so the two can never disagree.
package authz

import "github.com/msgplatform/platform/internal/store"

// Permission names an action, as written in the access rules of the .proto files.
type Permission string

// The permissions of the platform.
const (
	ConversationCreate Permission = "conversation.create"
	ConversationList   Permission = "conversation.list"
	ConversationRead   Permission = "conversation.read"
	ConversationUpdate Permission = "conversation.update"
	ConversationDelete Permission = "conversation.delete"
	MemberList         Permission = "member.list"
	MemberAdd          Permission = "member.add"
	MemberRemove       Permission = "member.remove"
	MessageRead        Permission = "message.read"
	MessageSend        Permission = "message.send"
	MessageUpdate      Permission = "message.update"
	MessageDelete      Permission = "message.delete"
	DLQRead            Permission = "dlq.read"
	DLQWrite           Permission = "dlq.write"
)

// allPermissions lists the constants above (the decisions metric is pre-initialised for each).
var allPermissions = []Permission{
	ConversationCreate, ConversationList, ConversationRead, ConversationUpdate, ConversationDelete,
	MemberList, MemberAdd, MemberRemove, MessageRead, MessageSend, MessageUpdate, MessageDelete, DLQRead, DLQWrite,
}

// readOnly are the permissions that change nothing; every other one mutates. One definition for the
// quotas (a mutation costs more) and the audit (every mutation is recorded).
var readOnly = map[Permission]bool{
	ConversationList: true, ConversationRead: true, MemberList: true, MessageRead: true, DLQRead: true,
}

// Mutates reports whether a call with permission p changes state (public calls have none: reads).
func (p Permission) Mutates() bool { return p != "" && !readOnly[p] }

// Grant is how far a role holds a permission.
type Grant int

// Grants, from none to full.
const (
	Denied Grant = iota
	// OwnOnly: only on the caller's own resource: the message it wrote (OWNERSHIP_MESSAGE_AUTHOR) or
	// itself (OWNERSHIP_SELF).
	OwnOnly
	Allowed
)

// ConversationRoles is the conversation role → permission matrix (ARCHITECTURE.md, "Authorization").
// A permission missing from a role's row is Denied.
var ConversationRoles = map[store.Role]map[Permission]Grant{
	store.RoleOwner: {
		ConversationRead: Allowed, ConversationUpdate: Allowed, ConversationDelete: Allowed,
		MemberList: Allowed, MemberAdd: Allowed, MemberRemove: Allowed,
		MessageRead: Allowed, MessageSend: Allowed, MessageUpdate: OwnOnly, MessageDelete: Allowed,
	},
	store.RoleAdmin: {
		ConversationRead: Allowed, ConversationUpdate: Allowed,
		MemberList: Allowed, MemberAdd: Allowed, MemberRemove: Allowed,
		MessageRead: Allowed, MessageSend: Allowed, MessageUpdate: OwnOnly, MessageDelete: Allowed,
	},
	store.RoleMember: {
		ConversationRead: Allowed,
		MemberList:       Allowed, MemberRemove: OwnOnly,
		MessageRead: Allowed, MessageSend: Allowed, MessageUpdate: OwnOnly, MessageDelete: OwnOnly,
	},
	store.RoleViewer: {
		ConversationRead: Allowed,
		MemberList:       Allowed, MemberRemove: OwnOnly,
		MessageRead: Allowed,
	},
}

// Platform roles, from the JWT `roles` claim.
const (
	PlatformUser     = "user"
	PlatformService  = "service"
	PlatformOperator = "operator"
)

// PlatformRoles grants permissions by platform role. `user` and `operator` permissions need no
// conversation; `service` permissions apply to every conversation of the caller's own tenant without
// membership.
var PlatformRoles = map[string][]Permission{
	PlatformUser:     {ConversationCreate, ConversationList},
	PlatformService:  {MessageSend, MessageRead, ConversationRead},
	PlatformOperator: {DLQRead, DLQWrite},
}

// platformGrant reports whether any of roles holds p by platform role.
func platformGrant(roles []string, p Permission) bool {
	for _, r := range roles {
		for _, granted := range PlatformRoles[r] {
			if granted == p {
				return true
			}
		}
	}
	return false
}
