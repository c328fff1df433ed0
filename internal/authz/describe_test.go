package authz

import (
	"strings"
	"testing"
)

// Every rule reads as the decision makes it: the permission, the conversation field, who holds it.
func TestRuleDescribe(t *testing.T) {
	rules, err := BuildRules(platformServices().GetServiceInfo())
	if err != nil {
		t.Fatal(err)
	}
	for method, r := range rules {
		got, err := RuleOf(method)
		if err != nil {
			t.Fatalf("RuleOf(%s): %v", method, err)
		}
		d := got.Describe()
		switch {
		case r.Public && !strings.Contains(d, "public"):
			t.Errorf("%s: public, described as %q", method, d)
		case !r.Public && !strings.Contains(d, "`"+string(r.Permission)+"`"):
			t.Errorf("%s: description %q does not name permission %s", method, d, r.Permission)
		case !r.Public && !strings.Contains(d, "Granted to: "):
			t.Errorf("%s: description %q names nobody who holds %s", method, d, r.Permission)
		}
	}
	tests := []struct {
		method   string
		has, not []string
	}{
		{"/platform.v1.HealthService/GetHealth", []string{"public; no token needed"}, []string{"permission"}},
		{"/platform.v1.ConversationService/CreateConversation",
			[]string{"`conversation.create`", "platform role `user`"}, []string{"conversation roles", "member"}},
		{"/platform.v1.ConversationService/UpdateConversation",
			[]string{"`conversation.update` on the conversation named by `conversation.id`", "must be a member", "owner, admin."},
			[]string{"viewer", "`service`"}},
		{"/platform.v1.MessageService/SendMessage",
			[]string{"unless it has platform role `service`", "owner, admin, member;", "platform role `service` (every conversation of its own tenant"},
			[]string{"viewer"}},
		{"/platform.v1.MessageService/DeleteMessage", []string{"owner, admin, member (author only)."}, []string{"viewer", "`service`"}},
		{"/platform.v1.MessageService/UpdateMessage", []string{"owner (author only), admin (author only), member (author only)."}, nil},
		{"/platform.v1.ConversationService/RemoveMember", []string{"member (self only), viewer (self only)"}, nil},
		{"/platform.v1.DeadLetterService/RetryDeadLetters",
			[]string{"`dlq.write`", "platform role `operator` (dead letters of its own tenant", "platform role `platform_operator` (dead letters of every tenant"},
			[]string{"conversation"}},
	}
	for _, tc := range tests {
		r, err := RuleOf(tc.method)
		if err != nil {
			t.Fatal(err)
		}
		d := r.Describe()
		for _, s := range tc.has {
			if !strings.Contains(d, s) {
				t.Errorf("%s: %q lacks %q", tc.method, d, s)
			}
		}
		for _, s := range tc.not {
			if strings.Contains(d, s) {
				t.Errorf("%s: %q has %q", tc.method, d, s)
			}
		}
	}
	for _, bad := range []string{"", "GetHealth", "/platform.v1.HealthService/", "/platform.v1.NoService/Get"} {
		if _, err := RuleOf(bad); err == nil {
			t.Errorf("RuleOf(%q) = nil error", bad)
		}
	}
}
