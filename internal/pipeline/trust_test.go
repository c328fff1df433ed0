package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/health"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/testenv"
)

// TestOversizedRecordDoesNotBlock: a ~1 MB record, as large as a default client produces (franz-go and
// kcat stop at about 1,000,000 bytes with the headers), is dead-lettered
// (truncated, so its dead letter fits in messages.dlq) and the records after it, of its partition and of
// others, are stored. Before, its dead letter went over the producer's limit and was retried forever.
func TestOversizedRecordDoesNotBlock(t *testing.T) {
	e := newEnv(t)
	w := e.workload("t1", 4, 2)
	other := e.workload("t2", 3, 2)
	big := signed(&kgo.Record{Topic: kafka.TopicInbound, Key: []byte(w.convs[0].ID), Value: []byte(strings.Repeat("x", 999_800)),
		Headers: []kgo.RecordHeader{kgoHeader(envelope.HeaderContentType, envelope.ContentTypeProtobuf)}})
	e.produce(w.next(50)...)
	e.produce(big)
	e.produce(append(w.next(50), other.next(50)...)...)

	p := e.start(Config{})
	e.waitStored(150)
	dead := e.consume(kafka.TopicDLQ, func(r []*kgo.Record) bool { return len(r) >= 1 })
	if err := p.stop(); err != nil {
		t.Fatal(err)
	}
	if len(dead) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dead))
	}
	d := dead[0]
	h, _ := headers(d)
	if h[envelope.HeaderDLQStage] != StageAuthenticate || h[envelope.HeaderDLQErrorClass] != "permanent" ||
		h[envelope.HeaderDLQTruncated] != "true" || h[envelope.HeaderDLQOriginalSize] != "999800" ||
		len(h[envelope.HeaderDLQOriginalSHA256]) != 64 || len(d.Value) != envelope.TruncatedPayloadBytes ||
		!strings.Contains(h[envelope.HeaderDLQError], "too large") {
		t.Fatalf("dead letter of the oversized record: %d bytes, headers %v", len(d.Value), h)
	}
	if n := envelope.RecordSize(d); n > 8<<10 {
		t.Errorf("its dead letter is %d bytes; want a few KiB at most", n)
	}
	e.checkStored(&workload{convs: append(w.convs, other.convs...), msgs: append(w.msgs, other.msgs...)})
}

// fakeProducer answers every produce with err(record).
type fakeProducer struct {
	mu    sync.Mutex
	calls int
	err   func(call int, r *kgo.Record) error
}

func (f *fakeProducer) Produce(ctx context.Context, r *kgo.Record, promise func(*kgo.Record, error)) {
	res := f.ProduceSync(ctx, r)
	promise(r, res[0].Err)
}

func (f *fakeProducer) ProduceSync(_ context.Context, rs ...*kgo.Record) kgo.ProduceResults {
	f.mu.Lock()
	f.calls++
	call := f.calls
	f.mu.Unlock()
	out := make(kgo.ProduceResults, len(rs))
	for i, r := range rs {
		out[i] = kgo.ProduceResult{Record: r, Err: f.err(call, r)}
	}
	return out
}

// fakeDeadLetters is a DeadLetterStore failing its first failures calls.
type fakeDeadLetters struct {
	failures int
	calls    int
	stored   []*kgo.Record
}

func (f *fakeDeadLetters) StoreRecords(_ context.Context, recs []*kgo.Record) error {
	f.calls++
	if f.calls <= f.failures {
		return errors.New("store down")
	}
	f.stored = append(f.stored, recs...)
	return nil
}

