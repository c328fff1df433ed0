// Package kafka builds the franz-go clients the services use and names the platform's topics.
package kafka

// Topic names are part of the contract (ARCHITECTURE.md): other services and operators' tools use them.
const (
	// TopicInbound carries platform.v1.InboundMessage records from SendMessage, keyed by conversation id.
	TopicInbound = "messages.inbound"
	// TopicEvents carries platform.v1.Event records (persisted, updated, deleted, membership changes).
	TopicEvents = "messages.events"
	// TopicDLQ carries records that failed in the pipeline, with dlq.* headers.
	TopicDLQ = "messages.dlq"
)

// Topics lists every topic the platform uses, for clusters that must be seeded (devstack, tests).
var Topics = []string{TopicInbound, TopicEvents, TopicDLQ}

// Consumer groups. Every replica of a role uses the same group.
const (
	// GroupPipeline is the ingest pipeline's group on TopicInbound.
	GroupPipeline = "platform-pipeline"
	// GroupDLQ is the dead-letter processor's group on TopicDLQ.
	GroupDLQ = "platform-dlq"
)
