// Package watchers decides what a change made outside the API means: membership changes (a migration, an
// operator's script) invalidate the membership cache, and message changes become events on
// messages.events. The store watches (internal/store/changes); this package holds the policy handlers.
//
// Run it in ONE process of a deployment (WATCHERS_ENABLED=false on the others): replicas would each emit
// the same (deduplicated) events and share the resume-token keys in Redis.
package watchers

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/store/changes"
)

// Deps are what the watchers work with; the process's composition root provides them.
type Deps struct {
	Database *mongo.Database
	// Redis keeps the resume tokens.
	Redis redis.UniversalClient
	// Cache is invalidated on membership changes (*authz.MembershipCache, the process's own).
	Cache Invalidator
	// Publisher publishes message events (*events.Publisher, the process's own).
	Publisher Publisher
	Registry  prometheus.Registerer
	Logger    *slog.Logger
}

// Watchers watch the memberships and messages collections.
type Watchers struct{ m *changes.Manager }

// New returns the watchers over d; nothing runs until Run.
func New(d Deps) (*Watchers, error) {
	m, err := changes.New(changes.Config{
		Database: d.Database, Tokens: changes.NewRedisTokens(d.Redis), Registerer: d.Registry, Logger: d.Logger,
		Watches: []changes.Watch{
			{Collection: store.MembershipsCollection, Handler: MembershipInvalidator{Cache: d.Cache}},
			{Collection: store.MessagesCollection, Handler: MessageEvents{Publisher: d.Publisher}},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("change streams: %w", err)
	}
	return &Watchers{m: m}, nil
}

// Run watches until ctx ends. On a server without change streams (FerretDB) it logs once, sets
// platform_change_streams_supported to 0 and returns nil.
func (w *Watchers) Run(ctx context.Context) error { return w.m.Run(ctx) }