// A dead letter Kafka refuses for good goes straight to the dead-letter store (retried while the store
// fails), one it refuses for a while is produced again, and neither is retried forever.
func TestDeadLettererFallsBackToTheStore(t *testing.T) {
	items := testItems(3)
	for _, it := range items {
		it.Fail(Permanent, errors.New("bad"))
		it.stage = StageValidate
	}
	producer := &fakeProducer{err: func(call int, r *kgo.Record) error {
		off, _ := strconv.Atoi(headerValue(r, envelope.HeaderDLQOriginalOffset))
		switch {
		case off == 0:
			return kerr.MessageTooLarge // never fits
		case off == 1 && call == 1:
			return kerr.NotLeaderForPartition // a broker moving
		}
		return nil
	}}
	store := &fakeDeadLetters{failures: 1}
	reg := prometheus.NewRegistry()
	d, err := newDeadLetterer(producer, store, Config{RetryInitial: time.Millisecond, RetryMax: time.Millisecond}, reg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.send(ctx, items); err != nil {
		t.Fatal(err)
	}
	for i, it := range items {
		if !it.deadLettered {
			t.Errorf("item %d not dead-lettered", i)
		}
	}
	if len(store.stored) != 1 || headerValue(store.stored[0], envelope.HeaderDLQOriginalOffset) != "0" || store.calls != 2 {
		t.Errorf("store got %d records in %d calls; want the refused one, after one failed try", len(store.stored), store.calls)
	}
	if producer.calls != 2 {
		t.Errorf("%d produce calls, want 2 (the transient failure retried once)", producer.calls)
	}
}

func headerValue(r *kgo.Record, key string) string {
	v, _ := envelope.Header(r, key)
	return v
}

// TestStallIsVisible: with the store down, records wait and the batch in hand is retried. That shows in
// the metrics (lag from the committed offset, the age of the oldest record in hand, the batch's retries)
// and in health (the pipeline dependency turns DEGRADED after the stall threshold); once the store is
// back, all of it returns to normal.
func TestStallIsVisible(t *testing.T) {
	e := newEnv(t)
	w := e.workload("t1", 4, 2)
	p := e.start(Config{StageTimeout: 500 * time.Millisecond, RetryMax: 200 * time.Millisecond})
	e.produce(w.next(20)...)
	e.waitStored(20)

	const stallAfter = time.Second
	// The pipeline dependency as internal/app builds it: kafka.StallMonitor on the group's commits.
	mon := kafka.NewStallMonitor(e.producer, kafka.GroupPipeline, kafka.TopicInbound, stallAfter)
	checker := health.NewChecker([]health.Dependency{{Name: health.Pipeline, Check: func(ctx context.Context) error {
		if err := mon.Check(ctx); errors.Is(err, kafka.ErrStalled) {
			return fmt.Errorf("%w: %w", health.ErrDegraded, err)
		} else if err != nil {
			return err
		}
		return nil
	}}}, time.Hour, 5*time.Second, slog.New(slog.DiscardHandler))
	pipelineStatus := func() health.Result {
		checker.CheckNow(context.Background())
		for _, r := range checker.Snapshot().Results {
			if r.Name == "pipeline" {
				return r
			}
		}
		t.Fatal("no pipeline dependency")
		return health.Result{}
	}
	eventually(t, "the pipeline dependency up and no lag", func() bool {
		return pipelineStatus().Status == health.StatusUp && p.metric("platform_pipeline_consumer_lag_records") == 0
	})

	e.mongo.Stop()
	e.produce(w.next(30)...)
	eventually(t, "lag, age and retries of the stuck batch", func() bool {
		return p.metric("platform_pipeline_consumer_lag_records") == 30 &&
			p.metric("platform_pipeline_oldest_uncommitted_age_seconds") > 0 && p.metric("platform_pipeline_batch_retries") >= 2
	})
	var r health.Result
	eventually(t, "the pipeline dependency DEGRADED", func() bool { r = pipelineStatus(); return r.Status == health.StatusDegraded })
	if !strings.Contains(r.LastError, "records waiting") || !strings.Contains(r.LastError, "no commit for") {
		t.Errorf("degraded reason %q; want it to say how many records wait and since when", r.LastError)
	}

	e.mongo.Start()
	e.waitStored(50)
	eventually(t, "back to normal", func() bool {
		return pipelineStatus().Status == health.StatusUp && p.metric("platform_pipeline_consumer_lag_records") == 0 &&
			p.metric("platform_pipeline_oldest_uncommitted_age_seconds") == 0 && p.metric("platform_pipeline_batch_retries") == 0
	})
	e.checkStored(w)
}

func eventually(t *testing.T, what string, cond func() bool) {
	testenv.Eventually(t, what, time.Minute, cond)
}
