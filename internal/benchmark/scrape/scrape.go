// Package scrape reads a process's Prometheus /metrics endpoint for the benchmarks: counters summed over
// their labels, and histograms' sum and count by one label.
package scrape

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// client has a short timeout: a scrape that hangs must not hold a measurement's clock.
var client = &http.Client{Timeout: 5 * time.Second}

// Metrics are the metric families of one scrape, by name.
type Metrics map[string]*dto.MetricFamily

// Fetch scrapes url (http://host:port/metrics).
func Fetch(ctx context.Context, url string) (Metrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	// Uncompressed: gzipping the page would cost the measured process more CPU than writing it.
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", url, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: parse: %w", url, err)
	}
	return mfs, nil
}

// Sum is the sum of a counter's (or gauge's) series over all their labels; 0 when absent.
func (m Metrics) Sum(name string) float64 {
	var sum float64
	for _, s := range m[name].GetMetric() {
		sum += s.GetCounter().GetValue() + s.GetGauge().GetValue() + s.GetUntyped().GetValue()
	}
	return sum
}

// HistogramPart is one series of a histogram: its label's value, its count of observations and their
// sum.
type HistogramPart struct {
	Label string
	Count uint64
	Sum   float64
}

// Mean is Sum/Count (0 when empty).
func (h HistogramPart) Mean() float64 {
	if h.Count == 0 {
		return 0
	}
	return h.Sum / float64(h.Count)
}

// Histogram returns the series of histogram name by the value of label, in the order they were
// exposed (Prometheus sorts them by label value).
func (m Metrics) Histogram(name, label string) []HistogramPart {
	var out []HistogramPart
	for _, s := range m[name].GetMetric() {
		p := HistogramPart{Count: s.GetHistogram().GetSampleCount(), Sum: s.GetHistogram().GetSampleSum()}
		for _, l := range s.GetLabel() {
			if l.GetName() == label {
				p.Label = l.GetValue()
			}
		}
		out = append(out, p)
	}
	return slices.Clip(out)
}
