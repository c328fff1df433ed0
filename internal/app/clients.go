package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/msgplatform/platform/internal/config"
	"github.com/msgplatform/platform/internal/health"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/tlsconfig"
	"github.com/msgplatform/platform/internal/tracing"
)

// connectTimeout bounds the wait for MongoDB at start-up.
const connectTimeout = 30 * time.Second

// clients are the connections of one process, each opened once: one MongoDB client (one pool per
// server), one Redis client, one Kafka producer per role (so the pipeline's bursts of events never queue
// in front of SendMessage's records when both roles share a process), and the connection options every
// Kafka client of the process starts from.
type clients struct {
	cfg   config.Config
	mongo *mongo.Client
	db    *mongo.Database
	redis *redis.Client
	// admin answers the health checks (metadata) and the stall monitor (offsets); it produces nothing.
	admin     *kgo.Client
	producers []*kgo.Client
	// kafka are the connection options of the process's Kafka clients (seed brokers; TLS and SASL when
	// configured). Each consumer group's client adds its own options to them.
	kafka []kgo.Opt
	// breaker guards the store's MongoDB calls; its state shows in health and metrics.
	breaker      *store.Breaker
	mongoMetrics *store.DriverMetrics
	// traced: the producers write their records' trace context into the headers (tracing.ProduceHook).
	traced bool
}

// openClients connects to MongoDB (waiting up to connectTimeout), Redis and Kafka (both lazily: their
// state shows in health).
func openClients(ctx context.Context, cfg config.Config, logger *slog.Logger, tlsr *tlsconfig.Reloader) (*clients, error) {
	if err := cfg.RequireExternal(); err != nil {
		return nil, err
	}
	redisOpts, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		return nil, fmt.Errorf("REDIS_URL: %w", err)
	}
	conn, err := kafkaConn(cfg, tlsr)
	if err != nil {
		return nil, err
	}
	admin, err := kgo.NewClient(append(conn, kgo.ClientID("platform-admin"))...)
	if err != nil {
		return nil, fmt.Errorf("kafka client for %v: %w", cfg.KafkaBrokers, err)
	}
	breaker, err := store.NewBreaker(store.BreakerConfig{Name: health.MongoDB, FailureRatio: cfg.MongoBreakerRatio, CoolDown: cfg.MongoBreakerCoolDown}, nil)
	if err != nil {
		admin.Close()
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	mongoMetrics := store.NewDriverMetrics()
	mc, err := store.ConnectMonitored(cctx, cfg.MongoURI, mongoMetrics)
	if err != nil {
		admin.Close()
		return nil, err
	}
	logger.Info("connected", "mongodb", store.RedactURI(cfg.MongoURI), "database", cfg.MongoDatabase,
		"kafka", cfg.KafkaBrokers, "redis", redisOpts.Addr)
	return &clients{cfg: cfg, mongo: mc, db: mc.Database(cfg.MongoDatabase), redis: redis.NewClient(redisOpts), admin: admin,
		kafka: conn, breaker: breaker, mongoMetrics: mongoMetrics}, nil
}

// producer opens the Kafka producer of one role (flushed and closed by close).
func (c *clients) producer(role string) (*kgo.Client, error) {
	opts := append(slices.Clone(c.kafka), kgo.ClientID("platform-"+role))
	if c.traced {
		opts = append(opts, kgo.WithHooks(tracing.ProduceHook{}))
	}
	p, err := kafka.NewProducer(c.cfg.KafkaBrokers, c.cfg.ProduceTimeout, opts...)
	if err != nil {
		return nil, err
	}
	c.producers = append(c.producers, p)
	return p, nil
}

// collectors returns the clients' metrics (MongoDB driver pool and server events, the circuit breaker).
func (c *clients) collectors() []prometheus.Collector {
	return []prometheus.Collector{c.mongoMetrics, c.breaker}
}

// guard is the retry policy and circuit breaker every repository of the process runs its calls through.
func (c *clients) guard() *store.Guard { return &store.Guard{Breaker: c.breaker} }

// dependencies describes the connections as health checks. MongoDB, Redis and Kafka are required;
// change streams are optional (reported "unsupported" on FerretDB, and the server stays ready), so is the
// circuit breaker (down while open), and so is the pipeline's progress (DEGRADED while a partition
// stalls for stallAfter).
func (c *clients) dependencies(stallAfter time.Duration) []health.Dependency {
	mon := kafka.NewStallMonitor(c.admin, kafka.GroupPipeline, kafka.TopicInbound, stallAfter)
	return []health.Dependency{
		{Name: health.MongoDB, Required: true, Check: func(ctx context.Context) error { return store.Ping(ctx, c.mongo) }},
		{Name: health.Redis, Required: true, Check: func(ctx context.Context) error {
			if err := c.redis.Ping(ctx).Err(); err != nil {
				return fmt.Errorf("ping redis: %w", err)
			}
			return nil
		}},
		{Name: health.Kafka, Required: true, Check: func(ctx context.Context) error { return kafka.Ping(ctx, c.admin) }},
		{Name: health.ChangeStreams, Check: func(ctx context.Context) error {
			err := store.CheckChangeStreams(ctx, c.db)
			if errors.Is(err, store.ErrNoChangeStreams) {
				return fmt.Errorf("%w: %w", health.ErrUnsupported, err)
			}
			return err
		}},
		{Name: health.MongoDBCircuit, Check: c.breaker.Check},
		{Name: health.Pipeline, Check: func(ctx context.Context) error {
			err := mon.Check(ctx)
			if errors.Is(err, kafka.ErrStalled) {
				return fmt.Errorf("%w: %w", health.ErrDegraded, err)
			}
			return err
		}},
	}
}

// close flushes the Kafka producers (bounded by ctx), so a record accepted before shutdown still reaches
// Kafka, then closes every client.
func (c *clients) close(ctx context.Context) error {
	var errs []error
	for _, p := range c.producers {
		if err := p.Flush(ctx); err != nil {
			errs = append(errs, fmt.Errorf("flush kafka producer: %w", err))
		}
		p.Close()
	}
	c.admin.Close()
	if err := c.redis.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close redis: %w", err))
	}
	if err := c.mongo.Disconnect(ctx); err != nil {
		errs = append(errs, fmt.Errorf("disconnect mongodb: %w", err))
	}
	return errors.Join(errs...)
}
