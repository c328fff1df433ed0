// Package envelope owns the platform's Kafka record formats, in one place: the inbound message
// (messages.inbound), the event (messages.events) and the dead letter (messages.dlq). It encodes and
// decodes them, validates an inbound message (the API and the pipeline call the same Validate, so the API
// can never accept what the pipeline refuses), bounds ids, bodies and records, names the content types,
// the error classes and the pipeline's stage names, and signs and verifies records.
//
// # Trust
//
// Anyone who can produce to a topic could otherwise write a message in any user's name, claim any role,
// or feed the stream subscribers events nobody caused. So every record the platform produces to
// messages.inbound or messages.events carries an HMAC-SHA256 signature (headers envelope.kid and
// envelope.sig) over the exact value bytes and the fields that route and decode it (topic, key,
// content-type). Keys come from KAFKA_SIGNING_KEYS: the first key signs, every listed key verifies, so a
// key is rotated by adding the new one second, then first, then removing the old one. The pipeline
// verifies before any other stage reads the record; an unsigned, tampered or unknown-key record is
// dead-lettered at stage authenticate as permanent. The stream hub drops unverified events.
//
// Dead-letter records are not signed: they carry the original record's bytes and signature headers
// unchanged, so a retried dead letter verifies again or fails again, and retries go only to the topics
// in RetryTargets.
package envelope
