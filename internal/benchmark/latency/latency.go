// Package latency measures the latency goals of the gateway as ratios of two paths measured side by side
// in one process: the authorization overhead of a unary call (MeasureAuthz) and REST against gRPC for the
// same call on one gateway (MeasureRESTvsGRPC). The benchmark harness calls these functions; they start
// the embedded servers of internal/testenv (FerretDB, redis-server, kfake) on free ports.
//
// On a shared, noisy machine absolute latencies wander, so the two paths take turns in short blocks of
// back-to-back calls; each round gives each path's p50, and the result is the median over rounds of the
// per-round ratio.
package latency

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// Pair is the outcome of measuring two paths, a and b, side by side.
type Pair struct {
	Ratio      float64 // median over rounds of p50(a)/p50(b)
	P50A, P50B float64 // medians over rounds of each path's p50, in µs
}

// subBlock is how many back-to-back calls one path makes before the other takes over.
const subBlock = 50

// alternate runs rounds rounds of calls calls to each of a and b, after a short warm-up of each. Within a
// round the paths take turns in blocks of subBlock back-to-back calls (which path starts alternates from
// block to block), so both see the same machine load, while each path's connection stays as warm as a
// busy client keeps it: interleaving single calls would let the idle path's goroutines park between
// calls and inflate both p50s (the quicker path's most). Any call's error stops the measurement.
func alternate(rounds, calls int, a, b func() error) (Pair, error) {
	if rounds < 1 || calls < 1 {
		return Pair{}, fmt.Errorf("rounds and calls must be positive, got %d and %d", rounds, calls)
	}
	for range max(calls/10, 5) {
		if err := errors.Join(a(), b()); err != nil {
			return Pair{}, fmt.Errorf("warm-up: %w", err)
		}
	}
	da, db := make([]float64, calls), make([]float64, calls)
	block := func(call func() error, d []float64) error {
		for i := range d {
			start := time.Now()
			if err := call(); err != nil {
				return err
			}
			d[i] = float64(time.Since(start).Nanoseconds())
		}
		return nil
	}
	var ratios, p50A, p50B []float64
	turn := 0
	for range rounds {
		for lo := 0; lo < calls; lo += subBlock {
			hi := min(lo+subBlock, calls)
			first, second := func() error { return block(a, da[lo:hi]) }, func() error { return block(b, db[lo:hi]) }
			if turn%2 == 1 {
				first, second = second, first
			}
			turn++
			if err := errors.Join(first(), second()); err != nil {
				return Pair{}, err
			}
		}
		ma, mb := median(da), median(db)
		ratios, p50A, p50B = append(ratios, ma/mb), append(p50A, ma), append(p50B, mb)
	}
	return Pair{Ratio: median(ratios), P50A: median(p50A) / 1e3, P50B: median(p50B) / 1e3}, nil
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}
