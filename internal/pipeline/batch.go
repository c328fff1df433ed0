package pipeline

import (
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/store"
)

// Class says what to do with a failed record (envelope.Class: the dlq.error_class header).
type Class = envelope.Class

// Error classes.
const (
	Permanent = envelope.Permanent
	Transient = envelope.Transient
)

// Batch is one partition's records of one poll on their way through the stages: what Stage.Process gets.
type Batch struct {
	Partition int32
	// Items are the records still alive, in offset order.
	Items []*Item
	// Reads are the store reads the poll's partitions share (nil when there are none, in unit tests).
	Reads *Reads
}

// Item is one Kafka record on its way through the stages. Stages read what earlier ones set and mark
// failures with Fail; the runner skips failed items in later stages.
type Item struct {
	Record *kgo.Record
	// Inbound is the decoded envelope (set by deserialize).
	Inbound *platformv1.InboundMessage
	// Message is the message to store (built by transform), then as stored (set by persist).
	Message store.Message
	// Duplicate: persist found the message already stored (a redelivery).
	Duplicate bool
	// Root is, for a reply, its thread's root as persist left it after recounting its replies (nil when
	// the root could not be read back); notify publishes it as EVENT_TYPE_MESSAGE_UPDATED.
	Root *store.Message

	err   error
	class Class
	stage string

	attempts      int       // tries of the failing stage, counted from the record's dlq.attempts header
	firstFailedAt time.Time // first failure of this record (dlq.first_failed_at of a retried record)
	deadLettered  bool      // its DLQ record was produced
}

// Fail marks the item failed in the current stage. A transient failure is retried; a permanent one sends
// the record to the DLQ.
func (it *Item) Fail(class Class, err error) {
	it.err, it.class = err, class
}

// Failed reports whether the item failed (and is skipped by the stages after the failing one).
func (it *Item) Failed() bool { return it.err != nil }

// Err returns the failure, nil if none.
func (it *Item) Err() error { return it.err }

// Class returns the failure's class, "" if none.
func (it *Item) Class() Class { return it.class }

// Stage returns the name of the stage the item failed in, "" if none.
func (it *Item) Stage() string { return it.stage }

// TenantID returns the envelope's tenant, "" before deserialize or if undecodable.
func (it *Item) TenantID() string { return it.Inbound.GetTenantId() }
