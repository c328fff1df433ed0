package loadgen

import (
	"sync"
	"sync/atomic"
	"time"
)

// tracker pairs each message's SendMessage return with its persisted event. Either can come first: the
// event may beat the response to the client when the pipeline is quick. The counters feed the progress
// line without taking the lock.
type tracker struct {
	mu   sync.Mutex
	msgs map[string]*msgTimes

	sent, ok, failed, persisted, inFlight atomic.Int64
}

// msgTimes are one message's observations. Server times (accepted, stored) come from the message itself
// (create_time, persist_time) and are compared with client times only in the breakdown, which assumes
// synchronised clocks.
type msgTimes struct {
	conversation string
	warmup       bool
	returned     time.Time // client: SendMessage returned
	seen         time.Time // client: persisted event arrived
	accepted     time.Time // server: create_time of the SendMessage response
	stored       time.Time // server: persist_time of the persisted message
}

func newTracker() *tracker { return &tracker{msgs: map[string]*msgTimes{}} }

func (t *tracker) get(id string) *msgTimes {
	m := t.msgs[id]
	if m == nil {
		m = &msgTimes{}
		t.msgs[id] = m
	}
	return m
}

// returned records a successful SendMessage; it reports whether the message's persisted event had
// already arrived (counted as persisted now). A duplicate answer (same message id again) is ignored.
func (t *tracker) returned(id, conversation string, at, accepted time.Time, warmup bool) (alreadySeen bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := t.get(id)
	if !m.returned.IsZero() {
		return false
	}
	m.conversation, m.returned, m.accepted, m.warmup = conversation, at, accepted, warmup
	if !m.seen.IsZero() && !warmup {
		t.persisted.Add(1)
		return true
	}
	return false
}

// seen records a persisted event; it reports whether it was the first for a message this run sent (not
// a warm-up message), so redelivered events count once.
func (t *tracker) seen(id string, at, stored time.Time) (first bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := t.get(id)
	if !m.seen.IsZero() {
		return false
	}
	m.seen, m.stored = at, stored
	if !m.returned.IsZero() && !m.warmup {
		t.persisted.Add(1)
		return true
	}
	return false
}

// isSeen reports whether the message's persisted event arrived.
func (t *tracker) isSeen(id string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := t.msgs[id]
	return m != nil && !m.seen.IsZero()
}

// persistence is what the tracker measured over the run's (not warm-up) messages.
type persistence struct {
	sendToSeen       []time.Duration // SendMessage returned → event arrived (client clock)
	acceptedToStored []time.Duration // create_time → persist_time (server clocks)
	storedToSeen     []time.Duration // persist_time → event arrived (server then client clock)
	early            int             // events that arrived before SendMessage returned (counted as 0)
	unseen           []msgRef        // returned but never seen
	// all is sendToSeen plus, for each unseen message, how long it was waited for (returned → until): a
	// lower bound of its latency, so a lost event can only raise the percentiles.
	all []time.Duration
}

type msgRef struct{ conversation, id string }

func (t *tracker) persistence(until time.Time) persistence {
	t.mu.Lock()
	defer t.mu.Unlock()
	var p persistence
	for id, m := range t.msgs {
		if m.warmup || m.returned.IsZero() {
			continue
		}
		if m.seen.IsZero() {
			p.unseen = append(p.unseen, msgRef{m.conversation, id})
			p.all = append(p.all, max(until.Sub(m.returned), 0))
			continue
		}
		d := m.seen.Sub(m.returned)
		if d < 0 {
			// Readable before the client even had the answer: zero wait for a reader.
			p.early++
			d = 0
		}
		p.sendToSeen = append(p.sendToSeen, d)
		p.all = append(p.all, d)
		if !m.accepted.IsZero() && !m.stored.IsZero() {
			p.acceptedToStored = append(p.acceptedToStored, m.stored.Sub(m.accepted))
			p.storedToSeen = append(p.storedToSeen, m.seen.Sub(m.stored))
		}
	}
	return p
}
