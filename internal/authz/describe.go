package authz

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/store"
)

// RuleOf reads the access rule of one platform method ("/platform.v1.MessageService/SendMessage") from
// its (platform.v1.access) option, checked as BuildRules checks it.
func RuleOf(fullMethod string) (Rule, error) {
	svc, method, ok := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/")
	if !ok || svc == "" || method == "" {
		return Rule{}, fmt.Errorf("%q is not a full method name (/package.Service/Method)", fullMethod)
	}
	r, err := ruleFor(svc, method)
	if err != nil {
		return Rule{}, fmt.Errorf("%s: %w", fullMethod, err)
	}
	r.Method = fullMethod
	return r, nil
}

// Describe renders the rule for readers of the API reference (each operation's description in the
// OpenAPI document): the permission, what it applies to, and who holds it, read from the same tables
// the decision uses (ConversationRoles, PlatformRoles and their reach) so the two cannot disagree.
// The text is Markdown.
func (r Rule) Describe() string {
	if r.Public {
		return "**Access:** public; no token needed."
	}
	var b strings.Builder
	fmt.Fprintf(&b, "**Access:** bearer token; permission `%s`", r.Permission)
	if len(r.ConversationField) > 0 {
		fmt.Fprintf(&b, " on the conversation named by `%s`", joinNames(r.ConversationField))
		if r.RequireMembership {
			b.WriteString("; the caller must be a member of it")
			if r.platformHolds(PlatformService) {
				b.WriteString(" unless it has platform role `" + PlatformService + "`")
			}
		}
	}
	b.WriteString(".")
	var holders []string
	if roles := r.conversationHolders(); len(roles) > 0 {
		holders = append(holders, "conversation roles "+strings.Join(roles, ", "))
	}
	for _, role := range platformRoleRows {
		if r.platformHolds(role) {
			holders = append(holders, "platform role `"+role+"` ("+roleScope(role)+")")
		}
	}
	if len(holders) == 0 {
		b.WriteString(" No role holds it.")
	} else {
		b.WriteString("\n\nGranted to: " + strings.Join(holders, "; ") + ".")
	}
	return b.String()
}

// conversationHolders lists the conversation roles that hold the rule's permission, with "(author
// only)" or "(self only)" where only the caller's own message or membership qualifies. Conversation roles
// count only for rules about one conversation.
func (r Rule) conversationHolders() []string {
	if len(r.ConversationField) == 0 {
		return nil
	}
	var out []string
	for _, role := range []store.Role{store.RoleOwner, store.RoleAdmin, store.RoleMember, store.RoleViewer} {
		switch ConversationRoles[role][r.Permission] {
		case Allowed:
			out = append(out, string(role))
		case OwnOnly:
			switch r.Ownership {
			case platformv1.Ownership_OWNERSHIP_MESSAGE_AUTHOR:
				out = append(out, string(role)+" (author only)")
			case platformv1.Ownership_OWNERSHIP_SELF:
				out = append(out, string(role)+" (self only)")
			}
			// Without an ownership check on the rule, OwnOnly grants nothing (checkOwnership denies).
		}
	}
	return out
}

// platformHolds reports whether a platform role grants the rule's permission where the decision honours
// it: always for calls about no conversation; within a conversation, `service` (tenant-wide, without
// membership) and the others only where membership is not required.
func (r Rule) platformHolds(role string) bool {
	if !roleGrants(role, r.Permission) {
		return false
	}
	if len(r.ConversationField) == 0 {
		return true
	}
	return role == PlatformService || !r.RequireMembership
}

func joinNames(path []protoreflect.Name) string {
	parts := make([]string, len(path))
	for i, p := range path {
		parts[i] = string(p)
	}
	return strings.Join(parts, ".")
}
