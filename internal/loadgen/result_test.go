package loadgen

import (
	"strings"
	"testing"
	"time"
)

func TestWriteTable(t *testing.T) {
	ms := time.Millisecond
	r := Result{Target: "gw:9090", Rate: 2000, Duration: 30 * time.Second, Conversations: 100, Senders: 200, RunID: "x",
		Scheduled: 60000, Sent: 60000, OK: 59990, Failed: 10, AchievedRate: 1999.7,
		Errors: map[string]int{"Unavailable": 10}, ErrorSamples: map[string]string{"Unavailable": "broker down"},
		Send:    Latency{N: 59990, P50: 2 * ms, P90: 3 * ms, P99: 9 * ms, Max: 20 * ms},
		Persist: true, Persisted: 59980, Unseen: 10, Grace: 10 * time.Second,
		SendToPersisted:    Latency{N: 59980, P50: 20 * ms, P90: 30 * ms, P99: 45 * ms, Max: 80 * ms},
		SendToPersistedAll: Latency{N: 59990, P50: 20 * ms, P90: 30 * ms, P99: 46 * ms, Max: 10 * time.Second},
		UnseenChecked:      10, UnseenStored: 10,
	}
	var b strings.Builder
	if err := r.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"| sent / scheduled | 60000 / 60000 |",
		"| ok / failed | 59990 / 10 |",
		"| achieved rate | 1999.7 msg/s (target 2000) |",
		"| SendMessage p50 / p90 / p99 / max | 2.0 / 3.0 / 9.0 / 20.0 ms (n=59990) |",
		"| persisted / unseen | 59980 / 10 (grace 10s) |",
		"| send→persisted p50 / p90 / p99 / max | 20.0 / 30.0 / 45.0 / 80.0 ms (n=59980) |",
		"| send→persisted, unseen as waited (lower bound) p50 / p90 / p99 / max | 20.0 / 30.0 / 46.0 / 10000.0 ms (n=59990) |",
		"| unseen but stored (GetMessage) | 10 of 10 checked |",
		"| error Unavailable | 10 (broker down) |",
	} {
		if !strings.Contains(b.String(), want+"\n") {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}
