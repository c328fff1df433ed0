package authz

import (
	"slices"
	"strings"

	"github.com/msgplatform/platform/internal/store"
)

// matrixRows is the row order of the table in docs/authorization.md.
var matrixRows = []Permission{
	ConversationRead, ConversationUpdate, ConversationDelete, MemberList, MemberAdd, MemberRemove,
	MessageRead, MessageSend, MessageUpdate, MessageDelete,
}

// MatrixMarkdown renders the conversation role matrix and the platform roles as docs/authorization.md
// shows them (a test keeps that page equal to it).
func MatrixMarkdown() string {
	roles := []store.Role{store.RoleOwner, store.RoleAdmin, store.RoleMember, store.RoleViewer}
	var b strings.Builder
	b.WriteString("| permission | owner | admin | member | viewer |\n|---|:-:|:-:|:-:|:-:|\n")
	for _, p := range matrixRows {
		b.WriteString("| `" + string(p) + "` |")
		for _, r := range roles {
			switch ConversationRoles[r][p] {
			case Allowed:
				b.WriteString(" x |")
			case OwnOnly:
				if p == MemberRemove {
					b.WriteString(" self |")
				} else {
					b.WriteString(" author |")
				}
			default:
				b.WriteString("  |")
			}
		}
		b.WriteString("\n")
	}
	b.WriteString("\n| platform role (JWT `roles`) | permissions | scope |\n|---|---|---|\n")
	for _, r := range platformRoleRows {
		var ps []string
		for _, p := range PlatformRoles[r] {
			ps = append(ps, "`"+string(p)+"`")
		}
		b.WriteString("| `" + r + "` | " + strings.Join(ps, ", ") + " | " + roleScope(r) + " |\n")
	}
	return b.String()
}

// platformRoleRows is the row order of the platform roles table.
var platformRoleRows = []string{PlatformUser, PlatformService, PlatformOperator, PlatformGlobalOperator}

// roleScope describes a platform role's reach (PlatformRoleReach); operator roles act on dead letters
// and every call of theirs is audited.
func roleScope(role string) string {
	reach := map[Reach]string{
		ReachOwn:        "its own conversations (create, list)",
		ReachTenant:     "its own tenant",
		ReachAllTenants: "every tenant",
	}[PlatformRoleReach[role]]
	switch {
	case slices.Contains(OperatorRoles, role) && PlatformRoleReach[role] == ReachAllTenants:
		return "dead letters of " + reach + " and those of no tenant; every call audited"
	case slices.Contains(OperatorRoles, role):
		return "dead letters of " + reach + "; every call audited"
	case PlatformRoleReach[role] == ReachTenant:
		return "every conversation of " + reach + ", without membership"
	}
	return reach
}
