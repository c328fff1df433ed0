package kafka

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// NewProducer returns a client for producing. Acks come from all in-sync replicas, so a SendMessage
// answered OK survives a broker failure. A record not acknowledged within deliveryTimeout fails, so callers
// answer UNAVAILABLE instead of waiting out an outage: franz-go cannot time out a record of an idempotent
// producer once a request carrying it was sent, so idempotent writes are off. That is safe here because
// every record carries its own message id and the store ignores a second copy; one request in flight per
// broker keeps a partition's records in order across retries.
func NewProducer(brokers []string, deliveryTimeout time.Duration, extra ...kgo.Opt) (*kgo.Client, error) {
	opts := append([]kgo.Opt{
		kgo.SeedBrokers(brokers...),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.DisableIdempotentWrite(),
		kgo.MaxProduceRequestsInflightPerBroker(1),
		// Every producer here waits for the ack (SendMessage answers after it, the pipeline commits after
		// it), so franz-go's default 10 ms linger was pure latency; records still batch while a request
		// is in flight.
		kgo.ProducerLinger(0),
		kgo.RecordDeliveryTimeout(deliveryTimeout),
		kgo.ClientID("platform"),
	}, extra...)
	client, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka client for %v: %w", brokers, err)
	}
	return client, nil
}

// Ping asks a broker for metadata: the health check of the Kafka connection.
func Ping(ctx context.Context, client *kgo.Client) error {
	if err := client.Ping(ctx); err != nil {
		return fmt.Errorf("kafka metadata: %w", err)
	}
	return nil
}

// permanentProduceErrors are the produce failures that repeating the same record cannot cure: it is too
// large or malformed for the broker (or for the client's own batch limit).
var permanentProduceErrors = []error{
	kerr.MessageTooLarge, kerr.RecordListTooLarge, kerr.InvalidRecord, kerr.CorruptMessage,
	kerr.InvalidTimestamp, kerr.UnsupportedCompressionType, kerr.UnsupportedForMessageFormat,
}

// IsPermanentProduceError reports whether a produce failed for a reason the record itself carries, so
// retrying it is pointless (everything else, brokers down or timeouts, is worth retrying).
func IsPermanentProduceError(err error) bool {
	for _, e := range permanentProduceErrors {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
