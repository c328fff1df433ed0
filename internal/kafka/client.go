package kafka

import (
	"context"
	"fmt"

	"github.com/twmb/franz-go/pkg/kgo"
)

// NewProducer returns a client for producing: idempotent, acks from all in-sync replicas (franz-go's
// defaults, kept on purpose: a SendMessage answered OK must survive a broker failure).
func NewProducer(brokers []string, extra ...kgo.Opt) (*kgo.Client, error) {
	opts := append([]kgo.Opt{
		kgo.SeedBrokers(brokers...),
		kgo.RequiredAcks(kgo.AllISRAcks()),
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
