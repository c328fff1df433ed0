package store

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"go.mongodb.org/mongo-driver/v2/event"

	"github.com/msgplatform/platform/internal/observability"
)

// DriverMetrics turns the MongoDB driver's connection-pool and server-monitoring events into metrics:
//
//	platform_mongodb_pool_connections_in_use            connections checked out of the pool now
//	platform_mongodb_pool_checkouts_failed_total{reason} checkouts that failed (connectionError, timeout, poolClosed, ...)
//	platform_mongodb_server_state_changes_total{to}     a server's kind changed (Unknown, Standalone, RSPrimary, ...)
//	platform_mongodb_server_heartbeats_failed_total     failed server heartbeats
//
// Wire it with PoolMonitor and ServerMonitor (ConnectWithMetrics and ConnectMonitored do).
type DriverMetrics struct {
	pools           prometheus.Gauge
	inUse           prometheus.Gauge
	checkoutsFailed *prometheus.CounterVec
	stateChanges    *prometheus.CounterVec
	heartbeatsFail  prometheus.Counter
}

// NewDriverMetrics creates the metrics, unregistered: a DriverMetrics is a prometheus.Collector.
func NewDriverMetrics() *DriverMetrics {
	m := &DriverMetrics{
		pools: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: observability.Namespace, Subsystem: "mongodb", Name: "pools",
			Help: "MongoDB connection pools open in this process: one per server per client (a process opens one client).",
		}),
		inUse: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: observability.Namespace, Subsystem: "mongodb", Name: "pool_connections_in_use",
			Help: "MongoDB connections checked out of the driver's pool (in use by an operation).",
		}),
		checkoutsFailed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: observability.Namespace, Subsystem: "mongodb", Name: "pool_checkouts_failed_total",
			Help: "Failed connection checkouts from the MongoDB driver's pool, by reason.",
		}, []string{"reason"}),
		stateChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: observability.Namespace, Subsystem: "mongodb", Name: "server_state_changes_total",
			Help: "Changes of a MongoDB server's kind as seen by the driver's monitoring, by the kind entered.",
		}, []string{"to"}),
		heartbeatsFail: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: observability.Namespace, Subsystem: "mongodb", Name: "server_heartbeats_failed_total",
			Help: "Failed heartbeats of the MongoDB driver's server monitoring.",
		}),
	}
	// The driver's checkout failure reasons exist as zero series before the first failure.
	for _, r := range []string{event.ReasonPoolClosed, event.ReasonTimedOut, event.ReasonConnectionErrored} {
		m.checkoutsFailed.WithLabelValues(r)
	}
	return m
}

// Describe implements prometheus.Collector.
func (m *DriverMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.pools.Describe(ch)
	m.inUse.Describe(ch)
	m.checkoutsFailed.Describe(ch)
	m.stateChanges.Describe(ch)
	m.heartbeatsFail.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *DriverMetrics) Collect(ch chan<- prometheus.Metric) {
	m.pools.Collect(ch)
	m.inUse.Collect(ch)
	m.checkoutsFailed.Collect(ch)
	m.stateChanges.Collect(ch)
	m.heartbeatsFail.Collect(ch)
}

// registerDriverMetrics registers m with reg, or returns the DriverMetrics already registered there
// (a second client of the same process then feeds the same series).
func registerDriverMetrics(reg prometheus.Registerer, m *DriverMetrics) (*DriverMetrics, error) {
	if err := reg.Register(m); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(*DriverMetrics); ok {
				return existing, nil
			}
		}
		return nil, fmt.Errorf("register mongodb driver metrics: %w", err)
	}
	return m, nil
}

// PoolMonitor returns the pool monitor feeding the pool metrics.
func (m *DriverMetrics) PoolMonitor() *event.PoolMonitor {
	return &event.PoolMonitor{Event: func(e *event.PoolEvent) {
		switch e.Type {
		case event.ConnectionPoolCreated:
			m.pools.Inc()
		case event.ConnectionPoolClosed:
			m.pools.Dec()
		case event.ConnectionCheckedOut:
			m.inUse.Inc()
		case event.ConnectionCheckedIn:
			m.inUse.Dec()
		case event.ConnectionCheckOutFailed:
			m.checkoutsFailed.WithLabelValues(e.Reason).Inc()
		}
	}}
}

// ServerMonitor returns the server monitor feeding the server metrics.
func (m *DriverMetrics) ServerMonitor() *event.ServerMonitor {
	return &event.ServerMonitor{
		ServerDescriptionChanged: func(e *event.ServerDescriptionChangedEvent) {
			if e.PreviousDescription.Kind != e.NewDescription.Kind {
				m.stateChanges.WithLabelValues(kindLabel(e.NewDescription.Kind)).Inc()
			}
		},
		ServerHeartbeatFailed: func(*event.ServerHeartbeatFailedEvent) { m.heartbeatsFail.Inc() },
	}
}

func kindLabel(kind string) string {
	if kind == "" {
		return "Unknown"
	}
	return kind
}
