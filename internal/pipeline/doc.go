// Package pipeline is the ingest pipeline: a franz-go consumer group on messages.inbound that runs each
// record through a list of stages (authenticate, deserialize, validate, tenant, authorize, transform,
// persist, notify, metrics) into MongoDB, at least once and without duplicates.
//
// # Consuming
//
// One poll loop takes a batch of at most MaxPollRecords records across the member's partitions, runs
// each partition's records through the stages (partitions concurrently, each in offset order), produces
// the dead letters of the batch, commits the last offset of every partition of the batch, and only then
// polls again. Offsets are committed manually (auto-commit off), never past a record that is not stored
// or dead-lettered.
//
// Rebalances are blocked while a batch is in hand (kgo.BlockRebalanceOnPoll) and allowed again after its
// commit (AllowRebalance): a partition is never revoked mid-batch, so the loop cannot commit for a
// partition it no longer owns, and nothing needs doing on revocation. This costs rebalance latency (a
// rebalance waits for the batch in hand, which the poll size bounds), which is why the alternative,
// committing from OnPartitionsRevoked while the batch may still be running, was not chosen: it needs a
// second synchronisation between the callback and the loop, for no gain at these batch sizes. If a
// rebalance is requested while a batch is stuck retrying an outage for longer than the group's rebalance
// timeout, the member is dropped from the group; its commit then fails, and the new owner starts from the
// last committed offset (redelivery, no duplicate).
//
// Memory is bounded whatever the backlog: at most MaxPollRecords records are in hand, and what franz-go
// buffers ahead is bounded by MaxConcurrentFetches × FetchMaxBytes.
//
// # Reads per batch
//
// The tenant and authorize stages read the store through the batch's Reads: the conversations of the
// whole polled batch (its record keys) with one query, and on the membership cache's first miss for a
// tenant, that tenant's memberships of those conversations with one more. A read per partition,
// conversation or sender would cost a round trip each, and on FerretDB a collection scan each (reads.go).
//
// # Where things are
//
// New (pipeline.go) builds the stages from Deps, in order; each stage is a file stage_<name>.go; the
// runner (runner.go) retries transient failures; deadletter.go produces the dead letters; progress.go
// exports lag, age and retries. The process wiring (clients, the Authorizer, the bulk writer) is
// internal/app's.
//
// # Order
//
// A conversation's records share a partition (the record key is the conversation id), and a partition's
// records go through each stage in offset order, the next batch only after this one is committed (the
// bulk writer runs two InsertMany at once, but a partition has one Write in flight, and the commands of
// one Write run one after the other). Message
// ids are ULIDs assigned at send time, so listing by id is send order whatever happens here. Storage and
// events follow send order too, except when a transient error hits only some records of one stage call
// (say, one write error among a bulk insert's documents): those are retried after the others went on.
// Consumers that need strict order sort by message id (the persisted event's id is the message id).
//
// # Errors
//
// A stage marks a record failed with a class. Permanent failures (undecodable, invalid, unknown or
// archived conversation, unauthorized sender, a document the store refuses) send that record to
// messages.dlq with the dlq.* headers, and the others go on. Transient failures (store, Redis or Kafka
// unavailable, timeouts) retry the stage for the failed records with capped exponential backoff and
// jitter; no further poll happens meanwhile, so consumption pauses (franz-go keeps heartbeating the group
// in the background). A batch whose dead letters cannot be produced is not committed.
//
// # Shutdown
//
// When Run's context ends, polling stops; the batch in hand finishes (within Config.DrainTimeout),
// its dead letters are produced and its offsets committed. A batch that cannot finish by then is
// abandoned uncommitted: its records are redelivered to the next owner and stored at most once, the
// message id being the document _id.
package pipeline
