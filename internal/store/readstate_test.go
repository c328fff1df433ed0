package store

import (
	"testing"
	"time"
)

// Read cursors only move forward; unread counts are the persisted messages after the cursor not sent by
// the reader, per conversation, in one call; a removed member's read state goes with its membership.
func TestReadCursorsAndUnreadCounts(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := testCtx(t)
	c1 := mustCreate(t, s, "t1", "alice", "bob")
	c2 := mustCreate(t, s, "t1", "alice", "bob")
	var ids []string
	var msgs []Message
	for i := range 4 {
		m := Message{ID: newID(), TenantID: "t1", ConversationID: c1.ID, SenderID: "alice", Body: "x"}
		if i == 3 {
			m.SenderID = "bob" // bob's own: never unread for him
		}
		ids = append(ids, m.ID)
		msgs = append(msgs, m)
	}
	msgs = append(msgs, Message{ID: newID(), TenantID: "t1", ConversationID: c2.ID, SenderID: "alice", Body: "y"})
	if _, _, err := s.Messages.InsertMany(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	counts := func(cursors map[string]string) map[string]int64 {
		t.Helper()
		n, err := s.Messages.UnreadCounts(ctx, "t1", "bob", cursors)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	cur, err := s.Members.ReadCursors(ctx, "t1", "bob", []string{c1.ID, c2.ID, "nope"})
	if err != nil || len(cur) != 2 || cur[c1.ID] != "" {
		t.Fatalf("cursors = %v, %v; want two empty ones", cur, err)
	}
	if n := counts(cur); n[c1.ID] != 3 || n[c2.ID] != 1 {
		t.Fatalf("unread = %v, want c1: 3, c2: 1", n)
	}
	before, after, err := s.Members.MarkRead(ctx, "t1", c1.ID, "bob", ids[1])
	if err != nil || before != "" || after != ids[1] {
		t.Fatalf("MarkRead = %q, %q, %v", before, after, err)
	}
	before, after, err = s.Members.MarkRead(ctx, "t1", c1.ID, "bob", ids[0]) // older: stays
	if err != nil || before != ids[1] || after != ids[1] {
		t.Fatalf("MarkRead older = %q, %q, %v; want the cursor kept at %s", before, after, err, ids[1])
	}
	if err := s.Members.AdvanceCursors(ctx, []Cursor{{"t1", c1.ID, "bob", ids[0]}, {"t1", c2.ID, "carol", ids[0]}}); err != nil {
		t.Fatal(err)
	}
	cur, _ = s.Members.ReadCursors(ctx, "t1", "bob", []string{c1.ID, c2.ID})
	if cur[c1.ID] != ids[1] {
		t.Fatalf("cursor after an older advance = %q, want %s", cur[c1.ID], ids[1])
	}
	if n := counts(cur); n[c1.ID] != 1 || n[c2.ID] != 1 {
		t.Fatalf("unread = %v, want c1: 1 (ids[2]; ids[3] is bob's), c2: 1", n)
	}
	// A role change keeps the cursor.
	if _, err := s.Members.Put(ctx, Member{TenantID: "t1", ConversationID: c1.ID, UserID: "bob", Role: RoleAdmin}); err != nil {
		t.Fatal(err)
	}
	if m, err := s.Members.Get(ctx, "t1", c1.ID, "bob"); err != nil || m.LastReadMessageID != ids[1] {
		t.Fatalf("after a role change: %+v, %v", m, err)
	}
	if err := s.Members.Remove(ctx, "t1", c1.ID, "bob"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Members.MarkRead(ctx, "t1", c1.ID, "bob", ids[2]); err == nil {
		t.Fatal("MarkRead of a removed member succeeded")
	}
}

// Threads: List shows top-level messages only, ListThread one thread's replies; RecountThreads counts the
// replies stored, so recounting again (a redelivery) changes nothing and does not bump the version.
func TestThreadsListAndRecount(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := testCtx(t)
	c := mustCreate(t, s, "t1", "alice", "bob")
	root := Message{ID: newID(), TenantID: "t1", ConversationID: c.ID, SenderID: "alice", Body: "root"}
	other := Message{ID: newID(), TenantID: "t1", ConversationID: c.ID, SenderID: "alice", Body: "top"}
	if _, _, err := s.Messages.InsertMany(ctx, []Message{root, other}); err != nil {
		t.Fatal(err)
	}
	var replies []Message
	for range 3 {
		replies = append(replies, Message{ID: newID(), TenantID: "t1", ConversationID: c.ID, SenderID: "bob", Body: "r", ThreadID: root.ID,
			CreateTime: time.Now()})
	}
	if _, _, err := s.Messages.InsertMany(ctx, replies); err != nil {
		t.Fatal(err)
	}
	top, _, err := s.Messages.List(ctx, "t1", c.ID, 10, "")
	if err != nil || len(top) != 2 || top[0].ID != other.ID || top[1].ID != root.ID {
		t.Fatalf("top level = %v, %v", top, err)
	}
	th, next, err := s.Messages.ListThread(ctx, "t1", c.ID, root.ID, 2, "")
	if err != nil || len(th) != 2 || th[0].ID != replies[2].ID || next == "" {
		t.Fatalf("thread page 1 = %v, %q, %v", th, next, err)
	}
	if _, _, err := s.Messages.List(ctx, "t1", c.ID, 2, next); err == nil {
		t.Fatal("a thread's page token accepted by the top-level list")
	}
	th, _, err = s.Messages.ListThread(ctx, "t1", c.ID, root.ID, 2, next)
	if err != nil || len(th) != 1 || th[0].ID != replies[0].ID {
		t.Fatalf("thread page 2 = %v, %v", th, err)
	}
	thread := Thread{TenantID: "t1", ConversationID: c.ID, RootID: root.ID, LastReplyTime: replies[2].CreateTime}
	var version int64
	for i := range 3 { // the first recount, then two "redeliveries"
		got, err := s.Messages.RecountThreads(ctx, []Thread{thread}, time.Now())
		if err != nil || len(got) != 1 || got[0].ReplyCount != 3 || got[0].LastReplyTime == nil {
			t.Fatalf("recount %d = %+v, %v", i, got, err)
		}
		if i == 0 {
			version = got[0].Version
		} else if got[0].Version != version {
			t.Fatalf("recount %d bumped the version to %d (was %d)", i, got[0].Version, version)
		}
	}
	got, err := s.Messages.Get(ctx, "t1", c.ID, root.ID)
	if err != nil || !got.LastReplyTime.Equal(storeTime(replies[2].CreateTime)) {
		t.Fatalf("last_reply_time %v (%v), want the newest reply's %v", got.LastReplyTime, err, storeTime(replies[2].CreateTime))
	}
}
