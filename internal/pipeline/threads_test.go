package pipeline

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/testenv"
)

// TestThreadCountsExactAfterKill sends thousands of replies to a few roots through the production
// pipeline binary, SIGKILLs it with batches in flight (some replies stored, their roots' recount maybe
// not done, their offsets not committed), starts it again, and checks that every root's reply_count is
// exactly the number of its replies: the redelivered ones are duplicates and the recount counts
// documents, so nothing is counted twice or lost. It checks too that a reply naming a root of another
// conversation is dead-lettered.
func TestThreadCountsExactAfterKill(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t)
	w := e.workload("t1", 4, 3)
	roots := make([]store.Message, len(w.convs))
	for i, c := range w.convs {
		roots[i] = store.Message{ID: ulid.Make().String(), TenantID: c.TenantID, ConversationID: c.ID, SenderID: c.CreatorID, Body: "root"}
	}
	if _, _, err := e.st.Messages.InsertMany(ctx, roots); err != nil {
		t.Fatal(err)
	}
	const n = 600
	var recs []*kgo.Record
	want := map[string]int32{}
	for k := range n {
		i := k % len(w.convs)
		c := w.convs[i]
		in := inbound(c.TenantID, c.ID, c.CreatorID, fmt.Sprintf("reply %d", k))
		if k%5 != 4 { // every fifth is a top-level message
			in.ThreadId = roots[i].ID
			want[roots[i].ID]++
		}
		recs = append(recs, record(in, false))
	}
	// A reply to the root of another conversation: impossible, dead-lettered.
	bad := inbound(w.convs[0].TenantID, w.convs[0].ID, w.convs[0].CreatorID, "misplaced reply")
	bad.ThreadId = roots[1].ID
	recs = append(recs, record(bad, false))
	e.produce(recs...)
	bin := testenv.Binary(t, "services/pipeline")

	first, url := e.startBinary(t, bin, 100)
	killWithBatchesInFlight(t, first, url, n)

	second, _ := e.startBinary(t, bin, 100)
	e.waitStored(int64(n + len(roots)))
	testenv.Eventually(t, "the misplaced reply dead-lettered", time.Minute, func() bool { return e.dlqCount() == 1 })
	if err := second.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := second.Wait(); err != nil {
		t.Fatalf("graceful stop after the restart: %v", err)
	}

	for _, r := range roots {
		got, err := e.st.Messages.Get(ctx, r.TenantID, r.ConversationID, r.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.ReplyCount != want[r.ID] {
			t.Errorf("root %s: reply_count %d, want %d", r.ID, got.ReplyCount, want[r.ID])
		}
		if got.LastReplyTime == nil {
			t.Errorf("root %s: no last_reply_time", r.ID)
		}
	}
	if _, err := e.st.Messages.Get(ctx, bad.GetTenantId(), bad.GetConversationId(), bad.GetId()); err == nil {
		t.Error("the misplaced reply was stored")
	}
}
