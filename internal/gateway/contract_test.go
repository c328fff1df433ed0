package gateway

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
)

// TestEveryRPCHasAnAccessRule guards the contract: every platform.v1 method carries a well-formed
// (platform.v1.access) option, and every field path it names exists in the request message.
func TestEveryRPCHasAnAccessRule(t *testing.T) {
	methods := 0
	protoregistry.GlobalFiles.RangeFilesByPackage("platform.v1", func(fd protoreflect.FileDescriptor) bool {
		for i := 0; i < fd.Services().Len(); i++ {
			svc := fd.Services().Get(i)
			for j := 0; j < svc.Methods().Len(); j++ {
				m := svc.Methods().Get(j)
				methods++
				rule, _ := proto.GetExtension(m.Options(), platformv1.E_Access).(*platformv1.AccessRule)
				if rule == nil {
					t.Errorf("%s has no access rule", m.FullName())
					continue
				}
				if rule.GetPublic() == (rule.GetPermission() != "") {
					t.Errorf("%s: a rule is either public or names a permission: %v", m.FullName(), rule)
				}
				if rule.GetRequireMembership() && rule.GetConversationIdField() == "" {
					t.Errorf("%s: membership required but no conversation_id_field", m.FullName())
				}
				if (rule.GetOwnership() == platformv1.Ownership_OWNERSHIP_UNSPECIFIED) != (rule.GetOwnerField() == "") {
					t.Errorf("%s: ownership and owner_field go together: %v", m.FullName(), rule)
				}
				for _, path := range []string{rule.GetConversationIdField(), rule.GetOwnerField()} {
					if path != "" && !stringFieldAt(m.Input(), path) {
						t.Errorf("%s: %s has no string field %q", m.FullName(), m.Input().FullName(), path)
					}
				}
			}
		}
		return true
	})
	if methods != 23 {
		t.Errorf("found %d platform.v1 methods, the contract has 23: update this test with the contract", methods)
	}
}

func stringFieldAt(md protoreflect.MessageDescriptor, path string) bool {
	parts := strings.Split(path, ".")
	for i, p := range parts {
		f := md.Fields().ByName(protoreflect.Name(p))
		if f == nil || f.IsList() || f.IsMap() {
			return false
		}
		if i == len(parts)-1 {
			return f.Kind() == protoreflect.StringKind
		}
		if f.Message() == nil {
			return false
		}
		md = f.Message()
	}
	return false
}
