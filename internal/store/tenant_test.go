package store

import (
	"errors"
	"testing"
	"time"
)

// Another tenant sees nothing of tenant t1's data on any path, even with the right ids, and cannot change it.
func TestTenantIsolation(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := testCtx(t)
	c := mustCreate(t, s, "t1", "alice", "bob")
	msgs := newMessages("t1", c.ID, 3)
	if _, _, err := s.Messages.InsertMany(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	msgID := msgs[0].ID
	now := time.Now()

	notFound := []struct {
		name string
		call func() error
	}{
		{"Conversations.Get", func() error { _, err := s.Conversations.Get(ctx, "t2", c.ID); return err }},
		{"Conversations.Update", func() error { _, err := s.Conversations.Update(ctx, "t2", c.ID, 0, ptr("x")); return err }},
		{"Conversations.Update with version", func() error { _, err := s.Conversations.Update(ctx, "t2", c.ID, 1, ptr("x")); return err }},
		{"Conversations.Update nil title", func() error { _, err := s.Conversations.Update(ctx, "t2", c.ID, 0, nil); return err }},
		{"Conversations.Archive", func() error { _, err := s.Conversations.Archive(ctx, "t2", c.ID); return err }},
		{"Members.Get", func() error { _, err := s.Members.Get(ctx, "t2", c.ID, "alice"); return err }},
		{"Members.Put", func() error {
			_, err := s.Members.Put(ctx, Member{TenantID: "t2", ConversationID: c.ID, UserID: "mallory", Role: RoleOwner})
			return err
		}},
		{"Members.Remove", func() error { return s.Members.Remove(ctx, "t2", c.ID, "bob") }},
		{"Members.Recount", func() error { _, err := s.Members.Recount(ctx, "t2", c.ID); return err }},
		{"Messages.Get", func() error { _, err := s.Messages.Get(ctx, "t2", c.ID, msgID); return err }},
		{"Messages.UpdateBody", func() error { _, err := s.Messages.UpdateBody(ctx, "t2", c.ID, msgID, 0, "x", now); return err }},
		{"Messages.UpdateBody with version", func() error {
			_, err := s.Messages.UpdateBody(ctx, "t2", c.ID, msgID, 1, "x", now)
			return err
		}},
		{"Messages.Delete", func() error { _, err := s.Messages.Delete(ctx, "t2", c.ID, msgID, now); return err }},
		// The right tenant with the wrong conversation is no better.
		{"Messages.Get, other conversation", func() error { _, err := s.Messages.Get(ctx, "t1", newID(), msgID); return err }},
	}
	for _, tc := range notFound {
		if err := tc.call(); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s from t2: err = %v, want ErrNotFound", tc.name, err)
		}
	}

	empty := []struct {
		name string
		call func() (int, error)
	}{
		{"Conversations.ListForUser", func() (int, error) {
			l, _, err := s.Conversations.ListForUser(ctx, "t2", "alice", true, 0, "")
			return len(l), err
		}},
		{"Members.List", func() (int, error) { l, _, err := s.Members.List(ctx, "t2", c.ID, 0, ""); return len(l), err }},
		{"Members.CountOwners", func() (int, error) { return s.Members.CountOwners(ctx, "t2", c.ID) }},
		{"Messages.List", func() (int, error) { l, _, err := s.Messages.List(ctx, "t2", c.ID, 0, ""); return len(l), err }},
	}
	for _, tc := range empty {
		if n, err := tc.call(); err != nil || n != 0 {
			t.Errorf("%s from t2 = %d items, %v; want none", tc.name, n, err)
		}
	}

	// A message claiming t2 but carrying a t1 message id is a duplicate, not a second copy.
	if ins, dups, err := s.Messages.InsertMany(ctx, []Message{{ID: msgID, TenantID: "t2", ConversationID: c.ID, Body: "x"}}); err != nil || ins != 0 || dups != 1 {
		t.Errorf("InsertMany reusing a t1 id from t2 = %d, %d, %v", ins, dups, err)
	}

	// t1's data is intact.
	g, err := s.Conversations.Get(ctx, "t1", c.ID)
	if err != nil || g.Version != 1 || g.State != ConversationActive || g.MemberCount != 2 || g.Title != c.Title {
		t.Fatalf("t1's conversation after t2's attempts: %+v, %v", g, err)
	}
	if n, _ := s.Members.CountOwners(ctx, "t1", c.ID); n != 1 {
		t.Fatalf("t1 owners = %d", n)
	}
	if _, err := s.Members.Get(ctx, "t1", c.ID, "bob"); err != nil {
		t.Fatalf("bob removed by t2: %v", err)
	}
	m, err := s.Messages.Get(ctx, "t1", c.ID, msgID)
	if err != nil || m.Version != 1 || m.State != MessagePersisted || m.Body != msgs[0].Body {
		t.Fatalf("t1's message after t2's attempts: %+v, %v", m, err)
	}
	if l, _, _ := s.Messages.List(ctx, "t1", c.ID, 0, ""); len(l) != 3 {
		t.Fatalf("t1 lists %d messages", len(l))
	}
}
