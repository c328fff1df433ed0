package pipeline

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/types/known/timestamppb"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/events"
	"github.com/msgplatform/platform/internal/observability"
	"github.com/msgplatform/platform/internal/protoconv"
	"github.com/msgplatform/platform/internal/store"
)

// Writer stores messages in bulk: *store.BulkWriter.
type Writer interface {
	Write(ctx context.Context, msgs []store.Message) []store.BulkResult
}

// persistStage stores the batch's messages through the bulk writer (one unordered InsertMany shared with
// the other partitions' batches), _id = message id. A duplicate is a redelivery of a stored message:
// success, and the item carries the message as stored.
type persistStage struct{ w Writer }

func (persistStage) Name() string { return StagePersist }

func (s persistStage) Process(ctx context.Context, batch []*Item) {
	msgs := make([]store.Message, len(batch))
	for i, it := range batch {
		msgs[i] = it.Message
	}
	for i, res := range s.w.Write(ctx, msgs) {
		it := batch[i]
		switch {
		case errors.Is(res.Err, store.ErrPermanent):
			it.Fail(Permanent, fmt.Errorf("store message: %w", res.Err))
		case res.Err != nil:
			it.Fail(Transient, fmt.Errorf("store message: %w", res.Err))
		case res.Duplicate && (res.Message.TenantID != msgs[i].TenantID || res.Message.ConversationID != msgs[i].ConversationID):
			it.Fail(Permanent, fmt.Errorf("store message: id %s is already used by a message of another conversation", msgs[i].ID))
		default:
			it.Message, it.Duplicate = res.Message, res.Duplicate
		}
	}
}

// Producer is the part of a franz-go client the pipeline produces with (events and dead letters).
type Producer interface {
	Produce(ctx context.Context, r *kgo.Record, promise func(*kgo.Record, error))
	ProduceSync(ctx context.Context, rs ...*kgo.Record) kgo.ProduceResults
}

// publisher publishes one event and waits for Kafka's acknowledgement: *events.Publisher.
type publisher interface {
	Publish(ctx context.Context, ev *platformv1.Event) error
}

// notifyStage publishes an EVENT_TYPE_MESSAGE_PERSISTED event per stored message (duplicates included: the
// event of a redelivered message may never have gone out), through internal/events, keyed by
// conversation id. The event id is the message id, so a redelivery repeats the same event id and
// consumers that deduplicate on it see it once.
//
// Events.Publisher waits for each acknowledgement; publishing a batch one by one would cost a broker
// round trip per message. So each Publish runs in its own goroutine, but the next one starts only once
// this one's record is in the producer's buffer (orderedProducer signals it): records enter the
// producer in message order, which Kafka keeps per partition, and the acknowledgements are awaited
// together.
type notifyStage struct{ pub publisher }

func newNotifyStage(p Producer, keys *envelope.Keys, reg prometheus.Registerer) (notifyStage, error) {
	pub, err := events.NewPublisher(orderedProducer{p}, keys, reg)
	if err != nil {
		return notifyStage{}, err
	}
	return notifyStage{pub: pub}, nil
}

func (notifyStage) Name() string { return StageNotify }

func (s notifyStage) Process(ctx context.Context, batch []*Item) {
	var wg sync.WaitGroup
	for _, it := range batch {
		m := it.Message
		ev := &platformv1.Event{
			Id:             m.ID,
			Type:           platformv1.EventType_EVENT_TYPE_MESSAGE_PERSISTED,
			TenantId:       m.TenantID,
			ConversationId: m.ConversationID,
			ActorId:        m.SenderID,
			RequestId:      m.RequestID,
			Payload:        &platformv1.Event_Message{Message: protoconv.MessageToProto(m)},
		}
		if !m.PersistTime.IsZero() {
			ev.EventTime = timestamppb.New(m.PersistTime)
		}
		buffered := make(chan struct{})
		var once sync.Once
		signal := func() { once.Do(func() { close(buffered) }) }
		wg.Go(func() {
			defer signal() // also when Publish failed before producing
			if err := s.pub.Publish(context.WithValue(ctx, bufferedKey{}, signal), ev); err != nil {
				it.Fail(Transient, fmt.Errorf("publish persisted event: %w", err))
			}
		})
		<-buffered
	}
	wg.Wait()
}

type bufferedKey struct{}

// orderedProducer is the Producer handed to events.Publisher by the notify stage: it buffers the records
// with the asynchronous Produce, tells the caller (through the context) that they are buffered, then
// waits for their acknowledgements.
type orderedProducer struct{ p Producer }

func (o orderedProducer) ProduceSync(ctx context.Context, rs ...*kgo.Record) kgo.ProduceResults {
	results := make(kgo.ProduceResults, len(rs))
	var wg sync.WaitGroup
	for i, r := range rs {
		wg.Add(1)
		o.p.Produce(ctx, r, func(r *kgo.Record, err error) {
			results[i] = kgo.ProduceResult{Record: r, Err: err}
			wg.Done()
		})
	}
	if signal, ok := ctx.Value(bufferedKey{}).(func()); ok {
		signal()
	}
	wg.Wait()
	return results
}

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

func (s *metricsStage) Process(_ context.Context, batch []*Item) {
	now := s.now()
	for _, it := range batch {
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
