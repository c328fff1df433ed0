package loadgen

import (
	"slices"
	"testing"
	"time"
)

func TestTrackerPairsAnswersAndEvents(t *testing.T) {
	t0 := time.Unix(1000, 0)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	tr := newTracker()
	tr.ok.Store(4)

	tr.returned("a", "c1", ms(10), ms(5), false)
	if !tr.seen("a", ms(30), ms(20)) {
		t.Error("first event of an answered message not reported as first")
	}
	if tr.seen("a", ms(90), ms(20)) {
		t.Error("redelivered event counted again")
	}
	// The event beats the answer: persisted when the answer comes, latency 0.
	if tr.seen("b", ms(40), ms(35)) {
		t.Error("event before the answer reported as first")
	}
	if !tr.returned("b", "c1", ms(45), ms(30), false) {
		t.Error("answer after its event not reported as already seen")
	}
	tr.returned("c", "c2", ms(50), ms(48), false) // never seen
	tr.returned("w", "c2", ms(1), time.Time{}, true)
	tr.seen("w", ms(2), ms(2)) // warm-up: not measured
	tr.returned("d", "c2", ms(60), time.Time{}, false)
	tr.seen("d", ms(75), time.Time{}) // no server times: not in the breakdown

	if got := tr.persisted.Load(); got != 3 {
		t.Errorf("persisted = %d, want 3 (a, b, d)", got)
	}
	p := tr.persistence(ms(150))
	slices.Sort(p.sendToSeen)
	if want := []time.Duration{0, 15 * time.Millisecond, 20 * time.Millisecond}; !slices.Equal(p.sendToSeen, want) {
		t.Errorf("send→seen = %v, want %v", p.sendToSeen, want)
	}
	if p.early != 1 {
		t.Errorf("early = %d, want 1", p.early)
	}
	slices.Sort(p.acceptedToStored)
	if want := []time.Duration{5 * time.Millisecond, 15 * time.Millisecond}; !slices.Equal(p.acceptedToStored, want) {
		t.Errorf("accepted→stored = %v, want %v", p.acceptedToStored, want)
	}
	slices.Sort(p.storedToSeen)
	if want := []time.Duration{5 * time.Millisecond, 10 * time.Millisecond}; !slices.Equal(p.storedToSeen, want) {
		t.Errorf("stored→seen = %v, want %v", p.storedToSeen, want)
	}
	if want := []msgRef{{"c2", "c"}}; !slices.Equal(p.unseen, want) {
		t.Errorf("unseen = %v, want %v", p.unseen, want)
	}
	// The unseen one counts as waited for: 150 - 50 ms.
	slices.Sort(p.all)
	if want := []time.Duration{0, 15 * time.Millisecond, 20 * time.Millisecond, 100 * time.Millisecond}; !slices.Equal(p.all, want) {
		t.Errorf("all = %v, want %v", p.all, want)
	}
}

func TestPlanDealsEveryConversationAndSender(t *testing.T) {
	for _, tt := range []struct{ convs, senders int }{{10, 10}, {100, 30}, {3, 250}, {1, 1}, {7, 3}} {
		p := newPlan(tt.convs, tt.senders)
		members := p.members(tt.convs)
		usedSenders := map[int]bool{}
		for c, ms := range members {
			if len(ms) == 0 {
				t.Errorf("%d×%d: conversation %d has no sender", tt.convs, tt.senders, c)
			}
			for _, s := range ms {
				usedSenders[s] = true
			}
		}
		if len(usedSenders) != tt.senders {
			t.Errorf("%d×%d: %d senders used, want all", tt.convs, tt.senders, len(usedSenders))
		}
		// Every message goes from a member of its conversation, and a full cycle hits every pair once.
		perConv := make([]int, tt.convs)
		for n := range len(p.pairs) {
			pr := p.forMessage(n)
			if !slices.Contains(members[pr.conversation], pr.sender) {
				t.Errorf("%d×%d: message %d from non-member s%d of c%d", tt.convs, tt.senders, n, pr.sender, pr.conversation)
			}
			perConv[pr.conversation]++
		}
		if lo, hi := slices.Min(perConv), slices.Max(perConv); hi-lo > 1 && tt.senders <= tt.convs {
			t.Errorf("%d×%d: uneven spread over conversations %d..%d", tt.convs, tt.senders, lo, hi)
		}
	}
}

func TestProgressLine(t *testing.T) {
	got := progressLine("send", 2500*time.Millisecond, 5000, 4990, 2, 4900, 8, 1999.6)
	want := "[    2.5s] send  sent=5000 ok=4990 failed=2 persisted=4900 in_flight=8 rate=2000/s"
	if got != want {
		t.Errorf("progressLine =\n%q, want\n%q", got, want)
	}
}
