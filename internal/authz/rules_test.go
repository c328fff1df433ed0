package authz

import (
	"os"
	"strings"
	"testing"

	"google.golang.org/grpc"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/store"
)

func platformServices() *grpc.Server {
	s := grpc.NewServer()
	platformv1.RegisterConversationServiceServer(s, platformv1.UnimplementedConversationServiceServer{})
	platformv1.RegisterMessageServiceServer(s, platformv1.UnimplementedMessageServiceServer{})
	platformv1.RegisterDeadLetterServiceServer(s, platformv1.UnimplementedDeadLetterServiceServer{})
	platformv1.RegisterHealthServiceServer(s, platformv1.UnimplementedHealthServiceServer{})
	return s
}

func TestBuildRulesFromDescriptors(t *testing.T) {
	rules, err := BuildRules(platformServices().GetServiceInfo())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		method string
		want   Rule
	}{
		{"/platform.v1.HealthService/GetHealth", Rule{Public: true}},
		{"/platform.v1.ConversationService/CreateConversation", Rule{Permission: ConversationCreate}},
		{"/platform.v1.MessageService/SendMessage", Rule{Permission: MessageSend, RequireMembership: true}},
		{"/platform.v1.MessageService/UpdateMessage", Rule{Permission: MessageUpdate, RequireMembership: true, Ownership: platformv1.Ownership_OWNERSHIP_MESSAGE_AUTHOR}},
		{"/platform.v1.ConversationService/RemoveMember", Rule{Permission: MemberRemove, RequireMembership: true, Ownership: platformv1.Ownership_OWNERSHIP_SELF}},
		{"/platform.v1.DeadLetterService/PurgeDeadLetters", Rule{Permission: DLQWrite}},
	}
	for _, tc := range tests {
		got, ok := rules[tc.method]
		if !ok {
			t.Errorf("%s: no rule", tc.method)
			continue
		}
		if got.Public != tc.want.Public || got.Permission != tc.want.Permission ||
			got.RequireMembership != tc.want.RequireMembership || got.Ownership != tc.want.Ownership {
			t.Errorf("%s = %+v, want %+v", tc.method, got, tc.want)
		}
	}
	if r := rules["/platform.v1.ConversationService/UpdateConversation"]; len(r.ConversationField) != 2 || r.ConversationField[1] != "id" {
		t.Errorf("UpdateConversation conversation field = %v, want conversation.id", r.ConversationField)
	}
	if len(rules) != 23 {
		t.Errorf("%d rules, want 23", len(rules))
	}
}

// The server must refuse to start when a registered method has no access rule, naming the method.
func TestBuildRulesRefusesMethodsWithoutRule(t *testing.T) {
	s := platformServices()
	testgrpc.RegisterTestServiceServer(s, testgrpc.UnimplementedTestServiceServer{})
	_, err := BuildRules(s.GetServiceInfo())
	if err == nil || !strings.Contains(err.Error(), "/grpc.testing.TestService/EmptyCall") ||
		!strings.Contains(err.Error(), "access rule") {
		t.Fatalf("BuildRules with a rule-less service = %v, want an error naming its methods", err)
	}

	info := platformServices().GetServiceInfo()
	svc := info["platform.v1.MessageService"]
	svc.Methods = append(svc.Methods, grpc.MethodInfo{Name: "Bogus"})
	info["platform.v1.MessageService"] = svc
	if _, err := BuildRules(info); err == nil || !strings.Contains(err.Error(), "/platform.v1.MessageService/Bogus") {
		t.Fatalf("BuildRules with an unknown method = %v", err)
	}
}

func TestPublicServicesAllowList(t *testing.T) {
	rules, err := BuildRules(map[string]grpc.ServiceInfo{
		"grpc.health.v1.Health": {Methods: []grpc.MethodInfo{{Name: "Check"}, {Name: "Watch"}}},
	})
	if err != nil || !rules["/grpc.health.v1.Health/Check"].Public {
		t.Fatalf("health must be public: %v %v", rules, err)
	}
}

func TestMatrixMatchesArchitecture(t *testing.T) {
	// The table of ARCHITECTURE.md, written out independently of ConversationRoles.
	want := map[Permission][4]Grant{ // owner, admin, member, viewer
		ConversationRead:   {Allowed, Allowed, Allowed, Allowed},
		ConversationUpdate: {Allowed, Allowed, Denied, Denied},
		ConversationDelete: {Allowed, Denied, Denied, Denied},
		MemberList:         {Allowed, Allowed, Allowed, Allowed},
		MemberAdd:          {Allowed, Allowed, Denied, Denied},
		MemberRemove:       {Allowed, Allowed, OwnOnly, OwnOnly},
		MessageRead:        {Allowed, Allowed, Allowed, Allowed},
		MessageSend:        {Allowed, Allowed, Allowed, Denied},
		MessageUpdate:      {OwnOnly, OwnOnly, OwnOnly, Denied},
		MessageDelete:      {Allowed, Allowed, OwnOnly, Denied},
	}
	roles := []store.Role{store.RoleOwner, store.RoleAdmin, store.RoleMember, store.RoleViewer}
	for p, grants := range want {
		for i, r := range roles {
			if got := ConversationRoles[r][p]; got != grants[i] {
				t.Errorf("%s for %s = %v, want %v", p, r, got, grants[i])
			}
		}
	}
	for _, r := range roles {
		for p := range ConversationRoles[r] {
			if _, ok := want[p]; !ok {
				t.Errorf("%s grants %s, which the architecture's matrix does not list", r, p)
			}
		}
	}
}

// TestDocsShowTheMatrix keeps the permission tables of docs/authorization.md equal to MatrixMarkdown.
func TestDocsShowTheMatrix(t *testing.T) {
	doc, err := os.ReadFile("../../docs/authorization.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(doc), MatrixMarkdown()) {
		t.Errorf("docs/authorization.md must contain the permission table exactly as authz.MatrixMarkdown renders it:\n%s", MatrixMarkdown())
	}
}

func TestPermissionMutates(t *testing.T) {
	for _, p := range allPermissions {
		want := !strings.HasSuffix(string(p), ".read") && !strings.HasSuffix(string(p), ".list")
		if p.Mutates() != want {
			t.Errorf("%s.Mutates() = %v, want %v", p, p.Mutates(), want)
		}
	}
	if Permission("").Mutates() {
		t.Error("a public call (no permission) counts as a mutation")
	}
}
