package dlq

import (
	"fmt"
	"slices"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/observability"
	"github.com/msgplatform/platform/internal/store"
)

// Metrics of the dead-letter queue (namespace platform, subsystem dlq). The processor and the scheduler
// (pipeline process) and the DeadLetterService (gateway) each update what they do. The gauges are
// registered and refreshed by the scheduler only, so a process without one (the gateway) does not export
// gauges stuck at zero.
type Metrics struct {
	reg        prometheus.Registerer
	gaugesOnce sync.Once
	gaugesErr  error

	// RecordsIn counts the dead letters stored, by stage and class (redeliveries not counted).
	RecordsIn *prometheus.CounterVec
	// Duplicates counts DLQ records that were already stored (redeliveries).
	Duplicates prometheus.Counter
	// Retries counts republish attempts by result: republished, failed.
	Retries *prometheus.CounterVec
	// Parked counts entries parked (permanent on arrival, or attempts exhausted).
	Parked prometheus.Counter
	// Purged counts entries purged by operators.
	Purged prometheus.Counter
	// Entries is the number of entries by status.
	Entries *prometheus.GaugeVec
	// OldestPendingAge is the age (seconds since its failure) of the oldest entry waiting for a retry; 0
	// when none waits.
	OldestPendingAge prometheus.Gauge
	// StoreErrors counts DLQ records the processor could not store and skipped (the server refused the
	// document itself; logged with its coordinates).
	StoreErrors prometheus.Counter
}

// Retry results (label result of retries_total).
const (
	ResultRepublished = "republished"
	ResultFailed      = "failed"
)

// NewMetrics registers the DLQ metrics on reg. Registering on a registry that already has them (the
// devstack runs the gateway and the pipeline in one process) reuses the registered ones.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	opts := func(name, help string) prometheus.Opts {
		return prometheus.Opts{Namespace: observability.Namespace, Subsystem: "dlq", Name: name, Help: help}
	}
	m := &Metrics{
		reg: reg,
		RecordsIn: prometheus.NewCounterVec(prometheus.CounterOpts(opts("records_in_total",
			"Dead letters stored from messages.dlq, by failing stage and error class (redeliveries not counted).")),
			[]string{"stage", "class"}),
		Duplicates: prometheus.NewCounter(prometheus.CounterOpts(opts("duplicates_total",
			"DLQ records already stored (redeliveries), not stored again."))),
		Retries: prometheus.NewCounterVec(prometheus.CounterOpts(opts("retries_total",
			"Republishes of dead letters to their original topic, by result (republished, failed), scheduler and operators alike.")),
			[]string{"result"}),
		Parked: prometheus.NewCounter(prometheus.CounterOpts(opts("parked_total",
			"Dead letters parked: permanent errors on arrival, transient ones whose attempts are exhausted."))),
		Purged: prometheus.NewCounter(prometheus.CounterOpts(opts("purged_total",
			"Dead letters purged by operators."))),
		Entries: prometheus.NewGaugeVec(prometheus.GaugeOpts(opts("entries",
			"Dead letters by status (pending_retry, retrying, parked, retried, purged), refreshed by the retry scheduler.")),
			[]string{"status"}),
		OldestPendingAge: prometheus.NewGauge(prometheus.GaugeOpts(opts("oldest_pending_age_seconds",
			"Seconds since the failure of the oldest dead letter waiting for a retry; 0 when none waits."))),
		StoreErrors: prometheus.NewCounter(prometheus.CounterOpts(opts("store_errors_total",
			"DLQ records the processor skipped because the store refused the document itself (logged)."))),
	}
	var err error
	if m.RecordsIn, err = register(reg, m.RecordsIn); err != nil {
		return nil, err
	}
	if m.Duplicates, err = register(reg, m.Duplicates); err != nil {
		return nil, err
	}
	if m.Retries, err = register(reg, m.Retries); err != nil {
		return nil, err
	}
	if m.Parked, err = register(reg, m.Parked); err != nil {
		return nil, err
	}
	if m.Purged, err = register(reg, m.Purged); err != nil {
		return nil, err
	}
	if m.StoreErrors, err = register(reg, m.StoreErrors); err != nil {
		return nil, err
	}
	for _, r := range []string{ResultRepublished, ResultFailed} {
		m.Retries.WithLabelValues(r)
	}
	for _, st := range append(slices.Clone(envelope.Stages), envelope.LabelOther) {
		for _, cl := range []string{ClassPermanent, ClassTransient, envelope.LabelOther} {
			m.RecordsIn.WithLabelValues(st, cl)
		}
	}
	return m, nil
}

// registerGauges registers the entries and oldest-pending-age gauges (once; the scheduler calls it).
func (m *Metrics) registerGauges() error {
	m.gaugesOnce.Do(func() {
		if m.Entries, m.gaugesErr = register(m.reg, m.Entries); m.gaugesErr != nil {
			return
		}
		if m.OldestPendingAge, m.gaugesErr = register(m.reg, m.OldestPendingAge); m.gaugesErr != nil {
			return
		}
		for _, s := range store.DeadLetterStatuses {
			m.Entries.WithLabelValues(string(s))
		}
	})
	return m.gaugesErr
}

// register is observability.Register with this package's error prefix.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	c, err := observability.Register(reg, c)
	if err != nil {
		return c, fmt.Errorf("register dlq metrics: %w", err)
	}
	return c, nil
}

// discardMetrics are metrics on a private registry, for callers that pass none.
func discardMetrics() *Metrics {
	m, _ := NewMetrics(prometheus.NewRegistry())
	return m
}
