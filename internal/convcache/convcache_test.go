package convcache

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/testenv"
)

// TestCache: an active conversation is read once per TTL; archived and missing ones are read
// every time and answer as the store does; Forget makes the next check read again.
func TestCache(t *testing.T) {
	ctx := context.Background()
	uri := testenv.SharedMongo(t)
	client, err := store.Connect(ctx, uri)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = client.Disconnect(ctx) }()
	st := store.New(client.Database(testenv.MongoDatabase(t, uri)))
	if err := st.EnsureIndexes(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := st.Conversations.Create(ctx, store.Conversation{TenantID: "t1", Title: "x", CreatorID: "ada"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1000, 0)
	a := New(time.Second, 0)
	a.now = func() time.Time { return now }

	if err := a.Check(ctx, st, "t1", c.ID); err != nil {
		t.Fatalf("active conversation: %v", err)
	}
	// Archived behind the cache's back (another gateway): still active here until the TTL passes.
	if _, err := st.Conversations.Archive(ctx, "t1", c.ID); err != nil {
		t.Fatal(err)
	}
	if err := a.Check(ctx, st, "t1", c.ID); err != nil {
		t.Errorf("within the TTL: %v, want the remembered active state", err)
	}
	now = now.Add(time.Second)
	if err := a.Check(ctx, st, "t1", c.ID); !errors.Is(err, ErrArchived) {
		t.Errorf("after the TTL: %v, want ErrArchived", err)
	}
	if err := a.Check(ctx, st, "t2", c.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("other tenant: %v, want store.ErrNotFound", err)
	}

	// Archived through this process: Forget takes effect at once.
	d, err := st.Conversations.Create(ctx, store.Conversation{TenantID: "t1", Title: "y", CreatorID: "ada"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Check(ctx, st, "t1", d.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Conversations.Archive(ctx, "t1", d.ID); err != nil {
		t.Fatal(err)
	}
	a.Forget("t1", d.ID)
	if err := a.Check(ctx, st, "t1", d.ID); !errors.Is(err, ErrArchived) {
		t.Errorf("after Forget: %v, want ErrArchived", err)
	}
}
