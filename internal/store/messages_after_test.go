package store

import (
	"slices"
	"testing"
	"time"
)

// ListAfter lists the persisted messages after an id, oldest first, bounded; never another
// conversation's or tenant's, a merely accepted one or a deleted one.
func TestMessagesListAfter(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := testCtx(t)
	c := mustCreate(t, s, "t1", "alice")
	other := mustCreate(t, s, "t1", "alice")

	msgs := newMessages("t1", c.ID, 12)
	if _, _, err := s.Messages.InsertMany(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Messages.InsertMany(ctx, newMessages("t1", other.ID, 3)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Messages.InsertMany(ctx, []Message{{ID: newID(), TenantID: "t1", ConversationID: c.ID, State: MessageAccepted}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Messages.Delete(ctx, "t1", c.ID, msgs[6].ID, time.Now()); err != nil {
		t.Fatal(err)
	}
	ids := func(ms []Message) []string {
		out := make([]string, len(ms))
		for i, m := range ms {
			out[i] = m.ID
		}
		return out
	}
	var live []string // persisted, ascending
	for i, m := range msgs {
		if i != 6 {
			live = append(live, m.ID)
		}
	}

	for _, tc := range []struct {
		name, tenant, after string
		limit               int
		want                []string
	}{
		{"from the start", "t1", "", 100, live},
		{"after the third", "t1", msgs[2].ID, 100, live[3:]},
		{"after the deleted one", "t1", msgs[6].ID, 100, live[6:]},
		{"bounded", "t1", msgs[2].ID, 2, live[3:5]},
		{"after the newest", "t1", msgs[11].ID, 100, nil},
		{"zero limit", "t1", "", 0, nil},
		{"other tenant", "t2", "", 100, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.Messages.ListAfter(ctx, tc.tenant, c.ID, tc.after, tc.limit)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(ids(got), tc.want) && !(len(got) == 0 && len(tc.want) == 0) {
				t.Errorf("ListAfter = %v, want %v", ids(got), tc.want)
			}
			for _, m := range got {
				if m.State != MessagePersisted || m.ConversationID != c.ID || m.Body == "" {
					t.Errorf("listed %+v", m)
				}
			}
		})
	}
}
