package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// ownerChange is one side of a race: the actor takes the owner role from target, by a demotion (Put
// with a lesser role) or a removal.
type ownerChange struct {
	name string
	do   func(ctx context.Context, s *Store, convID, target string) error
}

var ownerChanges = []ownerChange{
	{"demote", func(ctx context.Context, s *Store, convID, target string) error {
		_, err := s.Members.Put(ctx, Member{TenantID: "t1", ConversationID: convID, UserID: target, Role: RoleMember})
		return err
	}},
	{"remove", func(ctx context.Context, s *Store, convID, target string) error {
		return s.Members.Remove(ctx, "t1", convID, target)
	}},
}

// race runs a(alice→bob... as given) and b at the same moment and returns their errors.
func race(a, b func() error) (errA, errB error) {
	var wg sync.WaitGroup
	start := make(chan struct{})
	wg.Add(2)
	go func() { defer wg.Done(); <-start; errA = a() }()
	go func() { defer wg.Done(); <-start; errB = b() }()
	close(start)
	wg.Wait()
	return errA, errB
}

// TestLastOwnerRace is the race at the store: owners alice and bob take the owner role from each
// other at the same moment (demote/demote, remove/remove and mixed), many times. The conversation always
// keeps an owner, exactly one of the two changes is refused with ErrLastOwner, the other applies, and
// member_count matches the memberships. With a third owner, both changes apply.
func TestLastOwnerRace(t *testing.T) {
	s, _ := newTestStore(t)
	const trials = 24
	for i := range trials {
		ctx := testCtx(t)
		x, y := ownerChanges[i%2], ownerChanges[(i/2)%2]
		c := mustCreate(t, s, "t1", "alice", "bob")
		if _, err := s.Members.Put(ctx, Member{TenantID: "t1", ConversationID: c.ID, UserID: "bob", Role: RoleOwner}); err != nil {
			t.Fatal(err)
		}
		errA, errB := race(
			func() error { return x.do(ctx, s, c.ID, "bob") },   // alice takes bob's role
			func() error { return y.do(ctx, s, c.ID, "alice") }, // bob takes alice's
		)
		trial := fmt.Sprintf("trial %d (alice %s bob, bob %s alice)", i, x.name, y.name)
		refusedA, refusedB := errors.Is(errA, ErrLastOwner), errors.Is(errB, ErrLastOwner)
		switch {
		case refusedA && errB == nil, refusedB && errA == nil:
		default:
			t.Errorf("%s: errors %v and %v; want exactly one ErrLastOwner and one success", trial, errA, errB)
		}
		if n, err := s.Members.CountOwners(ctx, "t1", c.ID); err != nil || n != 1 {
			t.Errorf("%s: %d owners (%v), want 1", trial, n, err)
		}
		checkMemberCount(t, s, c.ID, trial)
	}

	// A third owner: both changes apply, carol stays the one owner.
	for i := range trials / 4 {
		ctx := testCtx(t)
		x, y := ownerChanges[i%2], ownerChanges[(i/2)%2]
		c := mustCreate(t, s, "t1", "alice", "bob", "carol")
		for _, u := range []string{"bob", "carol"} {
			if _, err := s.Members.Put(ctx, Member{TenantID: "t1", ConversationID: c.ID, UserID: u, Role: RoleOwner}); err != nil {
				t.Fatal(err)
			}
		}
		errA, errB := race(
			func() error { return x.do(ctx, s, c.ID, "bob") },
			func() error { return y.do(ctx, s, c.ID, "alice") },
		)
		trial := fmt.Sprintf("three owners, trial %d (%s, %s)", i, x.name, y.name)
		if errA != nil || errB != nil {
			t.Errorf("%s: errors %v and %v; want both to apply", trial, errA, errB)
		}
		if m, err := s.Members.Get(ctx, "t1", c.ID, "carol"); err != nil || m.Role != RoleOwner {
			t.Errorf("%s: carol = %+v, %v; want the remaining owner", trial, m, err)
		}
		if n, _ := s.Members.CountOwners(ctx, "t1", c.ID); n != 1 {
			t.Errorf("%s: %d owners, want 1", trial, n)
		}
		checkMemberCount(t, s, c.ID, trial)
	}
	assertNoMembershipLocks(t, s)
}

func checkMemberCount(t *testing.T, s *Store, convID, what string) {
	t.Helper()
	ctx := testCtx(t)
	g, err := s.Conversations.Get(ctx, "t1", convID)
	if err != nil {
		t.Fatal(err)
	}
	n, err := s.Database().Collection(MembershipsCollection).CountDocuments(ctx, bson.D{{Key: "conversation_id", Value: convID}})
	if err != nil {
		t.Fatal(err)
	}
	if int64(g.MemberCount) != n {
		t.Errorf("%s: member_count %d, %d memberships", what, g.MemberCount, n)
	}
}

