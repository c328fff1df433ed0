package loadgen

import (
	"context"
	"time"
)

// pacer is an open-loop scheduler: message seq is due at start + seq/rate whatever happened to the
// earlier ones, so a slow server does not slow the offered load down (no coordinated omission). Only the
// in-flight cap can hold it back; then it fires late, and latency measured from the due time shows it.
type pacer struct {
	rate  int // messages per second
	total int
	start time.Time
	now   func() time.Time
}

// due is when message seq is scheduled. Integer arithmetic: no drift over long runs.
func (p pacer) due(seq int) time.Time {
	return p.start.Add(time.Duration(int64(seq) * int64(time.Second) / int64(p.rate)))
}

// run calls fire(seq, due) for seq 0..total-1 in order, each no earlier than its due time, after taking a
// slot from inFlight (the fired call gives it back when done). It returns how many it fired (fewer than
// total only when ctx ended) and the largest lateness of a fire past its due time.
func (p pacer) run(ctx context.Context, inFlight chan struct{}, fire func(seq int, due time.Time)) (fired int, maxLag time.Duration) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for seq := range p.total {
		if ctx.Err() != nil {
			// Checked first: when behind schedule, the selects below may find both ready.
			return fired, maxLag
		}
		due := p.due(seq)
		if wait := due.Sub(p.now()); wait > 0 {
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				return fired, maxLag
			case <-timer.C:
			}
		}
		select {
		case <-ctx.Done():
			return fired, maxLag
		case inFlight <- struct{}{}:
		}
		if lag := p.now().Sub(due); lag > maxLag {
			maxLag = lag
		}
		fire(seq, due)
		fired++
	}
	return fired, maxLag
}
