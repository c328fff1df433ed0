package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/testenv"
)

// waitFor bounds every wait for a condition in these tests; none asserts on how long anything takes.
const waitFor = 20 * time.Second

// stallEnv is a kfake cluster with the platform topics, a producer that writes to the partition each
// record names, and an admin client to commit offsets of the pipeline's group.
type stallEnv struct {
	t        *testing.T
	broker   string
	producer *kgo.Client
	admin    *kadm.Client
}

func newStallEnv(t *testing.T) *stallEnv {
	t.Helper()
	broker := testenv.Kafka(t)
	producer, err := kafka.NewProducer([]string{broker}, 10*time.Second, kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(producer.Close)
	return &stallEnv{t: t, broker: broker, producer: producer, admin: kadm.NewClient(producer)}
}

func (e *stallEnv) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	e.t.Cleanup(cancel)
	return ctx
}

// monitor returns a stall monitor of kafka.GroupPipeline on messages.inbound over its own client, with a
// fake clock.
func (e *stallEnv) monitor(after time.Duration) (*kafka.StallMonitor, *testenv.Clock) {
	e.t.Helper()
	client, err := kgo.NewClient(kgo.SeedBrokers(e.broker))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(client.Close)
	m := kafka.NewStallMonitor(client, kafka.GroupPipeline, kafka.TopicInbound, after)
	clock := testenv.NewClock(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC))
	m.SetClock(clock.Now)
	return m, clock
}

// produce writes n records to one partition of messages.inbound and waits for their acknowledgement.
func (e *stallEnv) produce(partition int32, n int) {
	e.t.Helper()
	var rs []*kgo.Record
	for i := range n {
		rs = append(rs, &kgo.Record{Topic: kafka.TopicInbound, Partition: partition, Value: fmt.Appendf(nil, "record %d", i)})
	}
	if err := e.producer.ProduceSync(e.ctx(), rs...).FirstErr(); err != nil {
		e.t.Fatalf("produce %d records to partition %d: %v", n, partition, err)
	}
}

// commit commits the pipeline group's offset of one partition, as a simple (group-less) commit.
func (e *stallEnv) commit(partition int32, at int64) {
	e.t.Helper()
	var os kadm.Offsets
	os.Add(kadm.Offset{Topic: kafka.TopicInbound, Partition: partition, At: at, LeaderEpoch: -1})
	resp, err := e.admin.CommitOffsets(e.ctx(), kafka.GroupPipeline, os)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		e.t.Fatalf("commit partition %d at %d: %v", partition, at, err)
	}
}

// deleteRecords moves a partition's log start to offset to, as retention would.
func (e *stallEnv) deleteRecords(partition int32, to int64) {
	e.t.Helper()
	var os kadm.Offsets
	os.Add(kadm.Offset{Topic: kafka.TopicInbound, Partition: partition, At: to, LeaderEpoch: -1})
	resp, err := e.admin.DeleteRecords(e.ctx(), os)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		e.t.Fatalf("delete records of partition %d before %d: %v", partition, to, err)
	}
}

func mustCheck(t *testing.T, m *kafka.StallMonitor, ctx context.Context) {
	t.Helper()
	if err := m.Check(ctx); err != nil {
		t.Fatalf("Check = %v, want nil (healthy)", err)
	}
}

func mustStall(t *testing.T, m *kafka.StallMonitor, ctx context.Context, wantParts ...string) error {
	t.Helper()
	err := m.Check(ctx)
	if err == nil {
		t.Fatal("Check = nil, want a stall")
	}
	if !errors.Is(err, kafka.ErrStalled) {
		t.Fatalf("Check = %v, want an error wrapping ErrStalled", err)
	}
	for _, want := range wantParts {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Check error %q does not contain %q", err, want)
		}
	}
	return err
}

func TestStallMonitorIdleTopicNeverStalled(t *testing.T) {
	e := newStallEnv(t)
	m, clock := e.monitor(time.Minute)
	ctx := e.ctx()

	// No records, no group: nothing waits, however long nobody commits.
	for range 5 {
		mustCheck(t, m, ctx)
		clock.Advance(time.Hour)
	}
	progress, err := m.Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range progress {
		if p.Stalled || p.Lag() != 0 {
			t.Errorf("idle partition %d: %+v, want lag 0, not stalled", p.Partition, p)
		}
	}

	// A topic drained up to its end is idle too: records all committed, the clock moving on.
	e.produce(1, 4)
	e.commit(1, 4)
	for range 5 {
		mustCheck(t, m, ctx)
		clock.Advance(time.Hour)
	}

	// Records arriving after a long idle time are not stalled at once: they only just started waiting.
	e.produce(1, 2)
	mustCheck(t, m, ctx)
	clock.Advance(time.Minute - time.Second)
	mustCheck(t, m, ctx)
	clock.Advance(time.Second)
	mustStall(t, m, ctx, "partition 1: 2 records waiting")
}

