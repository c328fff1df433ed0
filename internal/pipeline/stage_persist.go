package pipeline

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/msgplatform/platform/internal/store"
)

// Writer stores messages in bulk: *store.BulkWriter.
type Writer interface {
	Write(ctx context.Context, msgs []store.Message) []store.BulkResult
}

// persistStage stores the batch's messages through the bulk writer (one unordered InsertMany shared with
// the other partitions' batches), _id = message id. A duplicate is a redelivery of a stored message:
// success, and the item carries the message as stored.
//
// With a store (st, nil in unit tests of the write alone) it also keeps threads:
//   - before the write, a reply's root is checked again (it exists, in the same tenant and conversation,
//     and is a root, not a reply): an impossible reply fails permanently (dead-lettered);
//   - after it, every root the batch's stored replies belong to (inserted or duplicate alike) gets its
//     counters recounted from the replies stored (store.Messages.RecountThreads): a count, not an
//     increment, so a redelivered or half-done batch cannot count a reply twice.
//
// The sender's read cursor is moved by SendMessage, not here: updates of memberships beside the bulk
// inserts stalled them on FerretDB's single SQLite writer (measured: no record stored in 3 minutes).
//
// A failure of the upkeep fails the items concerned transiently: the retry finds them stored
// (duplicates) and does the upkeep again.
type persistStage struct {
	w  Writer
	st *store.Store
}

func (persistStage) Name() string { return StagePersist }

func (s persistStage) Process(ctx context.Context, b *Batch) {
	if s.st != nil {
		s.checkRoots(ctx, b)
	}
	var batch []*Item
	for _, it := range b.Items {
		if !it.Failed() {
			batch = append(batch, it)
		}
	}
	msgs := make([]store.Message, len(batch))
	for i, it := range batch {
		msgs[i] = it.Message
	}
	for i, res := range s.w.Write(ctx, msgs) {
		it := batch[i]
		switch {
		case errors.Is(res.Err, store.ErrPermanent):
			it.Fail(Permanent, fmt.Errorf("store message: %w", res.Err))
		case res.Err != nil:
			it.Fail(Transient, fmt.Errorf("store message: %w", res.Err))
		case res.Duplicate && (res.Message.TenantID != msgs[i].TenantID || res.Message.ConversationID != msgs[i].ConversationID):
			it.Fail(Permanent, fmt.Errorf("store message: id %s is already used by a message of another conversation", msgs[i].ID))
		default:
			it.Message, it.Duplicate = res.Message, res.Duplicate
		}
	}
	if s.st != nil {
		s.recountThreads(ctx, batch)
	}
}

// checkRoots fails the replies whose root is not a root of their conversation.
func (s persistStage) checkRoots(ctx context.Context, b *Batch) {
	var ids []string
	seen := map[string]bool{}
	for _, it := range b.Items {
		if th := it.Message.ThreadID; th != "" && !it.Failed() && !seen[th] {
			seen[th] = true
			ids = append(ids, th)
		}
	}
	if len(ids) == 0 {
		return
	}
	roots, err := s.st.Messages.ByIDs(ctx, ids)
	for _, it := range b.Items {
		m := it.Message
		if m.ThreadID == "" || it.Failed() {
			continue
		}
		if err != nil {
			it.Fail(Transient, fmt.Errorf("read thread root %s: %w", m.ThreadID, err))
			continue
		}
		root, ok := roots[m.ThreadID]
		switch {
		case !ok || root.TenantID != m.TenantID || root.ConversationID != m.ConversationID:
			it.Fail(Permanent, fmt.Errorf("reply to %s: no such message in conversation %s", m.ThreadID, m.ConversationID))
		case root.ThreadID != "":
			it.Fail(Permanent, fmt.Errorf("reply to %s: it is a reply itself, not a thread's root", m.ThreadID))
		}
	}
}

// recountThreads recounts the roots of the batch's stored replies and hands each reply its root.
func (s persistStage) recountThreads(ctx context.Context, batch []*Item) {
	var threads []store.Thread
	index := map[[3]string]int{}
	for _, it := range batch {
		m := it.Message
		if m.ThreadID == "" || it.Failed() {
			continue
		}
		k := [3]string{m.TenantID, m.ConversationID, m.ThreadID}
		i, ok := index[k]
		if !ok {
			i = len(threads)
			index[k] = i
			threads = append(threads, store.Thread{TenantID: m.TenantID, ConversationID: m.ConversationID, RootID: m.ThreadID})
		}
		if m.CreateTime.After(threads[i].LastReplyTime) {
			threads[i].LastReplyTime = m.CreateTime
		}
	}
	if len(threads) == 0 {
		return
	}
	roots, err := s.st.Messages.RecountThreads(ctx, threads, time.Now())
	byID := make(map[string]*store.Message, len(roots))
	for i := range roots {
		byID[roots[i].ID] = &roots[i]
	}
	for _, it := range batch {
		if it.Message.ThreadID == "" || it.Failed() {
			continue
		}
		root, ok := byID[it.Message.ThreadID]
		switch {
		case ok:
			it.Root = root
		case err != nil:
			it.Fail(Transient, fmt.Errorf("recount thread %s: %w", it.Message.ThreadID, err))
		}
	}
}
