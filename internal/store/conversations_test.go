package store

import (
	"errors"
	"reflect"
	"slices"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
)

func ptr[T any](v T) *T { return &v }

func TestConversationLifecycle(t *testing.T) {
	s, clock := newTestStore(t)
	ctx := testCtx(t)
	created := clock.Now().Truncate(time.Millisecond)

	c, err := s.Conversations.Create(ctx, Conversation{TenantID: "t1", Title: "Launch", CreatorID: "alice"}, []Member{
		{UserID: "alice", Role: RoleViewer}, // the creator is an owner whatever the list says
		{UserID: "bob"},
		{UserID: "bob", Role: RoleAdmin}, // duplicates count once (first wins)
		{UserID: "carol", Role: RoleAdmin},
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.ID == "" || c.TenantID != "t1" || c.Title != "Launch" || c.CreatorID != "alice" || c.State != ConversationActive ||
		c.MemberCount != 3 || c.Version != 1 || !c.CreateTime.Equal(created) || !c.UpdateTime.Equal(created) || c.DeleteTime != nil {
		t.Fatalf("Create returned %+v", c)
	}
	roles := map[string]Role{"alice": RoleOwner, "bob": RoleMember, "carol": RoleAdmin}
	for user, role := range roles {
		m, err := s.Members.Get(ctx, "t1", c.ID, user)
		if err != nil || m.Role != role || m.AddedBy != "alice" || !m.CreateTime.Equal(created) {
			t.Errorf("member %s = %+v, %v; want role %s added by alice", user, m, err, role)
		}
	}
	got, err := s.Conversations.Get(ctx, "t1", c.ID)
	if err != nil || !reflect.DeepEqual(got, c) {
		t.Fatalf("Get = %+v, %v; want %+v", got, err, c)
	}
	if _, err := s.Conversations.Create(ctx, Conversation{ID: c.ID, TenantID: "t1", CreatorID: "mallory"}, nil); !errors.Is(err, ErrAlreadyExists) {
		t.Fatalf("Create with an existing id: %v, want ErrAlreadyExists", err)
	}
	if n, _ := s.Members.CountOwners(ctx, "t1", c.ID); n != 1 {
		t.Fatalf("CountOwners = %d after a refused re-create, want 1", n)
	}

	// Update: each step sees the state the previous one left.
	steps := []struct {
		name    string
		version int64
		title   *string
		wantErr error
		want    string // title afterwards
		wantVer int64
	}{
		{"no precondition", 0, ptr("Launch v2"), nil, "Launch v2", 2},
		{"matching version", 2, ptr("Launch v3"), nil, "Launch v3", 3},
		{"stale version", 2, ptr("lost update"), ErrConflict, "Launch v3", 3},
		{"future version", 9, ptr("lost update"), ErrConflict, "Launch v3", 3},
		{"nothing to change", 3, nil, nil, "Launch v3", 3},
		{"nothing to change, stale", 1, nil, ErrConflict, "Launch v3", 3},
		{"empty title is a value", 0, ptr(""), nil, "", 4},
	}
	for _, st := range steps {
		at := clock.Advance(time.Second).Truncate(time.Millisecond)
		u, err := s.Conversations.Update(ctx, "t1", c.ID, st.version, st.title)
		if !errors.Is(err, st.wantErr) {
			t.Fatalf("%s: err = %v, want %v", st.name, err, st.wantErr)
		}
		if err == nil && st.title != nil && !u.UpdateTime.Equal(at) {
			t.Errorf("%s: update time %v, want %v", st.name, u.UpdateTime, at)
		}
		g, _ := s.Conversations.Get(ctx, "t1", c.ID)
		if g.Title != st.want || g.Version != st.wantVer || !g.CreateTime.Equal(created) {
			t.Fatalf("%s: stored %+v, want title %q version %d", st.name, g, st.want, st.wantVer)
		}
		if err == nil && !reflect.DeepEqual(u, g) {
			t.Fatalf("%s: Update returned %+v, stored %+v", st.name, u, g)
		}
	}
	for _, v := range []int64{0, 4} {
		if _, err := s.Conversations.Update(ctx, "t1", "01NOSUCHCONVERSATION0000000", v, ptr("x")); !errors.Is(err, ErrNotFound) {
			t.Errorf("Update missing (version %d): %v, want ErrNotFound", v, err)
		}
	}

	// Archive, twice.
	at := clock.Advance(time.Second).Truncate(time.Millisecond)
	a, err := s.Conversations.Archive(ctx, "t1", c.ID)
	if err != nil || a.State != ConversationArchived || a.DeleteTime == nil || !a.DeleteTime.Equal(at) || !a.UpdateTime.Equal(at) || a.Version != 5 {
		t.Fatalf("Archive = %+v, %v", a, err)
	}
	clock.Advance(time.Second)
	again, err := s.Conversations.Archive(ctx, "t1", c.ID)
	if err != nil || !reflect.DeepEqual(again, a) {
		t.Fatalf("second Archive = %+v, %v; want unchanged %+v", again, err, a)
	}
	if g, _ := s.Conversations.Get(ctx, "t1", c.ID); !reflect.DeepEqual(g, a) {
		t.Fatalf("Get after Archive = %+v, want %+v", g, a)
	}
	if _, err := s.Conversations.Archive(ctx, "t1", "01NOSUCHCONVERSATION0000000"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Archive missing: %v, want ErrNotFound", err)
	}

	// Bad input is refused before anything is written.
	for _, bad := range []struct {
		c Conversation
		m []Member
	}{
		{Conversation{CreatorID: "alice"}, nil},
		{Conversation{TenantID: "t1"}, nil},
		{Conversation{TenantID: "t1", CreatorID: "alice"}, []Member{{UserID: ""}}},
		{Conversation{TenantID: "t1", CreatorID: "alice"}, []Member{{UserID: "bob", Role: "superuser"}}},
	} {
		if _, err := s.Conversations.Create(ctx, bad.c, bad.m); err == nil {
			t.Errorf("Create(%+v, %+v) succeeded", bad.c, bad.m)
		}
	}
}

// A Create cut short after the memberships leaves nothing visible, and retrying it completes it.
func TestCreateOrderMembershipsFirst(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := testCtx(t)
	id := newID()
	// The state a crash between the two steps of Create leaves: memberships, no conversation.
	for _, u := range []string{"alice", "bob"} {
		role := RoleMember
		if u == "alice" {
			role = RoleOwner
		}
		if _, err := s.Database().Collection(MembershipsCollection).InsertOne(ctx, memberDoc{
			ID: MembershipID("t1", id, u), TenantID: "t1", ConversationID: id, UserID: u, Role: string(role),
		}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Conversations.Get(ctx, "t1", id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get of a half-created conversation: %v, want ErrNotFound", err)
	}
	for _, u := range []string{"alice", "bob"} {
		if list, _, err := s.Conversations.ListForUser(ctx, "t1", u, true, 0, ""); err != nil || len(list) != 0 {
			t.Fatalf("ListForUser(%s) = %+v, %v; want nothing", u, list, err)
		}
	}
	if _, err := s.Members.Put(ctx, Member{TenantID: "t1", ConversationID: id, UserID: "carol"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Put into a half-created conversation: %v, want ErrNotFound", err)
	}

	// The retry (same id) completes it; the stored memberships count as done.
	c, err := s.Conversations.Create(ctx, Conversation{ID: id, TenantID: "t1", Title: "retry", CreatorID: "alice"}, []Member{{UserID: "bob"}})
	if err != nil || c.MemberCount != 2 {
		t.Fatalf("retried Create = %+v, %v", c, err)
	}
	if list, _, err := s.Conversations.ListForUser(ctx, "t1", "bob", false, 0, ""); err != nil || len(list) != 1 || list[0].ID != id {
		t.Fatalf("ListForUser after the retry = %+v, %v", list, err)
	}
}

func TestListForUserPagination(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := testCtx(t)

	// 14 conversations with u (4 of them archived), interleaved with 6 without u.
	var initial []string // visible ones, newest first
	var archived []string
	var others []string
	for i := range 14 {
		if i%3 == 0 {
			others = append(others, mustCreate(t, s, "t1", "x", "y").ID)
		}
		c := mustCreate(t, s, "t1", "owner", "u", "v")
		if i%4 == 1 {
			if _, err := s.Conversations.Archive(ctx, "t1", c.ID); err != nil {
				t.Fatal(err)
			}
			archived = append(archived, c.ID)
			continue
		}
		initial = append([]string{c.ID}, initial...)
	}
	if len(initial) != 10 {
		t.Fatalf("setup: %d visible", len(initial))
	}

	var seen []string
	token := ""
	for page := 1; ; page++ {
		items, next, err := s.Conversations.ListForUser(ctx, "t1", "u", false, 4, token)
		if err != nil {
			t.Fatalf("page %d: %v", page, err)
		}
		for _, c := range items {
			if c.State != ConversationActive || c.TenantID != "t1" {
				t.Errorf("page %d: %+v", page, c)
			}
			seen = append(seen, c.ID)
		}
		t.Logf("page %d: %d items, next %q", page, len(items), next)
		if next == "" {
			if page != 3 {
				t.Errorf("last page is %d, want 3", page)
			}
			break
		}
		if page > 5 {
			t.Fatal("too many pages")
		}
		token = next
		// Between pages: new conversations with u, and u joins one that existed before (older ids).
		mustCreate(t, s, "t1", "u")
		mustCreate(t, s, "t1", "owner", "u")
		if page == 1 {
			if _, err := s.Members.Put(ctx, Member{TenantID: "t1", ConversationID: others[0], UserID: "u"}); err != nil {
				t.Fatal(err)
			}
		}
	}

	// No repeats; every conversation of the start is there, in id order; only the joined older one is extra.
	want := append(slices.Clone(initial), others[0])
	if !slices.Equal(seen, want) {
		t.Fatalf("pages gave\n%v\nwant\n%v", seen, want)
	}

	// includeArchived lists them too (the token of one filter is not taken by the other).
	all, next, err := s.Conversations.ListForUser(ctx, "t1", "u", true, 200, "")
	if err != nil || next != "" {
		t.Fatalf("with archived: %v, next %q", err, next)
	}
	ids := map[string]bool{}
	for _, c := range all {
		ids[c.ID] = true
	}
	for _, id := range append(slices.Clone(want), archived...) {
		if !ids[id] {
			t.Errorf("with archived: %s missing", id)
		}
	}
	if len(all) != len(want)+len(archived)+4 { // +4 created between pages
		t.Errorf("with archived: %d conversations, want %d", len(all), len(want)+len(archived)+4)
	}
	// A page exactly full has no next token.
	exact, next, err := s.Conversations.ListForUser(ctx, "t1", "u", true, len(all), "")
	if err != nil || len(exact) != len(all) || next != "" {
		t.Errorf("exact page: %d items, next %q, %v", len(exact), next, err)
	}
	// A user with nothing.
	if list, next, err := s.Conversations.ListForUser(ctx, "t1", "nobody", false, 0, ""); err != nil || len(list) != 0 || next != "" {
		t.Errorf("nobody: %+v %q %v", list, next, err)
	}
}

// Many archived conversations in a row do not end a page early: the walk reads on.
func TestListForUserSkipsArchivedRuns(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := testCtx(t)
	var active []string
	for i := range 12 {
		c := mustCreate(t, s, "t1", "u")
		if i >= 2 && i < 10 {
			if _, err := s.Conversations.Archive(ctx, "t1", c.ID); err != nil {
				t.Fatal(err)
			}
			continue
		}
		active = append([]string{c.ID}, active...)
	}
	var got []string
	token := ""
	for range 10 {
		items, next, err := s.Conversations.ListForUser(ctx, "t1", "u", false, 2, token)
		if err != nil {
			t.Fatal(err)
		}
		if len(items) != 2 {
			t.Fatalf("page of %d items, want 2 (4 active, page size 2)", len(items))
		}
		for _, c := range items {
			got = append(got, c.ID)
		}
		if token = next; token == "" {
			break
		}
	}
	if !slices.Equal(got, active) {
		t.Fatalf("got %v, want %v", got, active)
	}
}

// member_count and version follow membership changes, including concurrent adds of the same user.
func TestMemberCountFollowsMembership(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := testCtx(t)
	c := mustCreate(t, s, "t1", "alice")

	errs := make(chan error, 8)
	for range 8 {
		go func() {
			_, err := s.Members.Put(ctx, Member{TenantID: "t1", ConversationID: c.ID, UserID: "bob", AddedBy: "alice"})
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	g, _ := s.Conversations.Get(ctx, "t1", c.ID)
	if g.MemberCount != 2 || g.Version != 2 {
		t.Fatalf("after 8 concurrent adds of one user: member_count %d version %d, want 2 and 2", g.MemberCount, g.Version)
	}

	// A count knocked out of step (crash between the two writes) is repaired by Recount.
	if _, err := s.Database().Collection(ConversationsCollection).UpdateOne(ctx,
		bson.D{{Key: "_id", Value: c.ID}}, bson.D{{Key: "$set", Value: bson.D{{Key: "member_count", Value: 7}}}}); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Members.Recount(ctx, "t1", c.ID); err != nil || n != 2 {
		t.Fatalf("Recount = %d, %v", n, err)
	}
	if g, _ := s.Conversations.Get(ctx, "t1", c.ID); g.MemberCount != 2 {
		t.Fatalf("member_count after Recount = %d", g.MemberCount)
	}
	if _, err := s.Members.Recount(ctx, "t2", c.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Recount in another tenant: %v", err)
	}
}
