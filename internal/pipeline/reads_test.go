package pipeline

import (
	"testing"

	"github.com/msgplatform/platform/internal/authz"
	"github.com/msgplatform/platform/internal/store"
)

// TestBatchReads checks the answers read once for a batch against what the store holds: the tenant of a
// conversation is checked, members have their role, others none, and ids the batch did not read are
// left to the caller (known false).
func TestBatchReads(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t)
	c1 := e.conversation("t1", "alice", "bob")
	c2 := e.conversation("t2", "carol")
	other := e.conversation("t1", "dave")
	r := NewReads(e.st, []string{c1.ID, c2.ID, "no-such-conversation"})

	for _, tc := range []struct {
		name          string
		tenant, conv  string
		exists, known bool
	}{
		{"own tenant", "t1", c1.ID, true, true},
		{"other tenant", "t2", c1.ID, false, true},
		{"missing", "t1", "no-such-conversation", false, true},
		{"not in the batch", "t1", other.ID, false, false},
	} {
		c, exists, known := r.conversation(ctx, tc.tenant, tc.conv)
		if exists != tc.exists || known != tc.known || (exists && c.ID != tc.conv) {
			t.Errorf("%s: conversation = %+v, %v, %v; want exists %v, known %v", tc.name, c, exists, known, tc.exists, tc.known)
		}
	}

	for _, tc := range []struct {
		name               string
		tenant, conv, user string
		want               authz.Membership
		ok                 bool
	}{
		{"owner", "t1", c1.ID, "alice", authz.Membership{ConversationExists: true, Role: store.RoleOwner}, true},
		{"member", "t1", c1.ID, "bob", authz.Membership{ConversationExists: true, Role: store.RoleMember}, true},
		{"not a member", "t1", c1.ID, "carol", authz.Membership{ConversationExists: true}, true},
		{"other tenant", "t1", c2.ID, "carol", authz.Membership{}, true},
		{"second tenant", "t2", c2.ID, "carol", authz.Membership{ConversationExists: true, Role: store.RoleOwner}, true},
		{"not in the batch", "t1", other.ID, "dave", authz.Membership{}, false},
	} {
		m, ok := r.membership(ctx, tc.tenant, tc.conv, tc.user)
		if m != tc.want || ok != tc.ok {
			t.Errorf("%s: membership = %+v, %v; want %+v, %v", tc.name, m, ok, tc.want, tc.ok)
		}
	}

	// As an authz.Directory, the reads fall back to the store for what the batch did not read.
	var d authz.Directory = r
	m, err := d.Membership(ctx, "t1", other.ID, "dave")
	if err != nil || m != (authz.Membership{ConversationExists: true, Role: store.RoleOwner}) {
		t.Fatalf("fallback membership = %+v, %v", m, err)
	}
}
