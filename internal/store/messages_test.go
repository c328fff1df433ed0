package store

import (
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/msgplatform/platform/internal/envelope"
)

func newMessages(tenant, conv string, n int) []Message {
	out := make([]Message, n)
	for i := range out {
		out[i] = Message{ID: newID(), TenantID: tenant, ConversationID: conv, SenderID: "alice", Body: fmt.Sprintf("message %d", i)}
	}
	return out
}

func TestMessagesInsertMany(t *testing.T) {
	s, clock := newTestStore(t)
	ctx := testCtx(t)
	c := mustCreate(t, s, "t1", "alice")

	batch := newMessages("t1", c.ID, 1000)
	start := time.Now()
	ins, dups, err := s.Messages.InsertMany(ctx, batch)
	t.Logf("InsertMany of 1,000 new messages: %v", time.Since(start))
	if err != nil || ins != 1000 || dups != 0 {
		t.Fatalf("InsertMany = %d, %d, %v", ins, dups, err)
	}

	// A redelivered batch: 200 already stored, 300 new, and one id twice within the batch.
	redelivery := slices.Concat(batch[100:300], newMessages("t1", c.ID, 300))
	redelivery = append(redelivery, redelivery[len(redelivery)-1])
	start = time.Now()
	ins, dups, err = s.Messages.InsertMany(ctx, redelivery)
	t.Logf("InsertMany of 501 (201 duplicates): %v", time.Since(start))
	if err != nil || ins != 300 || dups != 201 {
		t.Fatalf("InsertMany with duplicates = %d inserted, %d duplicates, %v; want 300, 201", ins, dups, err)
	}
	start = time.Now()
	ins, dups, err = s.Messages.InsertMany(ctx, batch)
	t.Logf("InsertMany of 1,000 duplicates: %v", time.Since(start))
	if err != nil || ins != 0 || dups != 1000 {
		t.Fatalf("InsertMany of stored ones = %d, %d, %v; want 0, 1000", ins, dups, err)
	}
	start = time.Now()
	page, _, err := s.Messages.List(ctx, "t1", c.ID, MaxPageSize, "")
	t.Logf("List of %d (of 1,300): %v", len(page), time.Since(start))
	if err != nil || len(page) != MaxPageSize {
		t.Fatalf("List = %d, %v", len(page), err)
	}

	if ins, dups, err := s.Messages.InsertMany(ctx, nil); ins != 0 || dups != 0 || err != nil {
		t.Fatalf("InsertMany(nil) = %d, %d, %v", ins, dups, err)
	}
	for _, bad := range []Message{
		{TenantID: "t1", ConversationID: c.ID},
		{ID: newID(), ConversationID: c.ID},
		{ID: newID(), TenantID: "t1"},
	} {
		if _, _, err := s.Messages.InsertMany(ctx, []Message{{ID: newID(), TenantID: "t1", ConversationID: c.ID}, bad}); err == nil {
			t.Errorf("InsertMany with %+v succeeded", bad)
		}
	}

	// Every field round-trips; metadata keys may hold what field names may not; zero fields get defaults.
	sent := time.Date(2030, 1, 1, 0, 0, 0, 123_456_789, time.UTC)
	full := Message{
		ID: newID(), TenantID: "t1", ConversationID: c.ID, SenderID: "bob", Body: "hi @carol",
		ClientMessageID: "cm-1", Metadata: map[string]string{"a.b": "1", "$x": "2", "": "3", "k": "v\x00w"},
		Mentions: []string{"carol"}, State: MessagePersisted, CreateTime: sent, RequestID: "req-1",
	}
	if ins, _, err := s.Messages.InsertMany(ctx, []Message{full}); err != nil || ins != 1 {
		t.Fatalf("InsertMany(full) = %d, %v", ins, err)
	}
	got, err := s.Messages.Get(ctx, "t1", c.ID, full.ID)
	if err != nil {
		t.Fatal(err)
	}
	now := clock.Now().Truncate(time.Millisecond)
	want := full
	want.CreateTime = sent.Truncate(time.Millisecond)
	want.PersistTime, want.UpdateTime, want.Version = now, now, 1
	if !maps.Equal(got.Metadata, want.Metadata) || !slices.Equal(got.Mentions, want.Mentions) {
		t.Fatalf("Get metadata %v mentions %v, want %v %v", got.Metadata, got.Mentions, want.Metadata, want.Mentions)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Get =\n%+v\nwant\n%+v", got, want)
	}
}

