package authz

import (
	"strings"

	"github.com/msgplatform/platform/internal/store"
)

// matrixRows is the row order of the README table.
var matrixRows = []Permission{
	ConversationRead, ConversationUpdate, ConversationDelete, MemberList, MemberAdd, MemberRemove,
	MessageRead, MessageSend, MessageUpdate, MessageDelete,
}

// MatrixMarkdown renders the conversation role matrix and the platform roles as the README shows them
// (a test keeps the README equal to it).
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
	scope := map[string]string{
		PlatformUser:     "its own conversations (create, list)",
		PlatformService:  "every conversation of its own tenant, without membership",
		PlatformOperator: "every tenant (dead-letter queue)",
	}
	for _, r := range []string{PlatformUser, PlatformService, PlatformOperator} {
		var ps []string
		for _, p := range PlatformRoles[r] {
			ps = append(ps, "`"+string(p)+"`")
		}
		b.WriteString("| `" + r + "` | " + strings.Join(ps, ", ") + " | " + scope[r] + " |\n")
	}
	return b.String()
}
