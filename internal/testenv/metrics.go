package testenv

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Metric is the value of metric name in g over the series that carry every given label pair (name,
// value, name, value…), summed: counters, gauges and untyped metrics by value, histograms and summaries
// by their count of observations. 0 when nothing matches. Tests read what a process exports rather than
// private counters, and this is the one reader of it.
func Metric(tb testing.TB, g prometheus.Gatherer, name string, labels ...string) float64 {
	tb.Helper()
	mfs, err := g.Gather()
	if err != nil {
		tb.Fatalf("testenv: gather metrics: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return Series(mf, labels...)
		}
	}
	return 0
}

// Series is Metric over one family already gathered (or scraped from a /metrics page).
func Series(mf *dto.MetricFamily, labels ...string) float64 {
	var sum float64
	for _, m := range mf.GetMetric() {
		if !hasLabels(m, labels) {
			continue
		}
		sum += m.GetCounter().GetValue() + m.GetGauge().GetValue() + m.GetUntyped().GetValue() +
			float64(m.GetHistogram().GetSampleCount()) + float64(m.GetSummary().GetSampleCount())
	}
	return sum
}

func hasLabels(m *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		found := false
		for _, lp := range m.GetLabel() {
			if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}
