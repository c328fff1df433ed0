package authz

import (
	"context"
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/msgplatform/platform/internal/auth"
)

// Every platform role is documented (a row of the README table) and has a reach: a role added to
// PlatformRoles alone would be granted permissions with no decided scope.
func TestEveryPlatformRoleHasAReachAndARow(t *testing.T) {
	for role := range PlatformRoles {
		if _, ok := PlatformRoleReach[role]; !ok {
			t.Errorf("platform role %q has no PlatformRoleReach", role)
		}
		if !slices.Contains(platformRoleRows, role) {
			t.Errorf("platform role %q is not a row of the roles table (platformRoleRows)", role)
		}
	}
	for _, role := range append(slices.Clone(OperatorRoles), platformRoleRows...) {
		if _, ok := PlatformRoles[role]; !ok {
			t.Errorf("%q is listed but is no platform role", role)
		}
	}
}

func TestOperatorRolesAndReach(t *testing.T) {
	for _, tc := range []struct {
		name        string
		roles       []string
		p           Permission
		operatorVia string
		allTenants  bool
	}{
		{"operator reads dead letters of its tenant", []string{PlatformOperator}, DLQRead, PlatformOperator, false},
		{"operator writes dead letters of its tenant", []string{PlatformOperator}, DLQWrite, PlatformOperator, false},
		{"platform_operator reaches every tenant", []string{PlatformGlobalOperator}, DLQRead, PlatformGlobalOperator, true},
		{"both: the wider one counts", []string{PlatformOperator, PlatformGlobalOperator}, DLQWrite, PlatformGlobalOperator, true},
		{"an operator creating a conversation does so as a user", []string{PlatformUser, PlatformOperator}, ConversationCreate, "", false},
		{"service reads as a participant of its tenant", []string{PlatformService}, MessageRead, "", false},
		{"user holds no dlq permission", []string{PlatformUser}, DLQRead, "", false},
		{"no roles", nil, DLQRead, "", false},
		{"an unknown role grants nothing", []string{"Platform_Operator"}, DLQRead, "", false},
	} {
		if got := OperatorGrant(tc.roles, tc.p); got != tc.operatorVia {
			t.Errorf("%s: OperatorGrant = %q, want %q", tc.name, got, tc.operatorVia)
		}
		if got := ReachesAllTenants(tc.roles, tc.p); got != tc.allTenants {
			t.Errorf("%s: ReachesAllTenants = %v, want %v", tc.name, got, tc.allTenants)
		}
	}
	for _, p := range allPermissions {
		want := p == DLQRead || p == DLQWrite
		if OperatorOnly(p) != want {
			t.Errorf("OperatorOnly(%s) = %v, want %v", p, OperatorOnly(p), want)
		}
	}
}

// platform_operator holds the dead-letter permissions (the handlers, not the decision, confine operator
// to its tenant); other roles do not.
func TestDecidePlatformOperator(t *testing.T) {
	a, err := NewAuthorizer(nil, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		roles []string
		p     Permission
		want  Effect
	}{
		{[]string{PlatformGlobalOperator}, DLQRead, Allow},
		{[]string{PlatformGlobalOperator}, DLQWrite, Allow},
		{[]string{PlatformOperator}, DLQWrite, Allow},
		{[]string{PlatformGlobalOperator}, ConversationCreate, Deny},
		{[]string{PlatformUser, PlatformService}, DLQRead, Deny},
	} {
		d := a.Decide(context.Background(), auth.Principal{Subject: "pat", TenantID: "t0", Roles: tc.roles}, Request{Permission: tc.p})
		if d.Effect != tc.want {
			t.Errorf("%v asking for %s = %v, want %v", tc.roles, tc.p, d, tc.want)
		}
	}
}
