package dlq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"golang.org/x/sync/errgroup"

	"github.com/msgplatform/platform/internal/config"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/store"
)

// connectTimeout bounds the wait for MongoDB at start-up.
const connectTimeout = 30 * time.Second

// Service is the DLQ processor and the retry scheduler of one pipeline process, over connections of their
// own (MongoDB and a Kafka producer). services/pipeline runs it beside the ingest pipeline; the devstack
// runs the same wiring.
type Service struct {
	mongo     *mongo.Client
	producer  *kgo.Client
	processor *Processor
	scheduler *Scheduler
}

// Open connects to MongoDB and Kafka, ensures the dead-letter indexes and builds the processor and the
// scheduler; every metric goes to reg.
func Open(ctx context.Context, cfg config.Config, dcfg Config, reg prometheus.Registerer, logger *slog.Logger) (*Service, error) {
	if len(cfg.KafkaBrokers) == 0 || cfg.MongoURI == "" {
		return nil, errors.New("dlq: KAFKA_BROKERS and MONGO_URI must be set")
	}
	if dcfg.DrainTimeout <= 0 {
		dcfg.DrainTimeout = cfg.ShutdownTimeout
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m, err := NewMetrics(reg)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	mc, err := store.Connect(cctx, cfg.MongoURI)
	if err != nil {
		return nil, fmt.Errorf("dlq: %w", err)
	}
	s := &Service{mongo: mc}
	st := store.NewDeadLetters(mc.Database(cfg.MongoDatabase))
	if err := st.EnsureIndexes(cctx); err != nil {
		_ = s.Close(context.Background())
		return nil, fmt.Errorf("dlq: mongodb indexes: %w", err)
	}
	if s.producer, err = kafka.NewProducer(cfg.KafkaBrokers, cfg.ProduceTimeout); err != nil {
		_ = s.Close(context.Background())
		return nil, fmt.Errorf("dlq: %w", err)
	}
	if s.processor, err = NewProcessor(dcfg, cfg.KafkaBrokers, st, cfg.KafkaSigningKeys, m, logger); err != nil {
		_ = s.Close(context.Background())
		return nil, fmt.Errorf("dlq: %w", err)
	}
	if s.scheduler, err = NewScheduler(dcfg, st, s.producer, m, logger); err != nil {
		_ = s.Close(context.Background())
		return nil, fmt.Errorf("dlq: %w", err)
	}
	return s, nil
}

// Run runs the processor and the scheduler until ctx ends (or the processor fails) and returns once both
// stopped; the processor's batch in hand is stored and committed first.
func (s *Service) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.processor.Run(gctx) })
	g.Go(func() error { return s.scheduler.Run(gctx) })
	return g.Wait()
}

// Close leaves the consumer group, flushes the producer and disconnects, within ctx. Call it after Run
// returned.
func (s *Service) Close(ctx context.Context) error {
	var errs []error
	if s.processor != nil {
		s.processor.Close()
	}
	if s.producer != nil {
		if err := s.producer.Flush(ctx); err != nil {
			errs = append(errs, fmt.Errorf("flush dlq producer: %w", err))
		}
		s.producer.Close()
	}
	if err := s.mongo.Disconnect(ctx); err != nil {
		errs = append(errs, fmt.Errorf("disconnect dlq mongodb: %w", err))
	}
	return errors.Join(errs...)
}

// Serve is Open, Run until ctx ends, and Close (bounded by SHUTDOWN_TIMEOUT), for the devstack.
func Serve(ctx context.Context, cfg config.Config, dcfg Config, reg prometheus.Registerer, logger *slog.Logger) error {
	s, err := Open(ctx, cfg, dcfg, reg, logger)
	if err != nil {
		return err
	}
	runErr := s.Run(ctx)
	closeCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	return errors.Join(runErr, s.Close(closeCtx))
}