func TestStallMonitorStallsAfterThreshold(t *testing.T) {
	e := newStallEnv(t)
	const after = 2 * time.Minute
	m, clock := e.monitor(after)
	ctx := e.ctx()

	e.produce(2, 3)
	mustCheck(t, m, ctx) // records just started waiting
	clock.Advance(after / 2)
	mustCheck(t, m, ctx)
	clock.Advance(after/2 - time.Second)
	mustCheck(t, m, ctx) // one second short of the threshold
	clock.Advance(time.Second)
	err := mustStall(t, m, ctx,
		"partition 2: 3 records waiting", "no commit for 2m0s", kafka.GroupPipeline, kafka.TopicInbound)
	for _, p := range []string{"partition 0", "partition 1", "partition 3", "partition 4", "partition 5"} {
		if strings.Contains(err.Error(), p) {
			t.Errorf("Check error %q names %s, which has nothing waiting", err, p)
		}
	}

	// It stays stalled while nothing moves.
	clock.Advance(time.Hour)
	mustStall(t, m, ctx, "partition 2: 3 records waiting")

	progress, err := m.Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range progress {
		if want := p.Partition == 2; p.Stalled != want {
			t.Errorf("partition %d: Stalled = %v, want %v (%+v)", p.Partition, p.Stalled, want, p)
		}
	}
}

func TestStallMonitorNamesEveryStalledPartition(t *testing.T) {
	e := newStallEnv(t)
	m, clock := e.monitor(time.Minute)
	ctx := e.ctx()

	e.produce(0, 1)
	e.produce(4, 7)
	mustCheck(t, m, ctx)
	clock.Advance(time.Minute)
	mustStall(t, m, ctx, "partition 0: 1 records waiting", "partition 4: 7 records waiting")
}

func TestStallMonitorDegradedAndBack(t *testing.T) {
	e := newStallEnv(t)
	m, clock := e.monitor(time.Minute)
	ctx := e.ctx()

	e.produce(3, 5)
	mustCheck(t, m, ctx)
	clock.Advance(time.Minute)
	mustStall(t, m, ctx, "partition 3: 5 records waiting")

	// A commit part of the way is progress: healthy again, until the rest waits for the threshold.
	e.commit(3, 2)
	mustCheck(t, m, ctx)
	clock.Advance(time.Minute - time.Second)
	mustCheck(t, m, ctx)
	clock.Advance(time.Second)
	mustStall(t, m, ctx, "partition 3: 3 records waiting")

	// Caught up: healthy, and stays so.
	e.commit(3, 5)
	mustCheck(t, m, ctx)
	clock.Advance(time.Hour)
	mustCheck(t, m, ctx)

	// New records after the catch-up start a fresh wait.
	e.produce(3, 1)
	mustCheck(t, m, ctx)
	clock.Advance(time.Minute)
	mustStall(t, m, ctx, "partition 3: 1 records waiting")
}

// TestStallMonitorDegradedAndBackWithConsumerGroup has a real group member consume and commit, as the
// pipeline does, to bring a stalled monitor back.
func TestStallMonitorDegradedAndBackWithConsumerGroup(t *testing.T) {
	e := newStallEnv(t)
	m, clock := e.monitor(time.Minute)
	ctx := e.ctx()

	e.produce(0, 3)
	e.produce(5, 2)
	mustCheck(t, m, ctx)
	clock.Advance(time.Minute)
	mustStall(t, m, ctx, "partition 0: 3 records waiting", "partition 5: 2 records waiting")

	consumer, err := kgo.NewClient(
		kgo.SeedBrokers(e.broker),
		kgo.ConsumerGroup(kafka.GroupPipeline),
		kgo.ConsumeTopics(kafka.TopicInbound),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.DisableAutoCommit(),
	)
	if err != nil {
		t.Fatal(err)
	}
	defer consumer.Close()
	for got := 0; got < 5; {
		fetches := consumer.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("consumed %d of 5 records: %v", got, err)
		}
		fetches.EachError(func(topic string, p int32, err error) { t.Logf("fetch %s/%d: %v", topic, p, err) })
		got += fetches.NumRecords()
	}
	if err := consumer.CommitUncommittedOffsets(ctx); err != nil {
		t.Fatal(err)
	}

	mustCheck(t, m, ctx)
	progress, err := m.Refresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range progress {
		if p.Lag() != 0 || p.Stalled {
			t.Errorf("partition %d after the group committed everything: %+v, want lag 0", p.Partition, p)
		}
	}
}

