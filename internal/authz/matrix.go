// Package authz decides who may do what. The rules live beside each RPC as (platform.v1.access) method
// options; this package reads them once at start-up into a table, holds the role → permission matrix as
// data, looks memberships up through a Redis cache, and enforces all of it in one gRPC interceptor. The
// same Authorizer serves the ingest pipeline's authorize stage, so the two can never disagree.
package authz

import (
	"slices"

	"github.com/msgplatform/platform/internal/store"
)

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

// Permissions returns every permission of the platform, in a fresh slice (metrics pre-initialise a series
// for each).
func Permissions() []Permission { return slices.Clone(allPermissions) }

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
	// PlatformGlobalOperator is the operator of the whole platform: PlatformOperator's permissions in
	// every tenant, and over dead letters that belong to none (records that failed before a tenant was
	// known, such as unsigned ones).
	PlatformGlobalOperator = "platform_operator"
)

// PlatformRoles grants permissions by platform role. `user` and operator permissions need no
// conversation; `service` permissions apply to every conversation of the caller's own tenant without
// membership. How far each role reaches is PlatformRoleReach.
var PlatformRoles = map[string][]Permission{
	PlatformUser:           {ConversationCreate, ConversationList},
	PlatformService:        {MessageSend, MessageRead, ConversationRead},
	PlatformOperator:       {DLQRead, DLQWrite},
	PlatformGlobalOperator: {DLQRead, DLQWrite},
}

// Reach is how far the permissions of a platform role extend.
type Reach uint8

// Reaches, from the narrowest.
const (
	// ReachOwn: the caller's own conversations (the ones it creates and belongs to).
	ReachOwn Reach = iota
	// ReachTenant: everything of the caller's own tenant (the tenant_id of its token).
	ReachTenant
	// ReachAllTenants: every tenant, and what belongs to none.
	ReachAllTenants
)

// PlatformRoleReach says how far each platform role of PlatformRoles reaches. Handlers of resources that
// are not conversation-scoped (dead letters) confine a caller to its tenant unless ReachesAllTenants.
var PlatformRoleReach = map[string]Reach{
	PlatformUser:           ReachOwn,
	PlatformService:        ReachTenant,
	PlatformOperator:       ReachTenant,
	PlatformGlobalOperator: ReachAllTenants,
}

// OperatorRoles are the platform roles that act on other people's data (dead letters carry the
// payloads of others' messages) rather than as a participant: the audit records every call one of them
// grants, reads included.
var OperatorRoles = []string{PlatformGlobalOperator, PlatformOperator} // widest reach first

// platformGrant reports whether any of roles holds p by platform role.
func platformGrant(roles []string, p Permission) bool {
	for _, r := range roles {
		if roleGrants(r, p) {
			return true
		}
	}
	return false
}

func roleGrants(role string, p Permission) bool {
	return slices.Contains(PlatformRoles[role], p)
}

// OperatorGrant returns the operator role (of OperatorRoles, the widest-reaching first) by which roles
// hold p, or "" when none of them does: such a call acts on others' data and is audited.
func OperatorGrant(roles []string, p Permission) string {
	for _, op := range OperatorRoles {
		if slices.Contains(roles, op) && roleGrants(op, p) {
			return op
		}
	}
	return ""
}

// OperatorOnly reports whether p is granted by operator roles and by nothing else (no conversation role,
// no other platform role): whoever asks for it, granted or refused, is asking for others' data.
func OperatorOnly(p Permission) bool {
	operator := false
	for role := range PlatformRoles {
		if !roleGrants(role, p) {
			continue
		}
		if !slices.Contains(OperatorRoles, role) {
			return false
		}
		operator = true
	}
	for _, row := range ConversationRoles {
		if row[p] != Denied {
			return false
		}
	}
	return operator
}

// ReachesAllTenants reports whether roles hold p by a platform role that reaches every tenant; a caller
// that holds p otherwise is confined to its own tenant.
func ReachesAllTenants(roles []string, p Permission) bool {
	for _, r := range roles {
		if PlatformRoleReach[r] == ReachAllTenants && roleGrants(r, p) {
			return true
		}
	}
	return false
}
