package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/event"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/msgplatform/platform/internal/testenv"
)

// newTestStore returns a Store on a fresh database with its indexes, and a test clock.
//
// It starts a file-backed FerretDB (testenv.Mongo), not the shared in-memory one: FerretDB 1.24's
// in-memory SQLite mode allows a single SQLite connection, and every update and findAndModify deadlocks
// on it (the server never answers, and the server is stuck for everyone after that).
func newTestStore(t *testing.T) (*Store, *testenv.Clock) {
	t.Helper()
	uri := testenv.Mongo(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, err := Connect(ctx, uri)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Disconnect(context.Background()) })
	s := New(client.Database("platform"))
	clock := testenv.NewClock(time.Date(2030, 1, 2, 3, 4, 5, 678_900_000, time.UTC))
	s.SetClock(clock.Now)
	if err := s.EnsureIndexes(ctx); err != nil {
		t.Fatal(err)
	}
	return s, clock
}

// testCtx bounds a test, so a server that stops answering fails it quickly.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func newID() string { return ulid.Make().String() }

func mustCreate(t *testing.T, s *Store, tenant, creator string, others ...string) Conversation {
	t.Helper()
	var members []Member
	for _, u := range others {
		members = append(members, Member{UserID: u})
	}
	c, err := s.Conversations.Create(testCtx(t), Conversation{TenantID: tenant, Title: "t " + creator, CreatorID: creator}, members)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestEnsureIndexesTwice(t *testing.T) {
	s, _ := newTestStore(t) // once
	ctx := testCtx(t)
	if err := s.EnsureIndexes(ctx); err != nil { // twice
		t.Fatalf("second EnsureIndexes: %v", err)
	}

	want := map[string][]string{
		ConversationsCollection: {`{"tenant_id": 1,"_id": 1}`},
		MembershipsCollection: {
			`{"tenant_id": 1,"conversation_id": 1,"user_id": 1} unique`,
			`{"tenant_id": 1,"user_id": 1,"conversation_id": 1}`,
		},
		MessagesCollection: {`{"tenant_id": 1,"conversation_id": 1,"_id": -1}`},
	}
	for coll, specs := range want {
		cur, err := s.Database().Collection(coll).Indexes().List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var idx []struct {
			Key    bson.D `bson:"key"`
			Unique bool   `bson:"unique"`
		}
		if err := cur.All(ctx, &idx); err != nil {
			t.Fatal(err)
		}
		have := map[string]bool{}
		for _, i := range idx {
			k := "{"
			for j, e := range i.Key {
				if j > 0 {
					k += ","
				}
				k += fmt.Sprintf("%q: %v", e.Key, e.Value)
			}
			k += "}"
			if i.Unique {
				k += " unique"
			}
			have[k] = true
		}
		for _, w := range specs {
			if !have[w] {
				t.Errorf("%s: index %s missing; have %v", coll, w, have)
			}
		}
	}

	// The unique membership key holds even for a document with another _id.
	c := mustCreate(t, s, "t1", "alice")
	_, err := s.Database().Collection(MembershipsCollection).InsertOne(ctx, bson.D{
		{Key: "_id", Value: "other"}, {Key: "tenant_id", Value: "t1"}, {Key: "conversation_id", Value: c.ID}, {Key: "user_id", Value: "alice"},
	})
	if !mongo.IsDuplicateKeyError(err) {
		t.Fatalf("second membership document for the same user: err = %v, want duplicate key", err)
	}
}

func TestPageSize(t *testing.T) {
	tests := []struct{ in, want int }{
		{0, 50}, {-1, 50}, {-500, 50}, {1, 1}, {50, 50}, {199, 199}, {200, 200}, {201, 200}, {1 << 30, 200},
	}
	for _, tc := range tests {
		if got := PageSize(tc.in); got != tc.want {
			t.Errorf("PageSize(%d) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

func TestMembershipID(t *testing.T) {
	tests := []struct{ tenant, conv, user string }{
		{"t1", "01J000", "alice"},
		{"t/1", "c/2", "u/3"},    // separators inside ids cannot collide
		{"t%2F1", "c", "u%"},     // nor escapes
		{"", "c", "ü ser+x@y.z"}, // empty part and non-ASCII
	}
	seen := map[string]bool{}
	for _, tc := range tests {
		id := MembershipID(tc.tenant, tc.conv, tc.user)
		if seen[id] {
			t.Errorf("MembershipID(%q, %q, %q) = %q collides", tc.tenant, tc.conv, tc.user, id)
		}
		seen[id] = true
		tn, cv, us, err := ParseMembershipID(id)
		if err != nil || tn != tc.tenant || cv != tc.conv || us != tc.user {
			t.Errorf("ParseMembershipID(%q) = %q, %q, %q, %v; want %q, %q, %q", id, tn, cv, us, err, tc.tenant, tc.conv, tc.user)
		}
	}
	for _, bad := range []string{"", "a/b", "a/b/c/d", "a/%zz/c"} {
		if _, _, _, err := ParseMembershipID(bad); err == nil {
			t.Errorf("ParseMembershipID(%q) succeeded", bad)
		}
	}
}

func TestBadPageTokens(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := testCtx(t)
	c := mustCreate(t, s, "t1", "alice", "bob", "carol")
	var msgs []Message
	for range 3 {
		msgs = append(msgs, Message{ID: newID(), TenantID: "t1", ConversationID: c.ID, SenderID: "alice", Body: "hi"})
	}
	if _, _, err := s.Messages.InsertMany(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, "t1", "alice")
	_, convTok, err := s.Conversations.ListForUser(ctx, "t1", "alice", false, 1, "")
	if err != nil || convTok == "" {
		t.Fatalf("ListForUser: token %q, %v", convTok, err)
	}
	_, memTok, err := s.Members.List(ctx, "t1", c.ID, 1, "")
	if err != nil || memTok == "" {
		t.Fatalf("Members.List: token %q, %v", memTok, err)
	}
	_, msgTok, err := s.Messages.List(ctx, "t1", c.ID, 1, "")
	if err != nil || msgTok == "" {
		t.Fatalf("Messages.List: token %q, %v", msgTok, err)
	}

	garbage := []string{"!!!", "bm90IGpzb24", "e30", encodePageToken("x", "y", "")}
	type list func(token string) error
	lists := map[string]struct {
		call  list
		wrong []string // tokens of other lists or other parameters
	}{
		"conversations": {
			call: func(tok string) error {
				_, _, err := s.Conversations.ListForUser(ctx, "t1", "alice", false, 1, tok)
				return err
			},
			wrong: []string{memTok, msgTok},
		},
		"conversations, other user": {
			call: func(tok string) error {
				_, _, err := s.Conversations.ListForUser(ctx, "t1", "bob", false, 1, tok)
				return err
			},
			wrong: []string{convTok},
		},
		"conversations, other filter": {
			call: func(tok string) error {
				_, _, err := s.Conversations.ListForUser(ctx, "t1", "alice", true, 1, tok)
				return err
			},
			wrong: []string{convTok},
		},
		"members": {
			call: func(tok string) error {
				_, _, err := s.Members.List(ctx, "t1", c.ID, 1, tok)
				return err
			},
			wrong: []string{convTok, msgTok},
		},
		"messages": {
			call: func(tok string) error {
				_, _, err := s.Messages.List(ctx, "t1", c.ID, 1, tok)
				return err
			},
			wrong: []string{convTok, memTok},
		},
		"messages, other tenant": {
			call: func(tok string) error {
				_, _, err := s.Messages.List(ctx, "t2", c.ID, 1, tok)
				return err
			},
			wrong: []string{msgTok},
		},
	}
	for name, l := range lists {
		for _, tok := range append(garbage, l.wrong...) {
			if err := l.call(tok); !errors.Is(err, ErrBadPageToken) {
				t.Errorf("%s with token %q: err = %v, want ErrBadPageToken", name, tok, err)
			}
		}
	}
	// Base64 padding is tolerated (some clients add it).
	if _, _, err := s.Messages.List(ctx, "t1", c.ID, 1, msgTok+"=="); err != nil {
		t.Errorf("padded token: %v", err)
	}
}

// On a warm store (indexes there) EnsureIndexes only lists them: no index build races a process's first
// writes, and start-up stays quick.
func TestEnsureIndexesWarmStoreOnlyLists(t *testing.T) {
	uri := testenv.Mongo(t)
	var mu sync.Mutex
	commands := map[string]int{}
	mon := &event.CommandMonitor{Started: func(_ context.Context, e *event.CommandStartedEvent) {
		// FerretDB answers NotImplemented to the TTL index of the membership locks at every start (see
		// indexSpec.ttl): a refused command that builds nothing, not counted.
		if coll, _ := e.Command.Lookup("createIndexes").StringValueOK(); coll == MembershipLocksCollection {
			return
		}
		mu.Lock()
		commands[e.CommandName]++
		mu.Unlock()
	}}
	client, err := mongo.Connect(options.Client().ApplyURI(uri).SetMonitor(mon))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Disconnect(context.Background()) })
	s, dls := New(client.Database("platform")), NewDeadLetters(client.Database("platform"))
	ctx := testCtx(t)
	for _, ensure := range []func(context.Context) error{s.EnsureIndexes, dls.EnsureIndexes} {
		if err := ensure(ctx); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	created := commands["createIndexes"]
	clear(commands)
	mu.Unlock()
	if created == 0 {
		t.Fatal("a cold store got no index")
	}
	for _, ensure := range []func(context.Context) error{s.EnsureIndexes, dls.EnsureIndexes} {
		if err := ensure(ctx); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if commands["createIndexes"] != 0 || commands["listIndexes"] != 5 {
		t.Fatalf("warm store: %v; want only listIndexes, one per collection", commands)
	}
}
