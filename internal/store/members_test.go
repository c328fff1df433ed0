package store

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"
)

func TestMembers(t *testing.T) {
	s, clock := newTestStore(t)
	ctx := testCtx(t)
	c := mustCreate(t, s, "t1", "alice")
	conv := func() Conversation {
		t.Helper()
		g, err := s.Conversations.Get(ctx, "t1", c.ID)
		if err != nil {
			t.Fatal(err)
		}
		return g
	}

	added := clock.Advance(time.Second).Truncate(time.Millisecond)
	bob, err := s.Members.Put(ctx, Member{TenantID: "t1", ConversationID: c.ID, UserID: "bob", AddedBy: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if bob.Role != RoleMember || bob.AddedBy != "alice" || !bob.CreateTime.Equal(added) || !bob.UpdateTime.Equal(added) {
		t.Fatalf("Put bob = %+v", bob)
	}
	if g := conv(); g.MemberCount != 2 || g.Version != 2 || !g.UpdateTime.Equal(added) {
		t.Fatalf("after adding bob: %+v", g)
	}
	if got, err := s.Members.Get(ctx, "t1", c.ID, "bob"); err != nil || got != bob {
		t.Fatalf("Get bob = %+v, %v; want %+v", got, err, bob)
	}

	// The same role again changes nothing, not even update_time or the conversation.
	clock.Advance(time.Second)
	if again, err := s.Members.Put(ctx, Member{TenantID: "t1", ConversationID: c.ID, UserID: "bob", Role: RoleMember, AddedBy: "carol"}); err != nil || again != bob {
		t.Fatalf("Put bob again = %+v, %v; want unchanged %+v", again, err, bob)
	}
	if g := conv(); g.MemberCount != 2 || g.Version != 2 {
		t.Fatalf("after re-adding bob: %+v", g)
	}

	// A new role keeps create_time and added_by, sets update_time, leaves the count alone.
	promoted := clock.Advance(time.Second).Truncate(time.Millisecond)
	p, err := s.Members.Put(ctx, Member{TenantID: "t1", ConversationID: c.ID, UserID: "bob", Role: RoleOwner, AddedBy: "carol"})
	if err != nil || p.Role != RoleOwner || p.AddedBy != "alice" || !p.CreateTime.Equal(added) || !p.UpdateTime.Equal(promoted) {
		t.Fatalf("promote bob = %+v, %v", p, err)
	}
	if g := conv(); g.MemberCount != 2 || g.Version != 2 {
		t.Fatalf("after promoting bob: %+v", g)
	}
	if n, err := s.Members.CountOwners(ctx, "t1", c.ID); err != nil || n != 2 {
		t.Fatalf("CountOwners = %d, %v; want 2", n, err)
	}

	// Remove, twice.
	if err := s.Members.Remove(ctx, "t1", c.ID, "bob"); err != nil {
		t.Fatal(err)
	}
	if err := s.Members.Remove(ctx, "t1", c.ID, "bob"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Remove: %v, want ErrNotFound", err)
	}
	if _, err := s.Members.Get(ctx, "t1", c.ID, "bob"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get removed: %v, want ErrNotFound", err)
	}
	if g := conv(); g.MemberCount != 1 || g.Version != 3 {
		t.Fatalf("after removing bob: %+v", g)
	}
	if n, _ := s.Members.CountOwners(ctx, "t1", c.ID); n != 1 {
		t.Fatalf("CountOwners after removing bob = %d, want 1", n)
	}
	// Re-adding after removal is a new membership.
	readded := clock.Advance(time.Second).Truncate(time.Millisecond)
	if m, err := s.Members.Put(ctx, Member{TenantID: "t1", ConversationID: c.ID, UserID: "bob", Role: RoleViewer}); err != nil || !m.CreateTime.Equal(readded) || m.Role != RoleViewer {
		t.Fatalf("re-add bob = %+v, %v", m, err)
	}

	for _, bad := range []Member{
		{TenantID: "t1", ConversationID: "01NOSUCHCONVERSATION0000000", UserID: "bob"},
		{TenantID: "t1", ConversationID: c.ID, UserID: "bob", Role: "root"},
		{TenantID: "t1", ConversationID: c.ID},
		{ConversationID: c.ID, UserID: "bob"},
	} {
		if _, err := s.Members.Put(ctx, bad); err == nil {
			t.Errorf("Put(%+v) succeeded", bad)
		}
	}
	if _, err := s.Members.Put(ctx, Member{TenantID: "t1", ConversationID: "01NOSUCHCONVERSATION0000000", UserID: "bob"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("Put into a missing conversation: %v, want ErrNotFound", err)
	}
}

func TestMembersListPages(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := testCtx(t)
	var users []string
	for i := range 7 {
		users = append(users, fmt.Sprintf("user%02d", i*2)) // even numbers: room to insert between
	}
	c := mustCreate(t, s, "t1", users[3], slices.Concat(users[:3], users[4:])...)

	var got []string
	token := ""
	for page := 1; ; page++ {
		ms, next, err := s.Members.List(ctx, "t1", c.ID, 3, token)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			if m.ConversationID != c.ID || m.TenantID != "t1" {
				t.Errorf("page %d: %+v", page, m)
			}
			got = append(got, m.UserID)
		}
		if next == "" {
			if page != 3 {
				t.Errorf("%d pages, want 3", page)
			}
			break
		}
		token = next
		if page == 1 {
			// Joins before and after the cursor (user04): the earlier one is not shown, the later one is.
			for _, u := range []string{"user01", "user09"} {
				if _, err := s.Members.Put(ctx, Member{TenantID: "t1", ConversationID: c.ID, UserID: u}); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	want := []string{"user00", "user02", "user04", "user06", "user08", "user09", "user10", "user12"}
	if !slices.Equal(got, want) {
		t.Fatalf("pages gave %v, want %v", got, want)
	}
	all, next, err := s.Members.List(ctx, "t1", c.ID, 0, "")
	if err != nil || len(all) != 9 || next != "" {
		t.Fatalf("default page: %d members, next %q, %v", len(all), next, err)
	}
}

// OfTenantsConversations reads each tenant's memberships of its own conversations only: a conversation
// id listed under another tenant finds nothing, whatever its members.
func TestMembersOfTenantsConversations(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := testCtx(t)
	a := mustCreate(t, s, "t1", "alice")
	b := mustCreate(t, s, "t2", "bea")
	if _, err := s.Members.Put(ctx, Member{TenantID: "t1", ConversationID: a.ID, UserID: "bob", AddedBy: "alice"}); err != nil {
		t.Fatal(err)
	}
	names := func(ms []Member) []string {
		var out []string
		for _, m := range ms {
			out = append(out, m.TenantID+"/"+m.UserID+"/"+string(m.Role))
		}
		slices.Sort(out)
		return out
	}
	for _, tc := range []struct {
		name     string
		byTenant map[string][]string
		want     []string
	}{
		{"nothing asked", map[string][]string{"t1": nil}, nil},
		{"one tenant", map[string][]string{"t1": {a.ID}}, []string{"t1/alice/owner", "t1/bob/member"}},
		{"two tenants", map[string][]string{"t1": {a.ID}, "t2": {b.ID}}, []string{"t1/alice/owner", "t1/bob/member", "t2/bea/owner"}},
		{"ids under the wrong tenant", map[string][]string{"t1": {b.ID}, "t2": {a.ID}}, nil},
	} {
		got, err := s.Members.OfTenantsConversations(ctx, tc.byTenant)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if !slices.Equal(names(got), tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, names(got), tc.want)
		}
	}
}
