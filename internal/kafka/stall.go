package kafka

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// ErrStalled is wrapped by StallMonitor.Check when a partition with records waiting made no progress.
var ErrStalled = errors.New("consumer group stalled")

// PartitionProgress is one partition of a group as StallMonitor last saw it.
type PartitionProgress struct {
	Partition int32
	// Committed is the group's committed offset (the log start when the group has none); End the
	// partition's end offset. Lag = End − Committed records wait.
	Committed, End int64
	// Since is when Committed last changed, or when records started waiting.
	Since time.Time
	// Stalled: records wait and Committed has not moved for the monitor's threshold.
	Stalled bool
}

// Lag is how many records of the partition wait for the group.
func (p PartitionProgress) Lag() int64 { return max(p.End-p.Committed, 0) }

// StallMonitor tells whether a consumer group keeps up with a topic, from what Kafka itself records: the
// group's committed offsets against the partitions' end offsets. It sees every replica of the group at
// once, and a group with nobody consuming at all, so the gateway can report the pipeline's stall as well
// as the pipeline can. A partition is stalled when records wait and its committed offset has not moved
// for the threshold (PIPELINE_STALL_AFTER).
type StallMonitor struct {
	admin *kadm.Client
	group string
	topic string
	after time.Duration
	now   func() time.Time

	mu    sync.Mutex
	parts map[int32]PartitionProgress
}

// NewStallMonitor returns a monitor of group on topic over client (any client: it only sends admin
// requests), calling a partition stalled after the given threshold.
func NewStallMonitor(client *kgo.Client, group, topic string, after time.Duration) *StallMonitor {
	return &StallMonitor{admin: kadm.NewClient(client), group: group, topic: topic, after: after, now: time.Now,
		parts: map[int32]PartitionProgress{}}
}

// SetClock replaces time.Now (tests).
func (m *StallMonitor) SetClock(now func() time.Time) { m.now = now }

// Check reads the offsets and returns nil when no partition is stalled, an error wrapping ErrStalled
// naming the stalled partitions otherwise, or the error of the admin requests.
func (m *StallMonitor) Check(ctx context.Context) error {
	progress, err := m.Refresh(ctx)
	if err != nil {
		return err
	}
	var stalled []string
	for _, p := range progress {
		if p.Stalled {
			stalled = append(stalled, fmt.Sprintf("partition %d: %d records waiting, no commit for %s",
				p.Partition, p.Lag(), m.now().Sub(p.Since).Round(time.Second)))
		}
	}
	if len(stalled) == 0 {
		return nil
	}
	const show = 5
	more := ""
	if len(stalled) > show {
		more = fmt.Sprintf(" (and %d more partitions)", len(stalled)-show)
		stalled = stalled[:show]
	}
	return fmt.Errorf("%w: group %s on %s: %s%s", ErrStalled, m.group, m.topic, strings.Join(stalled, "; "), more)
}

// Refresh reads the offsets, updates what the monitor knows and returns every partition's progress, in
// partition order.
func (m *StallMonitor) Refresh(ctx context.Context) ([]PartitionProgress, error) {
	ends, err := m.admin.ListEndOffsets(ctx, m.topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("list end offsets of %s: %w", m.topic, err)
	}
	starts, err := m.admin.ListStartOffsets(ctx, m.topic)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("list start offsets of %s: %w", m.topic, err)
	}
	committed, err := m.admin.FetchOffsets(ctx, m.group)
	if err != nil && !errors.Is(err, kerr.GroupIDNotFound) { // no group yet: nothing committed
		return nil, fmt.Errorf("fetch offsets of group %s: %w", m.group, err)
	}
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []PartitionProgress
	ends.Each(func(o kadm.ListedOffset) {
		c := int64(-1)
		if r, ok := committed.Lookup(m.topic, o.Partition); ok && r.Err == nil {
			c = r.At
		}
		if s, ok := starts.Lookup(m.topic, o.Partition); ok {
			c = max(c, s.Offset) // nothing committed, or committed before retention deleted it
		}
		prev, seen := m.parts[o.Partition]
		p := PartitionProgress{Partition: o.Partition, Committed: c, End: o.Offset, Since: prev.Since}
		if !seen || c != prev.Committed || p.Lag() == 0 || prev.Lag() == 0 {
			p.Since = now // progress, idle, or records just started waiting
		}
		p.Stalled = p.Lag() > 0 && now.Sub(p.Since) >= m.after
		m.parts[o.Partition] = p
		out = append(out, p)
	})
	slices.SortFunc(out, func(a, b PartitionProgress) int { return int(a.Partition - b.Partition) })
	return out, nil
}