func TestStallMonitorProgressNeverStalls(t *testing.T) {
	e := newStallEnv(t)
	const after = time.Minute
	m, clock := e.monitor(after)
	ctx := e.ctx()

	e.produce(1, 10)
	mustCheck(t, m, ctx)
	// Each check comes longer than the threshold after the last one, but the group committed in between
	// and records still wait: that is a slow consumer, not a stalled one.
	for at := int64(1); at < 10; at++ {
		clock.Advance(2 * after)
		e.commit(1, at)
		if err := m.Check(ctx); err != nil {
			t.Fatalf("commit moved to %d, Check = %v, want nil", at, err)
		}
		progress, err := m.Refresh(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if p := progress[1]; p.Committed != at || p.Lag() != 10-at {
			t.Fatalf("partition 1 after committing %d: %+v", at, p)
		}
	}
}

func TestStallMonitorRefreshReportsProgress(t *testing.T) {
	e := newStallEnv(t)
	m, _ := e.monitor(time.Minute)
	ctx := e.ctx()

	e.produce(0, 5)
	e.produce(1, 3)
	e.produce(3, 4)
	e.deleteRecords(3, 2) // log start 2
	e.produce(4, 6)
	e.deleteRecords(4, 4) // log start 4

	type want struct{ committed, end, lag int64 }
	check := func(stage string, wants map[int32]want) {
		t.Helper()
		progress, err := m.Refresh(ctx)
		if err != nil {
			t.Fatalf("%s: Refresh: %v", stage, err)
		}
		if len(progress) != 6 {
			t.Fatalf("%s: Refresh returned %d partitions, want 6: %+v", stage, len(progress), progress)
		}
		for i, p := range progress {
			if p.Partition != int32(i) {
				t.Fatalf("%s: Refresh not in partition order: %+v", stage, progress)
			}
			w := wants[p.Partition] // zero for the partitions left empty
			if p.Committed != w.committed || p.End != w.end || p.Lag() != w.lag {
				t.Errorf("%s: partition %d: committed %d, end %d, lag %d; want committed %d, end %d, lag %d",
					stage, p.Partition, p.Committed, p.End, p.Lag(), w.committed, w.end, w.lag)
			}
			if p.Stalled {
				t.Errorf("%s: partition %d stalled at once", stage, p.Partition)
			}
		}
	}

	// The group never committed: its committed offset is the log start.
	check("no commits", map[int32]want{
		0: {committed: 0, end: 5, lag: 5},
		1: {committed: 0, end: 3, lag: 3},
		3: {committed: 2, end: 4, lag: 2},
		4: {committed: 4, end: 6, lag: 2},
	})

	e.commit(0, 2)
	e.commit(1, 3)
	e.commit(3, 3)
	e.commit(4, 1) // before the log start: the records between were deleted, not waiting
	check("after commits", map[int32]want{
		0: {committed: 2, end: 5, lag: 3},
		1: {committed: 3, end: 3, lag: 0},
		3: {committed: 3, end: 4, lag: 1},
		4: {committed: 4, end: 6, lag: 2},
	})
}

func TestPartitionProgressLagNeverNegative(t *testing.T) {
	p := kafka.PartitionProgress{Committed: 10, End: 4} // e.g. a topic recreated under the group
	if got := p.Lag(); got != 0 {
		t.Errorf("Lag() = %d, want 0", got)
	}
}

func TestStallMonitorReportsAdminErrors(t *testing.T) {
	e := newStallEnv(t)
	m, _ := e.monitor(time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := m.Check(ctx); err == nil || errors.Is(err, kafka.ErrStalled) {
		t.Errorf("Check with a cancelled context = %v, want the admin request's error", err)
	}
}

func TestIsPermanentProduceError(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"MessageTooLarge", kerr.MessageTooLarge, true},
		{"RecordListTooLarge", kerr.RecordListTooLarge, true},
		{"InvalidRecord", kerr.InvalidRecord, true},
		{"CorruptMessage", kerr.CorruptMessage, true},
		{"wrapped MessageTooLarge", fmt.Errorf("produce to %s: %w", kafka.TopicInbound, kerr.MessageTooLarge), true},
		{"wrapped RecordListTooLarge", fmt.Errorf("produce: %w", kerr.RecordListTooLarge), true},
		{"wrapped InvalidRecord", fmt.Errorf("outer: %w", fmt.Errorf("inner: %w", kerr.InvalidRecord)), true},
		{"NotLeaderForPartition", kerr.NotLeaderForPartition, false},
		{"wrapped NotLeaderForPartition", fmt.Errorf("produce: %w", kerr.NotLeaderForPartition), false},
		{"DeadlineExceeded", context.DeadlineExceeded, false},
		{"plain error", errors.New("message too large"), false},
		{"nil", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := kafka.IsPermanentProduceError(tt.err); got != tt.want {
				t.Errorf("IsPermanentProduceError(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

// TestIsPermanentProduceErrorOfOversizedRecord produces a record larger than the producer's batch limit:
// the error franz-go gives is one IsPermanentProduceError recognises.
func TestIsPermanentProduceErrorOfOversizedRecord(t *testing.T) {
	broker := testenv.Kafka(t)
	producer, err := kafka.NewProducer([]string{broker}, 10*time.Second, kgo.ProducerBatchMaxBytes(1024))
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	err = producer.ProduceSync(ctx, &kgo.Record{Topic: kafka.TopicInbound, Value: make([]byte, 4096)}).FirstErr()
	if err == nil {
		t.Fatal("an oversized record was produced")
	}
	if !kafka.IsPermanentProduceError(err) {
		t.Errorf("IsPermanentProduceError(%v) = false, want true", err)
	}
}

func TestDrainContext(t *testing.T) {
	type key struct{}

	t.Run("outlives its parent by drain", func(t *testing.T) {
		parent, cancelParent := context.WithCancel(context.WithValue(context.Background(), key{}, "v"))
		ctx, cancel := kafka.DrainContext(parent, 50*time.Millisecond)
		defer cancel()
		if ctx.Value(key{}) != "v" {
			t.Error("the drain context lost the parent's values")
		}
		if ctx.Err() != nil {
			t.Fatalf("drain context done before its parent: %v", ctx.Err())
		}
		cancelParent()
		if ctx.Err() != nil {
			t.Fatalf("drain context cancelled with its parent: %v", ctx.Err())
		}
		select {
		case <-ctx.Done():
		case <-time.After(waitFor):
			t.Fatal("drain context not cancelled after its parent ended and drain passed")
		}
		if !errors.Is(ctx.Err(), context.Canceled) {
			t.Errorf("Err = %v, want context.Canceled", ctx.Err())
		}
	})

	t.Run("not cancelled with its parent", func(t *testing.T) {
		parent, cancelParent := context.WithCancel(context.Background())
		ctx, cancel := kafka.DrainContext(parent, time.Hour)
		defer cancel()
		cancelParent()
		<-parent.Done()
		if ctx.Err() != nil {
			t.Fatalf("drain context cancelled with its parent: %v", ctx.Err())
		}
	})

	t.Run("no parent deadline", func(t *testing.T) {
		parent, cancelParent := context.WithTimeout(context.Background(), time.Hour)
		defer cancelParent()
		ctx, cancel := kafka.DrainContext(parent, time.Minute)
		defer cancel()
		if d, ok := ctx.Deadline(); ok {
			t.Errorf("drain context has the parent's deadline %v", d)
		}
	})

	t.Run("cancel func cancels at once", func(t *testing.T) {
		ctx, cancel := kafka.DrainContext(context.Background(), time.Hour)
		cancel()
		if !errors.Is(ctx.Err(), context.Canceled) {
			t.Fatalf("Err after cancel = %v, want context.Canceled", ctx.Err())
		}
		cancel() // idempotent
	})

	t.Run("cancel func after the parent ended", func(t *testing.T) {
		parent, cancelParent := context.WithCancel(context.Background())
		ctx, cancel := kafka.DrainContext(parent, time.Hour)
		cancelParent()
		if ctx.Err() != nil {
			t.Fatalf("drain context cancelled with its parent: %v", ctx.Err())
		}
		cancel()
		if !errors.Is(ctx.Err(), context.Canceled) {
			t.Fatalf("Err after cancel = %v, want context.Canceled", ctx.Err())
		}
	})
}

// newPollClient returns a group consumer of messages.dlq built as the pipeline builds its own.
func newPollClient(t *testing.T, broker, group string) *kgo.Client {
	t.Helper()
	client, err := kgo.NewClient(
		kgo.SeedBrokers(broker),
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(kafka.TopicDLQ),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.BlockRebalanceOnPoll(),
		kgo.DisableAutoCommit(),
	)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.Close)
	return client
}

func produceDLQ(t *testing.T, broker string, n int) {
	t.Helper()
	producer, err := kafka.NewProducer([]string{broker}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	var rs []*kgo.Record
	for i := range n {
		rs = append(rs, &kgo.Record{Topic: kafka.TopicDLQ, Key: fmt.Appendf(nil, "k%d", i), Value: fmt.Appendf(nil, "v%d", i)})
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := producer.ProduceSync(ctx, rs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

func testLogger(t *testing.T) *slog.Logger { return slog.New(slog.NewTextHandler(t.Output(), nil)) }

func TestPollLoop(t *testing.T) {
	broker := testenv.Kafka(t)
	const records, maxPoll = 7, 2
	produceDLQ(t, broker, records)

	t.Run("hands batches to handle and returns nil when ctx ends", func(t *testing.T) {
		client := newPollClient(t, broker, "test-poll-loop")
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var mu sync.Mutex
		seen := map[string]bool{}
		var batchErrs []string
		done := make(chan error, 1)
		go func() {
			done <- kafka.PollLoop(ctx, client, maxPoll, testLogger(t), func(hctx context.Context, f kgo.Fetches) error {
				mu.Lock()
				defer mu.Unlock()
				if n := f.NumRecords(); n == 0 || n > maxPoll {
					batchErrs = append(batchErrs, fmt.Sprintf("batch of %d records (max %d)", n, maxPoll))
				}
				f.EachRecord(func(r *kgo.Record) { seen[string(r.Value)] = true })
				if len(seen) == records {
					cancel()
				}
				return nil
			})
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("PollLoop = %v, want nil after ctx ended", err)
			}
		case <-time.After(waitFor):
			cancel()
			t.Fatal("PollLoop did not return after ctx ended")
		}
		mu.Lock()
		defer mu.Unlock()
		for _, e := range batchErrs {
			t.Error(e)
		}
		if len(seen) != records {
			t.Errorf("handle saw %d distinct records, want %d", len(seen), records)
		}
	})

	t.Run("returns nil when ctx ends while idle", func(t *testing.T) {
		idleBroker := testenv.Kafka(t) // nothing to read
		client := newPollClient(t, idleBroker, "test-poll-idle")
		ctx, cancel := context.WithCancel(context.Background())
		called := make(chan struct{}, 1)
		done := make(chan error, 1)
		go func() {
			done <- kafka.PollLoop(ctx, client, maxPoll, testLogger(t), func(context.Context, kgo.Fetches) error {
				called <- struct{}{}
				return nil
			})
		}()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("PollLoop = %v, want nil", err)
			}
		case <-time.After(waitFor):
			t.Fatal("PollLoop did not return after ctx ended")
		}
		select {
		case <-called:
			t.Error("handle called with an empty topic")
		default:
		}
	})

	t.Run("returns nil when the client is closed", func(t *testing.T) {
		idleBroker := testenv.Kafka(t)
		client := newPollClient(t, idleBroker, "test-poll-closed")
		done := make(chan error, 1)
		go func() {
			done <- kafka.PollLoop(context.Background(), client, maxPoll, testLogger(t), func(context.Context, kgo.Fetches) error {
				return nil
			})
		}()
		client.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("PollLoop = %v, want nil", err)
			}
		case <-time.After(waitFor):
			t.Fatal("PollLoop did not return after the client closed")
		}
	})

	t.Run("returns handle's error", func(t *testing.T) {
		client := newPollClient(t, broker, "test-poll-error")
		errHandle := errors.New("handle failed")
		calls := 0
		done := make(chan error, 1)
		go func() {
			done <- kafka.PollLoop(context.Background(), client, maxPoll, testLogger(t), func(_ context.Context, f kgo.Fetches) error {
				calls++
				if f.NumRecords() == 0 {
					return errors.New("empty batch")
				}
				return fmt.Errorf("batch: %w", errHandle)
			})
		}()
		select {
		case err := <-done:
			if !errors.Is(err, errHandle) {
				t.Fatalf("PollLoop = %v, want handle's error", err)
			}
			if calls != 1 {
				t.Errorf("handle called %d times, want once: the loop stops at its first error", calls)
			}
		case <-time.After(waitFor):
			t.Fatal("PollLoop did not return handle's error")
		}
	})
}
