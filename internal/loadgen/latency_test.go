package loadgen

import (
	"math/rand/v2"
	"testing"
	"time"
)

func TestPercentileNearestRank(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = ms(i + 1) // 1..100 ms
	}
	tests := []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"empty", nil, 99, 0},
		{"one sample is every percentile", []time.Duration{ms(7)}, 50, ms(7)},
		{"p50 of 1..100", hundred, 50, ms(50)},
		{"p90 of 1..100", hundred, 90, ms(90)},
		{"p99 of 1..100", hundred, 99, ms(99)},
		{"p100 is the max", hundred, 100, ms(100)},
		{"tiny p is the min", hundred, 0.001, ms(1)},
		// Nearest rank never interpolates: p99 of 10 samples is the largest (rank ceil(9.9) = 10).
		{"p99 of 10", hundred[:10], 99, ms(10)},
		{"p50 of 10", hundred[:10], 50, ms(5)},
		{"p90 of 3", []time.Duration{ms(1), ms(2), ms(3)}, 90, ms(3)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Percentile(tt.sorted, tt.p); got != tt.want {
				t.Errorf("Percentile(p%v) = %v, want %v", tt.p, got, tt.want)
			}
		})
	}
}

func TestSummarizeSortsAndAverages(t *testing.T) {
	// 1..1000 µs shuffled: the summary must not depend on arrival order.
	samples := make([]time.Duration, 1000)
	for i := range samples {
		samples[i] = time.Duration(i+1) * time.Microsecond
	}
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(samples), func(i, j int) { samples[i], samples[j] = samples[j], samples[i] })
	got := Summarize(samples)
	want := Latency{N: 1000, Mean: 500500 * time.Nanosecond, P50: 500 * time.Microsecond, P90: 900 * time.Microsecond,
		P99: 990 * time.Microsecond, Max: 1000 * time.Microsecond}
	if got != want {
		t.Errorf("Summarize = %+v, want %+v", got, want)
	}
	if (Summarize(nil) != Latency{}) {
		t.Errorf("Summarize(nil) = %+v, want zero", Summarize(nil))
	}
}
