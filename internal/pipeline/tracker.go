package pipeline

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// tracker follows, per partition, the polls in hand that hold its records and whether its offsets may
// still be committed, so that with several polls in hand:
//   - a rebalance waits for the in-flight work of the partitions it revokes (which the finish phase then
//     commits) before giving them up (OnPartitionsRevoked), and a lost partition is committed no more;
//   - once a batch of a partition is abandoned (the drain timeout ended its retries), no later batch of
//     that partition is committed in this assignment: committing past abandoned records would lose them.
type tracker struct {
	mu       sync.Mutex
	inFlight map[int32]int   // polls in hand holding records of the partition
	owned    map[int32]bool  // assigned to this member and not revoked or lost since
	broken   map[int32]error // an abandoned batch: nothing more is committed for the partition
	firstErr error
	changed  chan struct{} // closed (and replaced) whenever inFlight drops
}

func newTracker() *tracker {
	return &tracker{inFlight: map[int32]int{}, owned: map[int32]bool{}, broken: map[int32]error{}, changed: make(chan struct{})}
}

// assigned records partitions given to this member: owned, with a clean slate.
func (t *tracker) assigned(parts []int32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, p := range parts {
		t.owned[p] = true
		delete(t.broken, p)
	}
}

// taken records a poll holding records of parts.
func (t *tracker) taken(parts []int32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, p := range parts {
		t.inFlight[p]++
	}
}

// released records that the poll holding records of parts is finished (committed or not).
func (t *tracker) released(parts []int32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, p := range parts {
		if t.inFlight[p]--; t.inFlight[p] <= 0 {
			delete(t.inFlight, p)
		}
	}
	close(t.changed)
	t.changed = make(chan struct{})
}

// abandon records that a batch of the partition could not be finished.
func (t *tracker) abandon(part int32, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.broken[part]; !ok {
		t.broken[part] = err
	}
	if t.firstErr == nil {
		t.firstErr = fmt.Errorf("partition %d: %w", part, err)
	}
}

// committable reports whether offsets of the partition may be committed now.
func (t *tracker) committable(part int32) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, broken := t.broken[part]
	return t.owned[part] && !broken
}

// err returns the first abandonment, which ends the poll loop: the client's fetch positions have moved
// past records that are not done.
func (t *tracker) err() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.firstErr
}

// errRevokeWait is returned by revoked when in-flight work outlived the wait.
var errRevokeWait = errors.New("in-flight batches still running")

// revoked waits (until ctx ends) for the polls in hand holding records of parts to finish, so their
// offsets are committed while the partitions are still this member's, then gives the partitions up.
func (t *tracker) revoked(ctx context.Context, parts []int32) error {
	for {
		t.mu.Lock()
		busy := 0
		for _, p := range parts {
			busy += t.inFlight[p]
		}
		changed := t.changed
		if busy == 0 || ctx.Err() != nil {
			for _, p := range parts {
				delete(t.owned, p)
			}
			t.mu.Unlock()
			if busy > 0 {
				return fmt.Errorf("%w: %d polls of the revoked partitions given up uncommitted: %w", errRevokeWait, busy, ctx.Err())
			}
			return nil
		}
		t.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
		}
	}
}

// lost gives partitions up at once: another member may own them already, so nothing in hand for them is
// committed (it is redelivered to the new owner, and stored once).
func (t *tracker) lost(parts []int32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, p := range parts {
		delete(t.owned, p)
	}
}
