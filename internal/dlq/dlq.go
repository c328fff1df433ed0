// Package dlq handles the records that failed in the pipeline: the Processor stores what arrives on
// messages.dlq in the dead_letters collection, the Scheduler republishes transient failures to their
// original topic with capped exponential backoff and parks what is exhausted, and the Retrier is the one
// place that republishes an entry (the scheduler's and the operators' retries alike).
//
// # Entries and statuses
//
// One DLQ record is one entry, _id store.DeadLetterID(original topic, partition, offset, attempts): a
// redelivered DLQ record is a duplicate insert, never a second entry. A permanent failure is parked at
// once (an operator decides); a transient one waits as pending_retry until Policy.Delay(attempts) has
// passed; one whose attempts reached Policy.MaxAttempts is parked. A republished entry becomes retried;
// if the record fails again, the pipeline dead-letters it anew (a new offset, so a new entry) with its
// attempts counted on from the dlq.attempts header the republish carried, so it comes back and is parked
// once exhausted instead of looping. Purged entries keep their metadata but drop the payload, and are
// never retried.
//
// # Claims
//
// Republishing takes a claim on the entry first (store.DeadLetters.Claim: status retrying, an owner and a
// lease), so several pipeline replicas, and operators, never republish the same entry twice; a claim whose
// holder died expires with its lease and is taken over. Delivery is at least once: a holder that dies
// after producing but before recording it is redone by the next holder, and the pipeline drops the second
// copy (the message id is the document _id).
package dlq

import (
	"cmp"
	"math"
	"math/rand/v2"
	"os"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/trace"

	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/store"
)

// Error classes (the dlq.error_class header; envelope.Class).
const (
	ClassPermanent = string(envelope.Permanent)
	ClassTransient = string(envelope.Transient)
)

// Policy is the automatic retry policy of transient failures.
type Policy struct {
	// MaxAttempts: an entry whose attempts (dlq.attempts: every failed try of the record, earlier lives
	// included) reached it is parked instead of retried. Default 5.
	MaxAttempts int
	// InitialDelay is the wait before the retry of a first failure; each further attempt doubles it, up to
	// MaxDelay. Defaults 1s and 1m.
	InitialDelay time.Duration
	MaxDelay     time.Duration
	// Jitter in [0, 1]: the delay is drawn uniformly from [d·(1−Jitter), d], d the capped exponential
	// delay, so replicas and bursts spread out and MaxDelay is never exceeded. Default 0.5; negative means 0.
	Jitter float64
}

// Policy defaults.
const (
	DefaultMaxAttempts  = 5
	DefaultInitialDelay = time.Second
	DefaultMaxDelay     = time.Minute
	DefaultJitter       = 0.5
)

func (p Policy) withDefaults() Policy {
	if p.MaxAttempts <= 0 {
		p.MaxAttempts = DefaultMaxAttempts
	}
	if p.InitialDelay <= 0 {
		p.InitialDelay = DefaultInitialDelay
	}
	if p.MaxDelay <= 0 {
		p.MaxDelay = DefaultMaxDelay
	}
	p.MaxDelay = max(p.MaxDelay, p.InitialDelay)
	switch {
	case p.Jitter == 0:
		p.Jitter = DefaultJitter
	case p.Jitter < 0:
		p.Jitter = 0
	case p.Jitter > 1:
		p.Jitter = 1
	}
	return p
}

// Exhausted reports whether an entry with this many attempts is parked rather than retried.
func (p Policy) Exhausted(attempts int) bool { return attempts >= p.withDefaults().MaxAttempts }

// Delay returns the wait before retrying a record that failed attempts times: InitialDelay·2^(attempts−1)
// capped at MaxDelay, minus up to Jitter of it.
func (p Policy) Delay(attempts int) time.Duration {
	p = p.withDefaults()
	d := p.MaxDelay
	if n := max(attempts, 1) - 1; n < 62 {
		if f := float64(p.InitialDelay) * math.Pow(2, float64(n)); f < float64(p.MaxDelay) {
			d = time.Duration(f)
		}
	}
	return d - time.Duration(rand.Float64()*p.Jitter*float64(d))
}

// Config tunes the processor and the scheduler; zero values take the defaults.
type Config struct {
	// GroupID is the processor's consumer group (default "platform-dlq"); every replica uses the same.
	GroupID string
	// SessionTimeout of the processor's group membership (default 45s).
	SessionTimeout time.Duration
	// MaxPollRecords bounds one batch of the processor (default 500).
	MaxPollRecords int
	// DrainTimeout bounds how long the batch in hand may take to be stored once shutdown starts
	// (default 30s); a batch not stored by then stays uncommitted and is redelivered (no duplicates).
	DrainTimeout time.Duration

	Policy Policy

	// Interval between two scheduler passes (default 1s).
	Interval time.Duration
	// BatchSize: entries one scheduler pass claims and republishes together (default 100).
	BatchSize int
	// Lease of a claim (default 30s): a holder that died is taken over after it. Longer than a produce
	// may take (a produce is bounded by half of it).
	Lease time.Duration
	// StatsInterval between refreshes of the entries and oldest-pending-age gauges (default 15s).
	StatsInterval time.Duration
	// Owner names this replica in claims and logs (default host-pid-random).
	Owner string

	// TracerProvider traces the processor's storing of each dead letter that carries a trace context
	// (its original's traceparent), in that record's trace; nil or a no-op provider: no spans.
	TracerProvider trace.TracerProvider
}

// Config defaults.
const (
	DefaultGroupID        = kafka.GroupDLQ
	DefaultMaxPollRecords = 500
	DefaultDrainTimeout   = 30 * time.Second
	DefaultInterval       = time.Second
	DefaultBatchSize      = 100
	DefaultLease          = 30 * time.Second
	DefaultStatsInterval  = 15 * time.Second
)

func (c Config) withDefaults() Config {
	c.GroupID = cmp.Or(c.GroupID, DefaultGroupID)
	c.MaxPollRecords = positive(c.MaxPollRecords, DefaultMaxPollRecords)
	c.SessionTimeout = positive(c.SessionTimeout, 45*time.Second)
	c.DrainTimeout = positive(c.DrainTimeout, DefaultDrainTimeout)
	c.Policy = c.Policy.withDefaults()
	c.Interval = positive(c.Interval, DefaultInterval)
	c.BatchSize = positive(c.BatchSize, DefaultBatchSize)
	c.Lease = positive(c.Lease, DefaultLease)
	c.StatsInterval = positive(c.StatsInterval, DefaultStatsInterval)
	if c.Owner == "" {
		c.Owner = defaultOwner()
	}
	return c
}

func positive[T int | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

func defaultOwner() string {
	host, _ := os.Hostname()
	return cmp.Or(host, "host") + "-" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatUint(rand.Uint64()&0xffffff, 36)
}

// RetryRecord is the record a retry of d produces: to the original topic, with the original key, payload
// and headers (the signature among them, so it verifies again or fails again), the dlq.* headers replaced
// by dlq.attempts and dlq.first_failed_at (envelope.RetryHeaders).
func RetryRecord(d store.DeadLetter) *kgo.Record {
	return &kgo.Record{Topic: d.OriginalTopic, Key: d.Key, Value: d.Payload,
		Headers: envelope.RetryHeaders(kgoHeaders(d.Headers), d.Attempts, d.FirstFailureTime)}
}

func kgoHeaders(hs []store.Header) []kgo.RecordHeader {
	out := make([]kgo.RecordHeader, len(hs))
	for i, h := range hs {
		out[i] = kgo.RecordHeader{Key: h.Key, Value: h.Value}
	}
	return out
}
