package loadgen

import (
	"context"
	"sync"
	"testing"
	"time"
)

// TestPacerScheduleAndOrder: every message is fired once, in order, never before its due time, and the
// due times are exactly start + seq/rate (no drift).
func TestPacerScheduleAndOrder(t *testing.T) {
	const rate, total = 2000, 300 // 150 ms of schedule
	start := time.Now().Add(5 * time.Millisecond)
	p := pacer{rate: rate, total: total, start: start, now: time.Now}
	type firing struct {
		seq      int
		due, now time.Time
	}
	var got []firing
	fired, _ := p.run(context.Background(), make(chan struct{}, total), func(seq int, due time.Time) {
		got = append(got, firing{seq, due, time.Now()})
	})
	if fired != total || len(got) != total {
		t.Fatalf("fired %d (%d calls), want %d", fired, len(got), total)
	}
	for i, f := range got {
		if f.seq != i {
			t.Fatalf("call %d fired seq %d", i, f.seq)
		}
		if want := start.Add(time.Duration(i) * time.Second / rate); !f.due.Equal(want) {
			t.Errorf("seq %d due %v after start, want %v", i, f.due.Sub(start), want.Sub(start))
		}
		if f.now.Before(f.due) {
			t.Errorf("seq %d fired %v before its due time", i, f.due.Sub(f.now))
		}
	}
	// The last due time is (total-1)/rate after start: 149.5 ms, exactly.
	if d := got[total-1].due.Sub(start); d != 149500*time.Microsecond {
		t.Errorf("last due = %v after start, want 149.5ms", d)
	}
}

// TestPacerIsOpenLoop: the schedule does not wait for answers. Calls that never return until the whole
// schedule has fired still let every message fire.
func TestPacerIsOpenLoop(t *testing.T) {
	const total = 50
	p := pacer{rate: 5000, total: total, start: time.Now(), now: time.Now}
	release := make(chan struct{})
	inFlight := make(chan struct{}, total)
	var wg sync.WaitGroup
	var mu sync.Mutex
	concurrent, most := 0, 0
	fired, _ := p.run(context.Background(), inFlight, func(int, time.Time) {
		mu.Lock()
		concurrent++
		most = max(most, concurrent)
		mu.Unlock()
		wg.Go(func() {
			<-release // a server that answers nothing until the run is over
			mu.Lock()
			concurrent--
			mu.Unlock()
			<-inFlight
		})
	})
	close(release)
	wg.Wait()
	if fired != total || most != total {
		t.Errorf("fired %d with at most %d in flight, want %d and %d", fired, most, total, total)
	}
}

// TestPacerInFlightCap: with the cap reached the pacer waits for a slot, and fires again as soon as one
// is given back.
func TestPacerInFlightCap(t *testing.T) {
	const total, limit = 10, 3
	p := pacer{rate: 100000, total: total, start: time.Now(), now: time.Now}
	inFlight := make(chan struct{}, limit)
	firedSeq := make(chan int, total)
	done := make(chan int)
	go func() {
		n, _ := p.run(context.Background(), inFlight, func(seq int, _ time.Time) { firedSeq <- seq })
		done <- n
	}()
	for want := range limit {
		if seq := <-firedSeq; seq != want {
			t.Fatalf("fired seq %d, want %d", seq, want)
		}
	}
	select {
	case seq := <-firedSeq:
		t.Fatalf("seq %d fired with %d calls in flight and a cap of %d", seq, limit, limit)
	case <-time.After(50 * time.Millisecond):
	}
	for want := limit; want < total; want++ {
		<-inFlight // one call answers
		if seq := <-firedSeq; seq != want {
			t.Fatalf("fired seq %d, want %d", seq, want)
		}
	}
	for range limit {
		<-inFlight
	}
	if n := <-done; n != total {
		t.Errorf("fired %d, want %d", n, total)
	}
}

// TestPacerStopsWithContext: a cancelled run fires nothing more and says how many it fired.
func TestPacerStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	p := pacer{rate: 1000, total: 1000000, start: time.Now(), now: time.Now}
	n, _ := p.run(ctx, make(chan struct{}, 1000000), func(seq int, _ time.Time) {
		if seq == 9 {
			cancel()
		}
	})
	if n != 10 {
		t.Errorf("fired %d after cancelling at the 10th, want 10", n)
	}
}

func TestTotalMessages(t *testing.T) {
	for _, tt := range []struct {
		rate int
		d    time.Duration
		want int
	}{
		{2000, 30 * time.Second, 60000},
		{200, 2 * time.Second, 400},
		{3, 1500 * time.Millisecond, 4},
		{1, 500 * time.Millisecond, 0},
	} {
		if got := (Config{Rate: tt.rate, Duration: tt.d}).totalMessages(); got != tt.want {
			t.Errorf("%d/s for %v = %d messages, want %d", tt.rate, tt.d, got, tt.want)
		}
	}
}
