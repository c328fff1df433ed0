package pipeline

import (
	"cmp"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo/writeconcern"
	"go.opentelemetry.io/otel/trace"

	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/store"
)

// Defaults of Config. internal/app sets the fields the environment configures (internal/config: the
// PIPELINE_* variables); the others keep these defaults.
const (
	// DefaultGroupID is the consumer group of the ingest pipeline. Every replica uses the same group.
	DefaultGroupID = kafka.GroupPipeline
	// DefaultMaxPollRecords bounds the records of one batch (taken across partitions). Together with the
	// fetch limits below it bounds memory whatever the backlog: a batch is processed, committed, and only
	// then is the next one polled. 4,000 records of at most ~17 KiB (the API's limits) are under 70 MiB
	// in the worst case and a few MiB in practice; fewer would pay the per-batch costs (a conversation
	// look-up per tenant and partition, a commit, the writer idling while the batch starts and ends) more
	// often: at 1,000, the ingest benchmark spent a tenth of the store's time on look-ups.
	DefaultMaxPollRecords = 4000
	// DefaultFetchMaxBytes bounds one fetch response (Kafka's fetch.max.bytes; franz-go defaults to 50 MiB).
	DefaultFetchMaxBytes = 8 << 20
	// DefaultFetchMaxPartitionBytes bounds one partition of a fetch response (max.partition.fetch.bytes).
	DefaultFetchMaxPartitionBytes = 1 << 20
	// DefaultMaxConcurrentFetches bounds the fetches in flight or buffered (franz-go: unbounded). Buffered
	// records are thus at most about MaxConcurrentFetches × FetchMaxBytes (16 MiB), plus the batch in hand.
	DefaultMaxConcurrentFetches = 2
	// DefaultRetryInitial and DefaultRetryMax shape the backoff of transient failures: exponential from
	// 100 ms, doubling, capped at 5 s, with ±50 % jitter.
	DefaultRetryInitial = 100 * time.Millisecond
	DefaultRetryMax     = 5 * time.Second
	// DefaultStageTimeout bounds one attempt of a stage over a batch, so a dependency that hangs instead of
	// failing becomes a transient failure (retried, logged, counted) rather than a silent stall.
	DefaultStageTimeout = 30 * time.Second
	// DefaultDrainTimeout bounds how long the batch in hand may take to finish once shutdown starts; the
	// service uses SHUTDOWN_TIMEOUT instead. A batch not finished by then is abandoned uncommitted (its
	// records are redelivered, and stored at most once thanks to the message id being the _id).
	DefaultDrainTimeout = 30 * time.Second
)

// Config tunes the pipeline; zero values take the defaults above.
type Config struct {
	GroupID        string
	MaxPollRecords int
	// SessionTimeout of the group membership (franz-go's default, 45s, when zero).
	SessionTimeout         time.Duration
	FetchMaxBytes          int32
	FetchMaxPartitionBytes int32
	MaxConcurrentFetches   int

	// BulkMaxDocs and BulkMaxDelay are the bulk writer's count and time triggers (store defaults: 500
	// documents, 2 ms).
	BulkMaxDocs  int
	BulkMaxDelay time.Duration
	// BulkMaxInFlight is how many InsertMany the bulk writer runs at once (store default: 2).
	BulkMaxInFlight int
	// WriteConcern of the message inserts: majority unless set (FerretDB accepts and ignores it).
	WriteConcern *writeconcern.WriteConcern

	RetryInitial time.Duration
	RetryMax     time.Duration
	// TransientRetryTimeout, when positive, dead-letters (class transient) a record still failing
	// transiently after that long, as Kafka Connect's errors.retry.timeout does. Zero (the default) retries
	// until the dependency is back: an outage pauses consumption instead of flooding the DLQ.
	TransientRetryTimeout time.Duration
	StageTimeout          time.Duration
	DrainTimeout          time.Duration
	// TracerProvider, when it records (tracing.Enabled), traces every stage: see tracing.go. Nil: none.
	TracerProvider trace.TracerProvider

	// stages, when set, edits the stage list (tests insert fault-injecting stages with it).
	stages func([]Stage) []Stage
}

func (c Config) withDefaults() Config {
	setDefault(&c.GroupID, DefaultGroupID)
	setDefault(&c.SessionTimeout, 45*time.Second)
	setDefault(&c.MaxPollRecords, DefaultMaxPollRecords)
	setDefault(&c.FetchMaxBytes, DefaultFetchMaxBytes)
	setDefault(&c.FetchMaxPartitionBytes, DefaultFetchMaxPartitionBytes)
	setDefault(&c.MaxConcurrentFetches, DefaultMaxConcurrentFetches)
	setDefault(&c.BulkMaxDocs, store.DefaultBulkMaxDocs)
	setDefault(&c.BulkMaxDelay, store.DefaultBulkMaxDelay)
	setDefault(&c.BulkMaxInFlight, store.DefaultBulkMaxInFlight)
	setDefault(&c.RetryInitial, DefaultRetryInitial)
	setDefault(&c.RetryMax, DefaultRetryMax)
	setDefault(&c.StageTimeout, DefaultStageTimeout)
	setDefault(&c.DrainTimeout, DefaultDrainTimeout)
	if c.WriteConcern == nil {
		c.WriteConcern = writeconcern.Majority()
	}
	return c
}

// setDefault replaces a zero (or negative) setting by its default.
func setDefault[T cmp.Ordered](v *T, def T) {
	var zero T
	if *v <= zero {
		*v = def
	}
}