func TestMessagesListNewestFirst(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := testCtx(t)
	c := mustCreate(t, s, "t1", "alice")
	other := mustCreate(t, s, "t1", "alice")

	initial := newMessages("t1", c.ID, 25)
	if _, _, err := s.Messages.InsertMany(ctx, initial); err != nil {
		t.Fatal(err)
	}
	// Not listed: another conversation's, a merely accepted one, a deleted one.
	if _, _, err := s.Messages.InsertMany(ctx, newMessages("t1", other.ID, 5)); err != nil {
		t.Fatal(err)
	}
	accepted := Message{ID: newID(), TenantID: "t1", ConversationID: c.ID, State: MessageAccepted}
	if _, _, err := s.Messages.InsertMany(ctx, []Message{accepted}); err != nil {
		t.Fatal(err)
	}
	gone := initial[7]
	if _, err := s.Messages.Delete(ctx, "t1", c.ID, gone.ID, time.Now()); err != nil {
		t.Fatal(err)
	}

	var got []string
	token := ""
	for page := 1; ; page++ {
		ms, next, err := s.Messages.List(ctx, "t1", c.ID, 10, token)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			if m.State != MessagePersisted || m.ConversationID != c.ID {
				t.Errorf("page %d: %+v", page, m)
			}
			got = append(got, m.ID)
		}
		if next == "" {
			if page != 3 {
				t.Errorf("%d pages, want 3", page)
			}
			break
		}
		token = next
		// Newer messages arrive between pages.
		if _, _, err := s.Messages.InsertMany(ctx, newMessages("t1", c.ID, 4)); err != nil {
			t.Fatal(err)
		}
	}
	var want []string
	for i := len(initial) - 1; i >= 0; i-- {
		if i != 7 {
			want = append(want, initial[i].ID)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("pages gave\n%v\nwant (newest first, deleted one left out)\n%v", got, want)
	}
	first, _, err := s.Messages.List(ctx, "t1", c.ID, 1, "")
	if err != nil || len(first) != 1 || first[0].ID <= initial[24].ID {
		t.Fatalf("a new first page starts with the newest: %+v, %v", first, err)
	}
	if ms, next, err := s.Messages.List(ctx, "t1", newID(), 0, ""); err != nil || len(ms) != 0 || next != "" {
		t.Fatalf("empty conversation: %v %q %v", ms, next, err)
	}
}

