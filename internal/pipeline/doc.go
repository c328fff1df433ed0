// Package pipeline is the ingest pipeline: a franz-go consumer group on messages.inbound that runs each
// record through a list of stages (authenticate, deserialize, validate, tenant, authorize, transform,
// persist, notify, metrics) into MongoDB, at least once and without duplicates.
//
// # Consuming: a pipelined loop
//
// Each poll takes at most MaxPollRecords records across the member's partitions and goes through three
// phases, each a goroutine handling one poll at a time, in poll order:
//
//  1. prepare: the stages up to persist (authenticate … transform), partitions concurrently, each in offset
//     order; the poll loop itself runs it right after polling;
//  2. persist: the bulk writes of the poll's messages (its partitions' Writes merge into shared InsertMany);
//  3. finish: notify (the events, produced together and awaited before the commit) and metrics, then the
//     dead letters, then the commit of every partition's last offset.
//
// So while poll N is written, poll N+1 is decoded, validated, authorized and transformed, and poll N−1's
// events and commit complete: the store is not left idle between writes. The hand-offs are unbuffered
// (one slot between persist and finish), which bounds the polls in hand to four, and memory to four
// polls plus what franz-go buffers ahead (MaxConcurrentFetches × FetchMaxBytes), whatever the backlog.
//
// Offsets are committed manually (auto-commit off), per partition, in poll order (the phases keep it),
// and only up to the last record of a poll all of whose records are stored or dead-lettered; once a
// partition's batch is abandoned (shutdown), nothing later of that partition is committed.
//
// Rebalances: OnPartitionsRevoked waits for the polls in hand that hold records of the revoked partitions
// to finish (their finish phase commits them while the partitions are still ours), bounded by
// DrainTimeout; what is still running after that is not committed, and is redelivered to the next owner
// (stored once). Lost partitions are given up at once, uncommitted. A record polled for a partition
// already given up is processed but not committed.
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
// records go through each stage in offset order: each phase takes the polls in order, so a partition's
// batch is written only after the previous batch's write returned, and its events are produced after the
// previous batch's (the bulk writer runs two InsertMany at once, but a partition has one Write in flight,
// and the commands of one Write run one after the other). Message
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
// When Run's context ends, polling stops; the polls in hand finish (each within Config.DrainTimeout),
// their dead letters are produced and their offsets committed. A batch that cannot finish by then is
// abandoned uncommitted: its records are redelivered to the next owner and stored at most once, the
// message id being the document _id.
package pipeline
