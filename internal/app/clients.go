// Package clients opens the connections a service needs (MongoDB, Redis, Kafka), describes them as
// health dependencies, and closes them in order.
package clients

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/msgplatform/platform/internal/config"
	"github.com/msgplatform/platform/internal/health"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/store"
)

// Dependency names, as reported by /v1/health and /readyz.
const (
	MongoDB       = "mongodb"
	Redis         = "redis"
	Kafka         = "kafka"
	ChangeStreams = "change_streams"
	// MongoDBCircuit is the store's circuit breaker: not required (an open circuit is MongoDB's outage,
	// which the mongodb check already reports), DOWN while open.
	MongoDBCircuit = "mongodb_circuit"
	// Pipeline is the ingest pipeline's progress on messages.inbound, read from the group's commits: not
	// required (messages accepted meanwhile wait safely in Kafka), DEGRADED while a partition stalls.
	Pipeline = "pipeline"
)

// Clients are the open connections of one service.
type Clients struct {
	Mongo *mongo.Client
	DB    *mongo.Database
	Redis *redis.Client
	Kafka *kgo.Client
	// Breaker guards MongoDB calls of the store (store.Guard); its state shows in health and metrics.
	Breaker *store.Breaker

	mongoMetrics *store.DriverMetrics
}

// Open connects to MongoDB (waiting up to connectTimeout for it), Redis and Kafka. Redis and Kafka
// clients connect lazily; their state shows in health.
func Open(ctx context.Context, cfg config.Config, connectTimeout time.Duration, logger *slog.Logger) (*Clients, error) {
	if err := cfg.RequireExternal(); err != nil {
		return nil, err
	}
	redisOpts, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		return nil, fmt.Errorf("REDIS_URL: %w", err)
	}
	kc, err := kafka.NewProducer(cfg.KafkaBrokers, cfg.ProduceTimeout)
	if err != nil {
		return nil, err
	}
	breaker, err := store.NewBreaker(store.BreakerConfig{Name: MongoDB, FailureRatio: cfg.MongoBreakerRatio, CoolDown: cfg.MongoBreakerCoolDown}, nil)
	if err != nil {
		kc.Close()
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	mongoMetrics := store.NewDriverMetrics()
	mc, err := store.ConnectMonitored(cctx, cfg.MongoURI, mongoMetrics)
	if err != nil {
		kc.Close()
		return nil, err
	}
	logger.Info("connected", "mongodb", store.RedactURI(cfg.MongoURI), "database", cfg.MongoDatabase,
		"kafka", cfg.KafkaBrokers, "redis", redisOpts.Addr)
	return &Clients{Breaker: breaker, mongoMetrics: mongoMetrics, Mongo: mc, DB: mc.Database(cfg.MongoDatabase), Redis: redis.NewClient(redisOpts), Kafka: kc}, nil
}

// Collectors returns the clients' metrics (MongoDB driver pool and server events, the store's circuit
// breaker), to register once with the service's registry.
func (c *Clients) Collectors() []prometheus.Collector {
	var cs []prometheus.Collector
	if c.mongoMetrics != nil {
		cs = append(cs, c.mongoMetrics)
	}
	if c.Breaker != nil {
		cs = append(cs, c.Breaker)
	}
	return cs
}

// Guard returns the retry policy and circuit breaker the store should run its MongoDB calls through.
func (c *Clients) Guard() *store.Guard { return &store.Guard{Breaker: c.Breaker} }

// Dependencies describes the connections as health checks. MongoDB, Redis and Kafka are required;
// change streams are optional (reported "unsupported" on FerretDB, and the server stays ready), and so is
// the circuit breaker (mongodb_circuit: down while open, up when closed or half-open).
func (c *Clients) Dependencies() []health.Dependency {
	deps := []health.Dependency{
		{Name: MongoDB, Required: true, Check: func(ctx context.Context) error { return store.Ping(ctx, c.Mongo) }},
		{Name: Redis, Required: true, Check: func(ctx context.Context) error {
			if err := c.Redis.Ping(ctx).Err(); err != nil {
				return fmt.Errorf("ping redis: %w", err)
			}
			return nil
		}},
		{Name: Kafka, Required: true, Check: func(ctx context.Context) error { return kafka.Ping(ctx, c.Kafka) }},
		{Name: ChangeStreams, Check: func(ctx context.Context) error {
			err := store.CheckChangeStreams(ctx, c.DB)
			if errors.Is(err, store.ErrNoChangeStreams) {
				return fmt.Errorf("%w: %w", health.ErrUnsupported, err)
			}
			return err
		}},
	}
	if c.Breaker != nil {
		deps = append(deps, health.Dependency{Name: MongoDBCircuit, Check: c.Breaker.Check})
	}
	return deps
}

// PipelineDependency reports the ingest pipeline's progress (kafka.StallMonitor on its group): DEGRADED,
// naming the partitions, when one with records waiting saw no commit for stallAfter; DOWN when Kafka
// cannot tell.
func (c *Clients) PipelineDependency(stallAfter time.Duration) health.Dependency {
	mon := kafka.NewStallMonitor(c.Kafka, kafka.GroupPipeline, kafka.TopicInbound, stallAfter)
	return health.Dependency{Name: Pipeline, Check: func(ctx context.Context) error {
		err := mon.Check(ctx)
		if errors.Is(err, kafka.ErrStalled) {
			return fmt.Errorf("%w: %w", health.ErrDegraded, err)
		}
		return err
	}}
}

// Close flushes the Kafka producer (bounded by ctx) and closes every client. Flushing first means a
// record accepted before shutdown still reaches Kafka.
func (c *Clients) Close(ctx context.Context) error {
	var errs []error
	if err := c.Kafka.Flush(ctx); err != nil {
		errs = append(errs, fmt.Errorf("flush kafka producer: %w", err))
	}
	c.Kafka.Close()
	if err := c.Redis.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close redis: %w", err))
	}
	if err := c.Mongo.Disconnect(ctx); err != nil {
		errs = append(errs, fmt.Errorf("disconnect mongodb: %w", err))
	}
	return errors.Join(errs...)
}
