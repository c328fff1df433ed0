package pipeline

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/msgplatform/platform/internal/observability"
)

// lagRefreshInterval is how often the partitions' end offsets (and the group's commits) are read from the
// brokers, so lag keeps growing while the loop is stuck on a batch and polls nothing.
const lagRefreshInterval = 5 * time.Second

// progress is what this member knows of each partition assigned to it: the group's committed offset,
// the partition's end offset, and the batch in hand (its oldest record and how many times a stage was
// retried for it). It is exported at scrape time, so ages are always current:
//
//   - consumer_lag_records: end offset − committed offset, the records not yet stored or dead-lettered
//     (measured from the commit, not from what was fetched: a stuck batch shows as lag);
//   - oldest_uncommitted_age_seconds: age of the oldest record of the batch in hand (0 when none);
//   - batch_retries: stage retries of the batch in hand (0 when none).
type progress struct {
	mu    sync.Mutex
	parts map[int32]*partProgress
	now   func() time.Time

	lagDesc, ageDesc, retriesDesc *prometheus.Desc
}

type partProgress struct {
	committed int64 // next offset the group will consume; -1 unknown
	end       int64 // end offset (high watermark); -1 unknown
	oldest    time.Time
	retries   int
}

func newProgress(reg prometheus.Registerer) (*progress, error) {
	name := func(n string) string { return prometheus.BuildFQName(observability.Namespace, "pipeline", n) }
	p := &progress{
		parts: map[int32]*partProgress{}, now: time.Now,
		lagDesc: prometheus.NewDesc(name("consumer_lag_records"),
			"Records of messages.inbound not yet stored or dead-lettered, per partition assigned to this member: end offset minus the group's committed offset.",
			[]string{"partition"}, nil),
		ageDesc: prometheus.NewDesc(name("oldest_uncommitted_age_seconds"),
			"Age of the oldest record of the batch in hand, per partition (0 when none is in hand): grows while a batch is stuck.",
			[]string{"partition"}, nil),
		retriesDesc: prometheus.NewDesc(name("batch_retries"),
			"Stage retries (transient failures) of the batch in hand, per partition (0 when none is in hand).",
			[]string{"partition"}, nil),
	}
	if err := reg.Register(p); err != nil {
		return nil, err
	}
	return p, nil
}

// Describe implements prometheus.Collector.
func (p *progress) Describe(ch chan<- *prometheus.Desc) {
	ch <- p.lagDesc
	ch <- p.ageDesc
	ch <- p.retriesDesc
}

// Collect implements prometheus.Collector.
func (p *progress) Collect(ch chan<- prometheus.Metric) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	for part, s := range p.parts {
		label := strconv.Itoa(int(part))
		if s.committed >= 0 && s.end >= 0 {
			ch <- prometheus.MustNewConstMetric(p.lagDesc, prometheus.GaugeValue, float64(max(s.end-s.committed, 0)), label)
		}
		age := 0.0
		if !s.oldest.IsZero() {
			age = max(now.Sub(s.oldest).Seconds(), 0)
		}
		ch <- prometheus.MustNewConstMetric(p.ageDesc, prometheus.GaugeValue, age, label)
		ch <- prometheus.MustNewConstMetric(p.retriesDesc, prometheus.GaugeValue, float64(s.retries), label)
	}
}

func (p *progress) part(partition int32) *partProgress {
	s, ok := p.parts[partition]
	if !ok {
		s = &partProgress{committed: -1, end: -1}
		p.parts[partition] = s
	}
	return s
}

// fetched records a batch of the partition taken in hand: its first record (offset and produce time) and
// the high watermark the fetch reported. The group resumed at the first offset when nothing better is
// known.
func (p *progress) fetched(partition int32, firstOffset int64, firstTime time.Time, hwm int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.part(partition)
	if s.committed < 0 {
		s.committed = firstOffset
	}
	s.end = max(s.end, hwm)
	if s.oldest.IsZero() {
		s.oldest = firstTime
	}
}

// retried counts a stage retry of the partition's batch in hand.
func (p *progress) retried(partition int32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.part(partition).retries++
}

// committed records the partition's commit up to next (exclusive): nothing of it is in hand any more.
func (p *progress) committed(partition int32, next int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.part(partition)
	s.committed = max(s.committed, next)
	s.oldest, s.retries = time.Time{}, 0
}

// abandoned forgets the partition's batch in hand (it was not committed and will be redelivered).
func (p *progress) abandoned(partition int32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.part(partition)
	s.oldest, s.retries = time.Time{}, 0
}

// assigned starts tracking partitions; revoked stops (their series disappear from this member).
func (p *progress) assigned(parts []int32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, part := range parts {
		p.part(part)
	}
}

func (p *progress) revoked(parts []int32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, part := range parts {
		delete(p.parts, part)
	}
}

// refresh reads the end offsets of topic and the group's commits, for the partitions tracked; where the
// group never committed, it resumes at the log start.
func (p *progress) refresh(ctx context.Context, admin *kadm.Client, group, topic string) error {
	ends, err := admin.ListEndOffsets(ctx, topic)
	if err != nil {
		return err
	}
	starts, err := admin.ListStartOffsets(ctx, topic)
	if err != nil {
		return err
	}
	commits, err := admin.FetchOffsets(ctx, group)
	if err != nil {
		commits = nil // lag from the end offsets and our own commits only
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for part, s := range p.parts {
		if o, ok := ends.Lookup(topic, part); ok && o.Err == nil {
			s.end = max(s.end, o.Offset)
		}
		if c, ok := commits.Lookup(topic, part); ok && c.Err == nil && c.At >= 0 {
			s.committed = max(s.committed, c.At)
		} else if o, ok := starts.Lookup(topic, part); ok && o.Err == nil && s.committed < 0 {
			s.committed = o.Offset
		}
	}
	return nil
}

// runRefresh refreshes every lagRefreshInterval until ctx ends.
func (p *progress) runRefresh(ctx context.Context, admin *kadm.Client, group, topic string, logger *slog.Logger) {
	t := time.NewTicker(lagRefreshInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := p.refresh(ctx, admin, group, topic); err != nil && ctx.Err() == nil {
			logger.DebugContext(ctx, "refreshing consumer lag", "error", err)
		}
	}
}
