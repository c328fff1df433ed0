// Package watchers wires the change-stream reactions: membership changes made outside the API (a
// migration, an operator's script) invalidate the membership cache, and message changes become events on
// messages.events. The store watches; this package decides what a change means (store knows no policy).
package watchers

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/msgplatform/platform/internal/authz"
	"github.com/msgplatform/platform/internal/config"
	"github.com/msgplatform/platform/internal/events"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/store/changes"
)

// Serve connects to MongoDB, Redis and Kafka, watches the memberships and messages collections until ctx
// ends, and closes its connections. On a server without change streams (FerretDB) it logs once, sets
// platform_change_streams_supported to 0 and returns nil. Run it in ONE process: replicas would each emit
// the same (deduplicated) events and share the resume-token keys.
func Serve(ctx context.Context, cfg config.Config, reg prometheus.Registerer, logger *slog.Logger) error {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	mc, err := store.Connect(cctx, cfg.MongoURI)
	if err != nil {
		return fmt.Errorf("change streams: %w", err)
	}
	defer func() { _ = mc.Disconnect(context.Background()) }()
	ropts, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		return fmt.Errorf("change streams: REDIS_URL: %w", err)
	}
	rdb := redis.NewClient(ropts)
	defer rdb.Close()
	producer, err := kafka.NewProducer(cfg.KafkaBrokers, cfg.ProduceTimeout)
	if err != nil {
		return fmt.Errorf("change streams: %w", err)
	}
	defer func() {
		fctx, fcancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		defer fcancel()
		_ = producer.Flush(fctx)
		producer.Close()
	}()

	db := mc.Database(cfg.MongoDatabase)
	st := store.New(db)
	// The reactions' own cache and publisher metrics would clash with the pipeline's on the same registry;
	// the change-stream metrics below are the ones exported.
	private := prometheus.NewRegistry()
	cache, err := authz.NewMembershipCache(rdb, authz.StoreDirectory{Store: st}, authz.CacheConfig{}, private, logger)
	if err != nil {
		return err
	}
	publisher, err := events.NewPublisher(producer, cfg.KafkaSigningKeys, private)
	if err != nil {
		return err
	}
	m, err := changes.New(changes.Config{
		Database: db, Tokens: changes.NewRedisTokens(rdb), Registerer: reg, Logger: logger,
		Watches: []changes.Watch{
			{Collection: store.MembershipsCollection, Handler: MembershipInvalidator{Cache: cache}},
			{Collection: store.MessagesCollection, Handler: MessageEvents{Publisher: publisher}},
		},
	})
	if err != nil {
		return fmt.Errorf("change streams: %w", err)
	}
	return m.Run(ctx)
}
