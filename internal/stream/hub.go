// Package stream fans the messages.events topic out to the live StreamMessages calls of this gateway
// replica. Every replica reads the whole topic (no consumer group, from its end), so a subscriber on
// any replica sees every event of its conversation, in the topic's per-conversation order.
package stream

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/observability"
)

// ErrClosed ends subscriptions when the hub stops (server shutdown).
var ErrClosed = errors.New("event stream closed")

// ErrTooSlow ends a subscription whose buffer filled up: one slow client must not hold back the others.
var ErrTooSlow = errors.New("subscriber fell behind")

const bufferSize = 256

type convKey struct{ tenant, conversation string }

// Subscription receives the events of one conversation.
type Subscription struct {
	C    <-chan *platformv1.Event
	ch   chan *platformv1.Event
	hub  *Hub
	key  convKey
	once sync.Once
	err  error // why it ended; set before ch is closed
}

// Err tells why C was closed.
func (s *Subscription) Err() error { return s.err }

// Close ends the subscription.
func (s *Subscription) Close() { s.hub.remove(s, nil) }

// Hub dispatches events to subscriptions.
type Hub struct {
	client *kgo.Client
	logger *slog.Logger

	mu     sync.Mutex
	subs   map[convKey]map[*Subscription]struct{}
	closed bool

	keys     Verifier
	active   prometheus.Gauge
	dropped  prometheus.Counter
	rejected *prometheus.CounterVec
}

// Verifier checks an event record's signature: *envelope.Keys.
type Verifier interface {
	Verify(r *kgo.Record) error
}

// Reasons an event is not dispatched (label reason of events_rejected_total).
const (
	RejectUnsigned     = "unsigned"
	RejectUnknownKey   = "unknown_key"
	RejectBadSignature = "bad_signature"
	RejectUndecodable  = "undecodable"
)

// NewHub returns a hub reading messages.events from its end over a new client connecting with kafkaOpts
// (seed brokers, TLS, SASL). Only events
// whose signature keys verify are dispatched: anyone able to produce to the topic could otherwise show
// subscribers messages nobody sent.
func NewHub(kafkaOpts []kgo.Opt, keys Verifier, reg prometheus.Registerer, logger *slog.Logger) (*Hub, error) {
	if keys == nil {
		return nil, errors.New("stream hub: no keys to verify events with")
	}
	client, err := kgo.NewClient(append(slices.Clone(kafkaOpts),
		kgo.ConsumeTopics(kafka.TopicEvents),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtEnd()),
		kgo.ClientID("platform-gateway-streams"),
	)...)
	if err != nil {
		return nil, err
	}
	h := &Hub{client: client, logger: logger, keys: keys, subs: map[convKey]map[*Subscription]struct{}{},
		active: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: observability.Namespace, Subsystem: "stream",
			Name: "subscribers", Help: "Live StreamMessages subscriptions on this replica."}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{Namespace: observability.Namespace, Subsystem: "stream",
			Name: "slow_subscribers_dropped_total", Help: "Subscriptions ended because their buffer was full."}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: observability.Namespace, Subsystem: "stream",
			Name: "events_rejected_total", Help: "Records of messages.events not dispatched to subscribers, by reason: unsigned, unknown_key, bad_signature, undecodable."},
			[]string{"reason"}),
	}
	for _, r := range []string{RejectUnsigned, RejectUnknownKey, RejectBadSignature, RejectUndecodable} {
		h.rejected.WithLabelValues(r)
	}
	for _, c := range []prometheus.Collector{h.active, h.dropped, h.rejected} {
		if err := reg.Register(c); err != nil {
			client.Close()
			return nil, err
		}
	}
	return h, nil
}

// Run reads events until ctx ends, then closes every subscription with ErrClosed.
func (h *Hub) Run(ctx context.Context) {
	defer h.Close()
	for {
		fetches := h.client.PollFetches(ctx)
		if ctx.Err() != nil || fetches.IsClientClosed() {
			return
		}
		fetches.EachError(func(topic string, p int32, err error) {
			h.logger.Warn("reading messages.events", "partition", p, "error", err)
		})
		fetches.EachRecord(func(r *kgo.Record) {
			if ev := h.accept(r); ev != nil {
				h.dispatch(ev)
			}
		})
	}
}

// accept returns the record's event when its signature verifies and it decodes, nil otherwise (counted
// and logged: a rejected event on the topic means a misconfigured key or a forger).
func (h *Hub) accept(r *kgo.Record) *platformv1.Event {
	if err := h.keys.Verify(r); err != nil {
		reason := RejectBadSignature
		switch {
		case errors.Is(err, envelope.ErrUnsigned):
			reason = RejectUnsigned
		case errors.Is(err, envelope.ErrUnknownKey):
			reason = RejectUnknownKey
		}
		h.rejected.WithLabelValues(reason).Inc()
		h.logger.Warn("unverified event skipped", "partition", r.Partition, "offset", r.Offset, "error", err)
		return nil
	}
	ev, err := envelope.DecodeEvent(r)
	if err != nil {
		h.rejected.WithLabelValues(RejectUndecodable).Inc()
		h.logger.Warn("undecodable event skipped", "partition", r.Partition, "offset", r.Offset, "error", err)
		return nil
	}
	return ev
}

// Subscribe returns a subscription to the events of one conversation.
func (h *Hub) Subscribe(tenantID, conversationID string) *Subscription {
	ch := make(chan *platformv1.Event, bufferSize)
	s := &Subscription{C: ch, ch: ch, hub: h, key: convKey{tenantID, conversationID}}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		s.err = ErrClosed
		close(ch)
		return s
	}
	if h.subs[s.key] == nil {
		h.subs[s.key] = map[*Subscription]struct{}{}
	}
	h.subs[s.key][s] = struct{}{}
	h.active.Inc()
	return s
}

func (h *Hub) dispatch(ev *platformv1.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs[convKey{ev.GetTenantId(), ev.GetConversationId()}] {
		select {
		case s.ch <- ev:
		default:
			h.dropped.Inc()
			h.removeLocked(s, ErrTooSlow)
		}
	}
}

func (h *Hub) remove(s *Subscription, why error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.removeLocked(s, why)
}

func (h *Hub) removeLocked(s *Subscription, why error) {
	s.once.Do(func() {
		if _, ok := h.subs[s.key][s]; ok {
			delete(h.subs[s.key], s)
			if len(h.subs[s.key]) == 0 {
				delete(h.subs, s.key)
			}
			h.active.Dec()
		}
		s.err = why
		close(s.ch)
	})
}

// Close ends every subscription with ErrClosed and stops reading. Idempotent.
func (h *Hub) Close() {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	h.closed = true
	for _, set := range h.subs {
		for s := range set {
			h.removeLocked(s, ErrClosed)
		}
	}
	h.mu.Unlock()
	h.client.Close()
}
