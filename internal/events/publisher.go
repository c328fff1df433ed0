// Package events publishes platform.v1.Event records to the messages.events topic, keyed by conversation
// id so each conversation's events stay in order.
package events

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/types/known/timestamppb"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/observability"
	"github.com/msgplatform/platform/internal/requestid"
	"github.com/msgplatform/platform/internal/tracing"
)

// Producer is the part of a franz-go client the publisher uses.
type Producer interface {
	ProduceSync(ctx context.Context, rs ...*kgo.Record) kgo.ProduceResults
}

// MessageEventID is the id of the event of a message at a version. Version 1 (as persisted by the
// pipeline) is the message id itself, the id the pipeline's notify stage gives its MESSAGE_PERSISTED event;
// later versions are "{message id}.v{version}". So the change stream's event and the writer's event of
// the same change (the API's update or delete) carry the same id, and consumers that deduplicate by event
// id see it once.
func MessageEventID(messageID string, version int64) string {
	if version <= 1 {
		return messageID
	}
	return fmt.Sprintf("%s.v%d", messageID, version)
}

// Publisher writes signed events to messages.events.
type Publisher struct {
	producer  Producer
	keys      *envelope.Keys
	published *prometheus.CounterVec
}

// NewPublisher returns a publisher over producer signing with keys, registering its metrics on reg (a
// second publisher of the process feeds the same series).
func NewPublisher(producer Producer, keys *envelope.Keys, reg prometheus.Registerer) (*Publisher, error) {
	if keys == nil {
		return nil, errors.New("event publisher: no signing keys")
	}
	p := &Publisher{producer: producer, keys: keys, published: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: observability.Namespace, Subsystem: "events", Name: "published_total",
		Help: "Events produced to messages.events by type and result (ok, error).",
	}, []string{"type", "result"})}
	var err error
	if p.published, err = observability.Register(reg, p.published); err != nil {
		return nil, fmt.Errorf("register event metrics: %w", err)
	}
	return p, nil
}

// Publish fills the event's id, time and request id when empty and produces it, waiting for the
// broker's acknowledgement.
func (p *Publisher) Publish(ctx context.Context, ev *platformv1.Event) error {
	return p.PublishBatch(ctx, []*platformv1.Event{ev})[0]
}

// PublishBatch is Publish for several events at once: they enter the producer in order (Kafka keeps
// their order within a partition) and their acknowledgements are awaited together. It returns one error
// per event, nil when acknowledged.
func (p *Publisher) PublishBatch(ctx context.Context, evs []*platformv1.Event) []error {
	errs := make([]error, len(evs))
	recs := make([]*kgo.Record, 0, len(evs))
	index := make([]int, 0, len(evs)) // recs[k] is evs[index[k]]
	for i, ev := range evs {
		rec, err := p.record(ctx, ev)
		if err != nil {
			errs[i] = err
			p.published.WithLabelValues(ev.GetType().String(), "error").Inc()
			continue
		}
		recs, index = append(recs, rec), append(index, i)
	}
	if len(recs) == 0 {
		return errs
	}
	for k, res := range p.producer.ProduceSync(ctx, recs...) {
		ev := evs[index[k]]
		if res.Err != nil {
			p.published.WithLabelValues(ev.GetType().String(), "error").Inc()
			errs[index[k]] = fmt.Errorf("publish %s event: %w", ev.GetType(), res.Err)
			continue
		}
		p.published.WithLabelValues(ev.GetType().String(), "ok").Inc()
	}
	return errs
}

// record fills ev's id, time and request id when empty and encodes it.
func (p *Publisher) record(ctx context.Context, ev *platformv1.Event) (*kgo.Record, error) {
	if ev.GetId() == "" {
		ev.Id = ulid.MustNew(ulid.Now(), rand.Reader).String()
	}
	if ev.GetEventTime() == nil {
		ev.EventTime = timestamppb.New(time.Now())
	}
	if ev.GetRequestId() == "" {
		ev.RequestId = requestid.From(ctx)
	}
	rec, err := envelope.EventRecord(ev, p.keys)
	if err != nil {
		return nil, fmt.Errorf("encode event: %w", err)
	}
	// The event's own trace when ctx names one for its id (the pipeline's notify: each message's), so the
	// producer's tracing hook puts that in its traceparent header; ctx's otherwise.
	rec.Context = tracing.Keyed(ctx, ev.GetId())
	return rec, nil
}