// assertNoMembershipLocks: every lock (and takeover fence) was released.
func assertNoMembershipLocks(t *testing.T, s *Store) {
	t.Helper()
	var left []bson.M
	cur, err := s.Database().Collection(MembershipLocksCollection).Find(testCtx(t), bson.D{})
	if err != nil {
		t.Fatal(err)
	}
	if err := cur.All(testCtx(t), &left); err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Errorf("membership locks left behind: %v", left)
	}
}

// TestMembershipLockExpiry: a lock whose holder crashed blocks the conversation's membership changes
// only until its lease ends. While it is live, a change waits membershipLockWait and gives up with
// ErrMembershipBusy (an ErrConflict: ABORTED at the API), changing nothing; once expired it is taken over
// at once, and neither the stale lock nor the takeover fence stays behind.
func TestMembershipLockExpiry(t *testing.T) {
	s, clock := newTestStore(t)
	ctx := testCtx(t)
	c := mustCreate(t, s, "t1", "alice", "bob")
	locks := s.Database().Collection(MembershipLocksCollection)
	crashed := membershipLockDoc{ID: membershipLockID("t1", c.ID), Token: "crashed-holder", ExpireTime: s.core.now().Add(membershipLockLease)}
	if _, err := locks.InsertOne(ctx, crashed); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	err := s.Members.Remove(ctx, "t1", c.ID, "bob")
	if !errors.Is(err, ErrMembershipBusy) || !errors.Is(err, ErrConflict) {
		t.Fatalf("Remove under a live lock: %v, want ErrMembershipBusy", err)
	}
	if d := time.Since(start); d < membershipLockWait || d > membershipLockWait+3*time.Second {
		t.Errorf("gave up after %s, want about %s", d, membershipLockWait)
	}
	if _, err := s.Members.Get(ctx, "t1", c.ID, "bob"); err != nil {
		t.Fatalf("bob after the refused Remove: %v", err)
	}

	// The lease ends: the next change takes the lock over without waiting.
	clock.Advance(membershipLockLease + time.Second)
	start = time.Now()
	if err := s.Members.Remove(ctx, "t1", c.ID, "bob"); err != nil {
		t.Fatalf("Remove after the lease ended: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("takeover took %s", d)
	}
	if _, err := s.Members.Get(ctx, "t1", c.ID, "bob"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("bob after Remove: %v", err)
	}
	assertNoMembershipLocks(t, s)
}

// TestMembershipLockMutualExclusion: many callers lock the same conversation at once, starting from an
// expired lock that all of them find and try to take over; at no moment do two hold it. It also shows
// the lock released after fn fails.
func TestMembershipLockMutualExclusion(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := testCtx(t)
	locks := s.Database().Collection(MembershipLocksCollection)
	if _, err := locks.InsertOne(ctx, membershipLockDoc{ID: membershipLockID("t1", "c1"), Token: "crashed-holder",
		ExpireTime: s.core.now().Add(-time.Second)}); err != nil {
		t.Fatal(err)
	}
	const callers, rounds = 8, 5
	var inside, entered atomic.Int32
	var wg sync.WaitGroup
	errFn := errors.New("fn failed")
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				err := s.Members.locked(ctx, "t1", "c1", func(context.Context) error {
					if n := inside.Add(1); n != 1 {
						t.Errorf("%d holders of the lock at once", n)
					}
					entered.Add(1)
					time.Sleep(time.Millisecond)
					inside.Add(-1)
					if (i+r)%3 == 0 {
						return errFn
					}
					return nil
				})
				if err != nil && !errors.Is(err, errFn) {
					t.Errorf("locked: %v", err)
				}
			}
		}()
	}
	wg.Wait()
	if n := entered.Load(); n != callers*rounds {
		t.Errorf("%d entries, want %d", n, callers*rounds)
	}
	assertNoMembershipLocks(t, s)
}

// TestMembershipLockOwnInsertRetried: when the guard retries a lock insert whose first attempt was
// applied but whose answer was lost, the duplicate key names the caller's own token: it holds the lock,
// rather than waiting for its own lease to end.
func TestMembershipLockOwnInsertRetried(t *testing.T) {
	s, _ := newTestStore(t)
	ctx := testCtx(t)
	locks := s.Database().Collection(MembershipLocksCollection)
	id := membershipLockID("t1", "c1")
	if _, err := locks.InsertOne(ctx, membershipLockDoc{ID: id, Token: "mine", ExpireTime: s.core.now().Add(membershipLockLease)}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := s.Members.acquireMembershipLock(ctx, locks, id, "mine"); err != nil {
		t.Fatalf("acquire with the holder's own token: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("took %s", d)
	}
}
