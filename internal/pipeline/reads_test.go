package pipeline

import (
	"context"
	"slices"
	"strings"
	"sync"
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
	primer := &recordingPrimer{}
	r := NewReads(e.st, []string{c1.ID, c2.ID, "no-such-conversation"}, primer)

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

	// The memberships were read once for both tenants and primed per tenant, noted before the read.
	want := map[string][]authz.Member{
		"t1": {{ConversationID: c1.ID, UserID: "alice", Role: store.RoleOwner}, {ConversationID: c1.ID, UserID: "bob", Role: store.RoleMember}},
		"t2": {{ConversationID: c2.ID, UserID: "carol", Role: store.RoleOwner}},
	}
	if primer.notes != 1 || len(primer.primed) != 2 {
		t.Fatalf("notes %d, primed tenants %v; want one note (one read) and one priming per tenant", primer.notes, primer.primed)
	}
	for tenant, w := range want {
		got := primer.primed[tenant]
		slices.SortFunc(got, func(a, b authz.Member) int { return strings.Compare(a.UserID, b.UserID) })
		if !slices.Equal(got, w) {
			t.Errorf("primed for %s = %+v, want %+v", tenant, got, w)
		}
	}

	// As an authz.Directory, the reads fall back to the store for what the batch did not read.
	var d authz.Directory = r
	m, err := d.Membership(ctx, "t1", other.ID, "dave")
	if err != nil || m != (authz.Membership{ConversationExists: true, Role: store.RoleOwner}) {
		t.Fatalf("fallback membership = %+v, %v", m, err)
	}
}

// recordingPrimer records what Reads primes.
type recordingPrimer struct {
	mu     sync.Mutex
	notes  int
	primed map[string][]authz.Member
}

func (p *recordingPrimer) Note() authz.Noted {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.notes++
	return authz.Noted{}
}

func (p *recordingPrimer) Prime(_ context.Context, _ authz.Noted, tenantID string, members []authz.Member) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.primed == nil {
		p.primed = map[string][]authz.Member{}
	}
	if _, again := p.primed[tenantID]; again {
		panic("tenant " + tenantID + " primed twice")
	}
	p.primed[tenantID] = slices.Clone(members)
}