func TestMessagesUpdateAndDelete(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := testCtx(t)
	c := mustCreate(t, s, "t1", "alice")
	m := Message{ID: newID(), TenantID: "t1", ConversationID: c.ID, SenderID: "alice", Body: "first",
		Metadata: map[string]string{"k": "v"}, Mentions: []string{"bob"}}
	if _, _, err := s.Messages.InsertMany(ctx, []Message{m}); err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)

	steps := []struct {
		name    string
		id      string
		version int64
		body    string
		wantErr error
		wantVer int64 // stored afterwards
		want    string
	}{
		{"no precondition", m.ID, 0, "second", nil, 2, "second"},
		{"matching version", m.ID, 2, "third", nil, 3, "third"},
		{"stale version", m.ID, 2, "lost", ErrConflict, 3, "third"},
		{"missing", newID(), 0, "x", ErrNotFound, 3, "third"},
		{"missing with version", newID(), 3, "x", ErrNotFound, 3, "third"},
	}
	for i, st := range steps {
		at := t0.Add(time.Duration(i) * time.Minute)
		u, err := s.Messages.UpdateBody(ctx, "t1", c.ID, st.id, st.version, st.body, at)
		if !errors.Is(err, st.wantErr) {
			t.Fatalf("%s: err = %v, want %v", st.name, err, st.wantErr)
		}
		if err == nil && (u.Body != st.body || u.Version != st.wantVer || u.EditTime == nil || !u.EditTime.Equal(at) || !u.UpdateTime.Equal(at)) {
			t.Fatalf("%s: returned %+v", st.name, u)
		}
		g, _ := s.Messages.Get(ctx, "t1", c.ID, m.ID)
		if g.Body != st.want || g.Version != st.wantVer || !maps.Equal(g.Metadata, m.Metadata) || !slices.Equal(g.Mentions, m.Mentions) {
			t.Fatalf("%s: stored %+v", st.name, g)
		}
	}

	del := t0.Add(time.Hour)
	d, err := s.Messages.Delete(ctx, "t1", c.ID, m.ID, del)
	if err != nil || d.State != MessageDeleted || d.Body != "" || d.Metadata != nil || d.Mentions != nil ||
		d.DeleteTime == nil || !d.DeleteTime.Equal(del) || !d.UpdateTime.Equal(del) || d.Version != 4 || d.SenderID != "alice" {
		t.Fatalf("Delete = %+v, %v", d, err)
	}
	again, err := s.Messages.Delete(ctx, "t1", c.ID, m.ID, del.Add(time.Hour))
	if err != nil || !reflect.DeepEqual(again, d) {
		t.Fatalf("second Delete = %+v, %v; want unchanged %+v", again, err, d)
	}
	if g, err := s.Messages.Get(ctx, "t1", c.ID, m.ID); err != nil || !reflect.DeepEqual(g, d) {
		t.Fatalf("Get tombstone = %+v, %v", g, err)
	}
	for _, v := range []int64{0, 4} {
		if _, err := s.Messages.UpdateBody(ctx, "t1", c.ID, m.ID, v, "resurrect", del); !errors.Is(err, ErrNotFound) {
			t.Fatalf("UpdateBody of a deleted message (version %d): %v, want ErrNotFound", v, err)
		}
	}
	if ms, _, _ := s.Messages.List(ctx, "t1", c.ID, 0, ""); len(ms) != 0 {
		t.Fatalf("List shows the tombstone: %+v", ms)
	}
	if _, err := s.Messages.Delete(ctx, "t1", c.ID, newID(), del); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Delete missing: %v, want ErrNotFound", err)
	}
	// A redelivery of the original does not bring it back.
	if ins, dups, err := s.Messages.InsertMany(ctx, []Message{m}); err != nil || ins != 0 || dups != 1 {
		t.Fatalf("redelivered after delete: %d, %d, %v", ins, dups, err)
	}
	if g, _ := s.Messages.Get(ctx, "t1", c.ID, m.ID); g.State != MessageDeleted {
		t.Fatalf("redelivery resurrected it: %+v", g)
	}
}

// A page of the largest messages stops at MaxPageBytes and continues on the next page: nothing is lost
// or repeated, and no page's messages weigh more than the bound (so a gRPC client's default 4 MiB limit
// holds every page).
func TestMessagesListCapsPageBytes(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := testCtx(t)
	c := mustCreate(t, s, "t1", "alice")
	body := strings.Repeat("x", envelope.MaxBodyBytes)
	meta := map[string]string{}
	for i := range envelope.MaxMetadata {
		meta[fmt.Sprintf("%s%02d", strings.Repeat("k", envelope.MaxMetadataKey-2), i)] = strings.Repeat("v", envelope.MaxMetadataValue)
	}
	const n = 150
	big := make([]Message, n)
	for i := range big {
		big[i] = Message{ID: newID(), TenantID: "t1", ConversationID: c.ID, SenderID: "alice", Body: body, Metadata: meta}
	}
	if _, _, err := s.Messages.InsertMany(ctx, big); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	token, pages := "", 0
	for {
		ms, next, err := s.Messages.List(ctx, "t1", c.ID, MaxPageSize, token)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		weight := 0
		for _, m := range ms {
			if seen[m.ID] {
				t.Fatalf("page %d repeats %s", pages, m.ID)
			}
			seen[m.ID] = true
			weight += len(m.Body) + envelope.MaxMetadata*(envelope.MaxMetadataKey+envelope.MaxMetadataValue)
		}
		if weight > MaxPageBytes {
			t.Errorf("page %d: %d messages weigh %d bytes, over %d", pages, len(ms), weight, MaxPageBytes)
		}
		if next == "" {
			break
		}
		token = next
	}
	if len(seen) != n || pages < 2 {
		t.Fatalf("%d messages over %d pages, want all %d over more than one", len(seen), pages, n)
	}
}
