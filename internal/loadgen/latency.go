package loadgen

import (
	"math"
	"slices"
	"time"
)

// Latency summarizes a set of durations.
type Latency struct {
	N                  int
	Mean               time.Duration
	P50, P90, P99, Max time.Duration
}

// Summarize sorts samples (in place) and returns their nearest-rank percentiles. Sorting every sample
// is exact and cheap at load-test sizes (60,000 samples sort in a few milliseconds).
func Summarize(samples []time.Duration) Latency {
	if len(samples) == 0 {
		return Latency{}
	}
	slices.Sort(samples)
	var sum time.Duration
	for _, s := range samples {
		sum += s
	}
	return Latency{
		N:    len(samples),
		Mean: sum / time.Duration(len(samples)),
		P50:  Percentile(samples, 50),
		P90:  Percentile(samples, 90),
		P99:  Percentile(samples, 99),
		Max:  samples[len(samples)-1],
	}
}

// Percentile returns the nearest-rank p-th percentile (0 < p ≤ 100) of sorted: the smallest sample that
// at least p% of the samples do not exceed. It is always one of the samples, never an interpolation.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// Millis is d in milliseconds, for reports and metrics.
func Millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
