package pipeline

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/msgplatform/platform/internal/observability"
)

// metricsStage records what happened to the messages that went all the way through: how many, and how
// long from SendMessage accepting them to their event being published.
type metricsStage struct {
	stored   *prometheus.CounterVec
	endToEnd prometheus.Histogram
	now      func() time.Time
}

func newMetricsStage(reg prometheus.Registerer) (*metricsStage, error) {
	s := &metricsStage{
		stored: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: observability.Namespace, Subsystem: "pipeline", Name: "messages_total",
			Help: "Messages through the whole pipeline by result: stored (new) or duplicate (redelivered, already stored).",
		}, []string{"result"}),
		endToEnd: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: observability.Namespace, Subsystem: "pipeline", Name: "end_to_end_seconds",
			Help:    "Time from SendMessage accepting a message (send_time) to its persisted event being published.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}),
		now: time.Now,
	}
	for _, c := range []prometheus.Collector{s.stored, s.endToEnd} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register pipeline message metrics: %w", err)
		}
	}
	return s, nil
}

func (*metricsStage) Name() string { return StageMetrics }

func (s *metricsStage) Process(_ context.Context, b *Batch) {
	now := s.now()
	for _, it := range b.Items {
		result := "stored"
		if it.Duplicate {
			result = "duplicate"
		}
		s.stored.WithLabelValues(result).Inc()
		if ts := it.Inbound.GetSendTime(); ts != nil && !it.Duplicate {
			s.endToEnd.Observe(now.Sub(ts.AsTime()).Seconds())
		}
	}
}
