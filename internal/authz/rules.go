package authz

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
)

// Rule is the access rule of one method, resolved from its (platform.v1.access) option.
type Rule struct {
	Method            string // full method, "/platform.v1.MessageService/SendMessage"
	Public            bool
	Permission        Permission
	ConversationField []protoreflect.Name // path in the request; empty when not conversation-scoped
	RequireMembership bool
	Ownership         platformv1.Ownership
	OwnerField        []protoreflect.Name
}

// PublicServices are infrastructure services without access options: probes and tooling must reach
// them without a token. They expose no platform data (health states and the API schema only).
var PublicServices = map[string]bool{
	"grpc.health.v1.Health":                    true,
	"grpc.reflection.v1.ServerReflection":      true,
	"grpc.reflection.v1alpha.ServerReflection": true,
}

// Rules maps full method names to their rules.
type Rules map[string]Rule

// BuildRules reads the access rule of every method registered on the server (grpc.Server.GetServiceInfo).
// A method of any other service than PublicServices without a valid rule is an error naming it: the
// server must refuse to start rather than serve a method nobody decided the access of (default deny).
func BuildRules(services map[string]grpc.ServiceInfo) (Rules, error) {
	rules := Rules{}
	var errs []error
	names := make([]string, 0, len(services))
	for name := range services {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, svc := range names {
		for _, m := range services[svc].Methods {
			full := "/" + svc + "/" + m.Name
			if PublicServices[svc] {
				rules[full] = Rule{Method: full, Public: true}
				continue
			}
			r, err := ruleFor(svc, m.Name)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", full, err))
				continue
			}
			r.Method = full
			rules[full] = r
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("access rules: %w", errors.Join(errs...))
	}
	return rules, nil
}

func ruleFor(service, method string) (Rule, error) {
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(service + "." + method))
	if err != nil {
		return Rule{}, fmt.Errorf("no descriptor, so no access rule: %w", err)
	}
	md, ok := d.(protoreflect.MethodDescriptor)
	if !ok {
		return Rule{}, errors.New("not a method")
	}
	opt, _ := proto.GetExtension(md.Options(), platformv1.E_Access).(*platformv1.AccessRule)
	if opt == nil {
		return Rule{}, errors.New("has no (platform.v1.access) option; every method needs an access rule")
	}
	r := Rule{
		Public:            opt.GetPublic(),
		Permission:        Permission(opt.GetPermission()),
		RequireMembership: opt.GetRequireMembership(),
		Ownership:         opt.GetOwnership(),
	}
	switch {
	case r.Public && (r.Permission != "" || opt.GetConversationIdField() != "" || r.RequireMembership || r.Ownership != 0):
		return Rule{}, errors.New("a public rule must not name a permission, conversation or ownership")
	case !r.Public && r.Permission == "":
		return Rule{}, errors.New("the access rule names no permission and is not public")
	case !r.Public && !knownPermission(r.Permission):
		return Rule{}, fmt.Errorf("unknown permission %q", r.Permission)
	case r.RequireMembership && opt.GetConversationIdField() == "":
		return Rule{}, errors.New("require_membership without conversation_id_field")
	case (r.Ownership == platformv1.Ownership_OWNERSHIP_UNSPECIFIED) != (opt.GetOwnerField() == ""):
		return Rule{}, errors.New("ownership and owner_field go together")
	}
	if r.ConversationField, err = fieldPath(md.Input(), opt.GetConversationIdField()); err != nil {
		return Rule{}, fmt.Errorf("conversation_id_field: %w", err)
	}
	if r.OwnerField, err = fieldPath(md.Input(), opt.GetOwnerField()); err != nil {
		return Rule{}, fmt.Errorf("owner_field: %w", err)
	}
	return r, nil
}

func knownPermission(p Permission) bool {
	for role := range PlatformRoles {
		if roleGrants(role, p) {
			return true
		}
	}
	for _, row := range ConversationRoles {
		if _, ok := row[p]; ok {
			return true
		}
	}
	return false
}

// fieldPath checks that a dotted path names a singular string field of msg and returns its parts.
func fieldPath(msg protoreflect.MessageDescriptor, path string) ([]protoreflect.Name, error) {
	if path == "" {
		return nil, nil
	}
	var parts []protoreflect.Name
	md := msg
	for i, p := range strings.Split(path, ".") {
		if md == nil {
			return nil, fmt.Errorf("%q: %s is not a message", path, parts[i-1])
		}
		f := md.Fields().ByName(protoreflect.Name(p))
		if f == nil || f.Cardinality() == protoreflect.Repeated {
			return nil, fmt.Errorf("%q: %s has no singular field %s", path, md.FullName(), p)
		}
		parts = append(parts, f.Name())
		md = f.Message()
		if i == strings.Count(path, ".") && f.Kind() != protoreflect.StringKind {
			return nil, fmt.Errorf("%q is not a string field", path)
		}
	}
	return parts, nil
}

// StringAt reads the string field at path (a Rule's ConversationField or OwnerField) from a request;
// unset parents read as "". The audit names a call's resources with it, as the access check does.
func StringAt(m proto.Message, path []protoreflect.Name) string { return stringAt(m, path) }

// stringAt reads a string field by path from a request; unset parents read as "".
func stringAt(m proto.Message, path []protoreflect.Name) string {
	if len(path) == 0 || m == nil {
		return ""
	}
	msg := m.ProtoReflect()
	for i, name := range path {
		f := msg.Descriptor().Fields().ByName(name)
		if f == nil {
			return ""
		}
		if i == len(path)-1 {
			return msg.Get(f).String()
		}
		if !msg.Has(f) {
			return ""
		}
		msg = msg.Get(f).Message()
	}
	return ""
}
