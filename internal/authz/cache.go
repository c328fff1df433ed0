package authz

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/msgplatform/platform/internal/observability"
	"github.com/msgplatform/platform/internal/store"
)

// Membership is what the cache knows of one (tenant, conversation, user).
type Membership struct {
	ConversationExists bool       // the conversation exists in the tenant (archived ones too)
	Role               store.Role // empty when the user is not a member
}

// Directory answers membership questions from the source of truth (MongoDB).
type Directory interface {
	// Membership of user in the tenant's conversation; a conversation of another tenant does not exist.
	Membership(ctx context.Context, tenantID, conversationID, userID string) (Membership, error)
	// MessageAuthor returns the sender of a message; store.ErrNotFound when there is none.
	MessageAuthor(ctx context.Context, tenantID, conversationID, messageID string) (string, error)
}

// Cache values. A short "invalidated" guard (rather than DEL) closes the race where a lookup reads the old
// membership from MongoDB just before a change and writes it to Redis just after the invalidation: the
// lookup's SET NX fails while the guard stands.
const (
	valNoConversation = "x"
	valNotMember      = "n"
	valRolePrefix     = "r:"
	valInvalidated    = "-"
)

// CacheConfig tunes the membership cache.
type CacheConfig struct {
	PositiveTTL time.Duration // a member's role; default 60s (bounds staleness if an invalidation is lost)
	NegativeTTL time.Duration // not a member / no conversation; default 10s
	GuardTTL    time.Duration // invalidation guard; default 5s
}

// MembershipCache answers membership lookups from Redis, falling back to the Directory on a miss or when
// Redis is unavailable. Key layout: `authz:v1:member:{tenant}:{conversation}:{user}` (each part
// query-escaped); values: "r:<role>", "n" (not a member), "x" (no such conversation), "-" (guard).
type MembershipCache struct {
	rdb    redis.UniversalClient
	dir    Directory
	cfg    CacheConfig
	logger *slog.Logger

	lookups    *prometheus.CounterVec
	errs       *prometheus.CounterVec
	lookupTime prometheus.Histogram
}

// NewMembershipCache returns a cache over rdb and dir, registering its metrics on reg.
func NewMembershipCache(rdb redis.UniversalClient, dir Directory, cfg CacheConfig, reg prometheus.Registerer, logger *slog.Logger) (*MembershipCache, error) {
	if cfg.PositiveTTL == 0 {
		cfg.PositiveTTL = 60 * time.Second
	}
	if cfg.NegativeTTL == 0 {
		cfg.NegativeTTL = 10 * time.Second
	}
	if cfg.GuardTTL == 0 {
		cfg.GuardTTL = 5 * time.Second
	}
	c := &MembershipCache{
		rdb: rdb, dir: dir, cfg: cfg, logger: logger,
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: observability.Namespace, Subsystem: "membership_cache", Name: "lookups_total",
			Help: "Membership lookups by result: hit (from Redis), miss (Redis had no entry; read MongoDB), fallback (Redis unavailable; read MongoDB), error (MongoDB failed too).",
		}, []string{"result"}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: observability.Namespace, Subsystem: "membership_cache", Name: "redis_errors_total",
			Help: "Redis errors of the membership cache by operation (get, set, invalidate).",
		}, []string{"op"}),
		lookupTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: observability.Namespace, Subsystem: "membership_cache", Name: "lookup_duration_seconds",
			Help:    "Duration of a membership lookup, cache and fallback included.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		}),
	}
	for _, col := range []prometheus.Collector{c.lookups, c.errs, c.lookupTime} {
		if err := reg.Register(col); err != nil {
			return nil, fmt.Errorf("register membership cache metrics: %w", err)
		}
	}
	return c, nil
}

// Key returns the Redis key of one membership.
func Key(tenantID, conversationID, userID string) string {
	return "authz:v1:member:" + url.QueryEscape(tenantID) + ":" + url.QueryEscape(conversationID) + ":" + url.QueryEscape(userID)
}

// Lookup returns the membership, from Redis when it has it, else from the Directory. An error means
// neither could answer: callers must fail closed.
func (c *MembershipCache) Lookup(ctx context.Context, tenantID, conversationID, userID string) (Membership, error) {
	start := time.Now()
	defer func() { c.lookupTime.Observe(time.Since(start).Seconds()) }()
	key := Key(tenantID, conversationID, userID)

	val, err := c.rdb.Get(ctx, key).Result()
	switch {
	case err == nil && val != valInvalidated:
		if m, ok := decode(val); ok {
			c.lookups.WithLabelValues("hit").Inc()
			return m, nil
		}
	case err != nil && !errors.Is(err, redis.Nil):
		c.errs.WithLabelValues("get").Inc()
		m, derr := c.dir.Membership(ctx, tenantID, conversationID, userID)
		if derr != nil {
			c.lookups.WithLabelValues("error").Inc()
			return Membership{}, fmt.Errorf("membership lookup: redis: %v; mongodb: %w", err, derr)
		}
		c.lookups.WithLabelValues("fallback").Inc()
		return m, nil
	}

	m, err := c.dir.Membership(ctx, tenantID, conversationID, userID)
	if err != nil {
		c.lookups.WithLabelValues("error").Inc()
		return Membership{}, fmt.Errorf("membership lookup: %w", err)
	}
	c.lookups.WithLabelValues("miss").Inc()
	if val != valInvalidated {
		ttl := c.cfg.NegativeTTL
		if m.Role != "" {
			ttl = c.cfg.PositiveTTL
		}
		if err := c.rdb.SetNX(ctx, key, encode(m), ttl).Err(); err != nil {
			c.errs.WithLabelValues("set").Inc()
		}
	}
	return m, nil
}

// Invalidate drops the cached membership after a change. Call it after the change is stored and before
// answering the caller, so the very next call sees the change. When Redis cannot be reached the
// invalidation is retried in the background until the positive TTL would have expired the entry anyway;
// the error is returned for logging, not to fail the change.
func (c *MembershipCache) Invalidate(ctx context.Context, tenantID, conversationID, userID string) error {
	key := Key(tenantID, conversationID, userID)
	err := c.rdb.Set(ctx, key, valInvalidated, c.cfg.GuardTTL).Err()
	if err == nil {
		return nil
	}
	c.errs.WithLabelValues("invalidate").Inc()
	go func() {
		op := func() (struct{}, error) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			return struct{}{}, c.rdb.Set(ctx, key, valInvalidated, c.cfg.GuardTTL).Err()
		}
		if _, err := backoff.Retry(context.Background(), op, backoff.WithBackOff(backoff.NewExponentialBackOff()),
			backoff.WithMaxElapsedTime(c.cfg.PositiveTTL)); err != nil {
			c.logger.Error("membership cache invalidation lost; the entry expires with its TTL", "key", key, "error", err)
		}
	}()
	return fmt.Errorf("invalidate membership cache (retrying in the background): %w", err)
}

func encode(m Membership) string {
	switch {
	case !m.ConversationExists:
		return valNoConversation
	case m.Role == "":
		return valNotMember
	default:
		return valRolePrefix + string(m.Role)
	}
}

func decode(v string) (Membership, bool) {
	switch {
	case v == valNoConversation:
		return Membership{}, true
	case v == valNotMember:
		return Membership{ConversationExists: true}, true
	case strings.HasPrefix(v, valRolePrefix):
		role := store.Role(strings.TrimPrefix(v, valRolePrefix))
		if _, ok := ConversationRoles[role]; ok {
			return Membership{ConversationExists: true, Role: role}, true
		}
	}
	return Membership{}, false
}
