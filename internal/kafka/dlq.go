package kafka

// Headers of a DLQ record (ARCHITECTURE.md), added beside the original record's own headers. The pipeline
// writes them; the DLQ processor reads them; a republished record keeps dlq.attempts and dlq.first_failed_at.
const (
	HeaderDLQError             = "dlq.error"
	HeaderDLQErrorClass        = "dlq.error_class"
	HeaderDLQStage             = "dlq.stage"
	HeaderDLQAttempts          = "dlq.attempts"
	HeaderDLQOriginalTopic     = "dlq.original_topic"
	HeaderDLQOriginalPartition = "dlq.original_partition"
	HeaderDLQOriginalOffset    = "dlq.original_offset"
	HeaderDLQFirstFailedAt     = "dlq.first_failed_at"
	HeaderDLQTenantID          = "dlq.tenant_id"

	// DLQHeaderPrefix marks the headers of a dead-lettering: a new dead-lettering replaces them.
	DLQHeaderPrefix = "dlq."
	// DLQTimeLayout is dlq.first_failed_at's format: RFC 3339 with milliseconds, in UTC.
	DLQTimeLayout = "2006-01-02T15:04:05.000Z07:00"
)
