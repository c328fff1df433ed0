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
	"github.com/msgplatform/platform/internal/ttlcache"
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
	// L1TTL bounds how long the in-process cache keeps an answer (default 5s; negative disables it). The
	// in-process cache is used only while Run holds the invalidation subscription.
	L1TTL  time.Duration
	L1Size int // entries of the in-process cache; default 65,536
	// SubscriptionCheck is how long the subscription may stay silent before it is PINGed; an unanswered
	// PING counts as a lost subscription. Default 1s.
	SubscriptionCheck time.Duration
}

// InvalidationChannel is the Redis pub/sub channel on which every invalidation publishes the Redis key
// (Key) of the membership it drops, so every process drops its in-process copy.
const InvalidationChannel = "authz:v1:member:invalidations"

// MembershipCache answers membership lookups from an in-process cache (while Run holds the
// invalidation subscription), then Redis, falling back to the Directory on a miss or when Redis is
// unavailable. Redis key layout: `authz:v1:member:{tenant}:{conversation}:{user}` (each part
// query-escaped); values: "r:<role>", "n" (not a member), "x" (no such conversation), "-" (guard).
type MembershipCache struct {
	rdb    redis.UniversalClient
	dir    Directory
	cfg    CacheConfig
	logger *slog.Logger
	l1     *l1 // nil when disabled

	lookups    *prometheus.CounterVec
	errs       *prometheus.CounterVec
	lookupTime prometheus.Histogram
	l1Active   prometheus.Gauge
	l1Resets   *prometheus.CounterVec
	received   prometheus.Counter

	// Children of the vectors above, resolved once: they are on every call's path.
	hitL1, hitRedis, miss, fallback, lookupErr prometheus.Counter
	errGet, errSet, errInvalidate, errPublish  prometheus.Counter
}

// NewMembershipCache returns a cache over rdb and dir, registering its metrics on reg. Call Run to
// enable the in-process cache.
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
	if cfg.L1TTL == 0 {
		cfg.L1TTL = 5 * time.Second
	}
	if cfg.L1Size <= 0 {
		cfg.L1Size = 1 << 16
	}
	if cfg.SubscriptionCheck <= 0 {
		cfg.SubscriptionCheck = time.Second
	}
	const ns, sub = observability.Namespace, "membership_cache"
	c := &MembershipCache{
		rdb: rdb, dir: dir, cfg: cfg, logger: logger,
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "lookups_total",
			Help: "Membership lookups by result: local_hit (in-process cache), hit (from Redis), miss (Redis had no entry; read MongoDB), fallback (Redis unavailable; read MongoDB), error (MongoDB failed too).",
		}, []string{"result"}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "redis_errors_total",
			Help: "Redis errors of the membership cache by operation (get, set, invalidate, publish, subscribe).",
		}, []string{"op"}),
		lookupTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "lookup_duration_seconds",
			Help:    "Duration of a membership lookup that the in-process cache could not answer (Redis, and MongoDB on a miss or fallback).",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		}),
		l1Active: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "local_active",
			Help: "1 while the in-process (local) membership cache is in use (its Redis invalidation subscription is up), else 0.",
		}),
		l1Resets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "local_resets_total",
			Help: "Times the in-process (local) membership cache was emptied, by reason: subscribed (the invalidation subscription was established) or lost (it failed).",
		}, []string{"reason"}),
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "invalidations_received_total",
			Help: "Membership invalidations received on the Redis pub/sub channel (this process's own included).",
		}),
	}
	if cfg.L1TTL > 0 {
		c.l1 = newL1(cfg.L1TTL, cfg.L1Size)
	}
	// Resolving every label value now also makes each series appear in /metrics before it is first used.
	c.hitL1, c.hitRedis, c.miss = c.lookups.WithLabelValues("local_hit"), c.lookups.WithLabelValues("hit"), c.lookups.WithLabelValues("miss")
	c.fallback, c.lookupErr = c.lookups.WithLabelValues("fallback"), c.lookups.WithLabelValues("error")
	c.errGet, c.errSet = c.errs.WithLabelValues("get"), c.errs.WithLabelValues("set")
	c.errInvalidate, c.errPublish = c.errs.WithLabelValues("invalidate"), c.errs.WithLabelValues("publish")
	c.errs.WithLabelValues("subscribe")
	c.l1Resets.WithLabelValues("subscribed")
	c.l1Resets.WithLabelValues("lost")
	for _, col := range []prometheus.Collector{c.lookups, c.errs, c.lookupTime, c.l1Active, c.l1Resets, c.received} {
		if err := reg.Register(col); err != nil {
			return nil, fmt.Errorf("register membership cache metrics: %w", err)
		}
	}
	return c, nil
}

const keyPrefix = "authz:v1:member:"

// Key returns the Redis key of one membership.
func Key(tenantID, conversationID, userID string) string {
	return keyPrefix + url.QueryEscape(tenantID) + ":" + url.QueryEscape(conversationID) + ":" + url.QueryEscape(userID)
}

// Lookup returns the membership, from the in-process cache or Redis when they have it, else from the
// Directory. An error means neither Redis nor the Directory could answer: callers must fail closed.
func (c *MembershipCache) Lookup(ctx context.Context, tenantID, conversationID, userID string) (Membership, error) {
	return c.lookupAt(ctx, time.Now(), nil, tenantID, conversationID, userID)
}

// lookupAt is Lookup with the caller's clock reading (the Authorizer has one: an in-process hit then
// reads no clock at all, and is counted but not timed) and the Directory to read on a miss (nil: the
// cache's own).
func (c *MembershipCache) lookupAt(ctx context.Context, now time.Time, dir Directory, tenantID, conversationID, userID string) (Membership, error) {
	if dir == nil {
		dir = c.dir
	}
	k := memberKey{tenantID, conversationID, userID}
	if c.l1 != nil {
		if m, ok := c.l1.get(k, now); ok {
			c.hitL1.Inc()
			return m, nil
		}
	}
	start := time.Now()
	defer func() { c.lookupTime.Observe(time.Since(start).Seconds()) }()
	var gen uint64
	if c.l1 != nil {
		gen = c.l1.generation(k) // before Redis: an invalidation from here on fences the answer out of L1
	}
	key := Key(tenantID, conversationID, userID)

	val, err := c.rdb.Get(ctx, key).Result()
	switch {
	case err == nil && val != valInvalidated:
		if m, ok := decode(val); ok {
			c.hitRedis.Inc()
			c.remember(k, m, gen, start)
			return m, nil
		}
	case err != nil && !errors.Is(err, redis.Nil):
		c.errGet.Inc()
		m, derr := dir.Membership(ctx, tenantID, conversationID, userID)
		if derr != nil {
			c.lookupErr.Inc()
			return Membership{}, fmt.Errorf("membership lookup: redis: %v; mongodb: %w", err, derr)
		}
		c.fallback.Inc()
		return m, nil
	}

	m, err := dir.Membership(ctx, tenantID, conversationID, userID)
	if err != nil {
		c.lookupErr.Inc()
		return Membership{}, fmt.Errorf("membership lookup: %w", err)
	}
	c.miss.Inc()
	if val == valInvalidated {
		// The guard was set after the change was stored, and MongoDB was read after the guard was seen,
		// so this answer is fresh: the in-process cache may keep it (a later invalidation fences it out),
		// while Redis keeps the guard until it expires.
		c.remember(k, m, gen, start)
		return m, nil
	}
	set, err := c.rdb.SetNX(ctx, key, encode(m), c.ttl(m)).Result()
	switch {
	case err != nil:
		c.errSet.Inc()
	case set: // only what Redis now holds goes to L1; a guard or a newer entry won the race
		c.remember(k, m, gen, start)
	}
	return m, nil
}

// Noted is what Note returns: the in-process cache's generations before a read whose answers go to Prime.
type Noted struct{ gens *ttlcache.Generations }

// Note is taken before reading the memberships handed to Prime, so an invalidation in between fences
// them out of the in-process cache.
func (c *MembershipCache) Note() Noted {
	if c.l1 == nil {
		return Noted{}
	}
	return Noted{c.l1.entries.Note()}
}

// Member is one membership read from the store, for Prime.
type Member struct {
	ConversationID, UserID string
	Role                   store.Role
}

// Prime stores memberships the caller read from the store in one query (every member of some
// conversations of tenantID), as lookups missing on each would have: in Redis with SET NX (an
// invalidation guard or a newer entry wins), in the in-process cache only what Redis then holds and no
// invalidation fenced since n was noted. The next batches then find members they have not met yet
// without a store read each (on FerretDB, a scan of the memberships collection each). It is an
// optimisation: a failure is counted (set errors) and otherwise ignored.
func (c *MembershipCache) Prime(ctx context.Context, n Noted, tenantID string, members []Member) {
	if len(members) == 0 {
		return
	}
	pipe := c.rdb.Pipeline()
	cmds := make([]*redis.BoolCmd, len(members))
	for i, m := range members {
		cmds[i] = pipe.SetNX(ctx, Key(tenantID, m.ConversationID, m.UserID), encode(Membership{ConversationExists: true, Role: m.Role}), c.cfg.PositiveTTL)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		c.errSet.Inc()
	}
	if c.l1 == nil || n.gens == nil {
		return
	}
	now := time.Now()
	for i, m := range members {
		if set, err := cmds[i].Result(); err == nil && set && m.Role != "" {
			c.l1.putNoted(memberKey{tenantID, m.ConversationID, m.UserID}, Membership{ConversationExists: true, Role: m.Role}, n.gens, c.cfg.PositiveTTL, now)
		}
	}
}

func (c *MembershipCache) ttl(m Membership) time.Duration {
	if m.Role != "" {
		return c.cfg.PositiveTTL
	}
	return c.cfg.NegativeTTL
}

func (c *MembershipCache) remember(k memberKey, m Membership, gen uint64, now time.Time) {
	if c.l1 != nil {
		c.l1.put(k, m, gen, c.ttl(m), now)
	}
}

// Invalidate drops the cached membership after a change. Call it after the change is stored and before
// answering the caller, so the very next call sees the change. The in-process entry is dropped at once
// (before and after Redis, so no lookup in flight can put it back); Redis gets the guard and the
// invalidation is published for the other processes in one round trip. When Redis cannot be reached
// this is retried in the background until the positive TTL would have expired the entry anyway; the
// error is returned for logging, not to fail the change.
func (c *MembershipCache) Invalidate(ctx context.Context, tenantID, conversationID, userID string) error {
	k := memberKey{tenantID, conversationID, userID}
	if c.l1 != nil {
		c.l1.invalidate(k)
	}
	key := Key(tenantID, conversationID, userID)
	err := c.invalidateRedis(ctx, key)
	if c.l1 != nil {
		c.l1.invalidate(k)
	}
	if err == nil {
		return nil
	}
	go func() {
		op := func() (struct{}, error) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			return struct{}{}, c.invalidateRedis(ctx, key)
		}
		if _, err := backoff.Retry(context.Background(), op, backoff.WithBackOff(backoff.NewExponentialBackOff()),
			backoff.WithMaxElapsedTime(c.cfg.PositiveTTL)); err != nil {
			c.logger.Error("membership cache invalidation lost; the entry expires with its TTL", "key", key, "error", err)
		}
	}()
	return fmt.Errorf("invalidate membership cache (retrying in the background): %w", err)
}

// invalidateRedis sets the guard and publishes the key, pipelined.
func (c *MembershipCache) invalidateRedis(ctx context.Context, key string) error {
	var set *redis.StatusCmd
	var pub *redis.IntCmd
	_, _ = c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		set = p.Set(ctx, key, valInvalidated, c.cfg.GuardTTL)
		pub = p.Publish(ctx, InvalidationChannel, key)
		return nil
	})
	if err := set.Err(); err != nil {
		c.errInvalidate.Inc()
		return err
	}
	if err := pub.Err(); err != nil {
		c.errPublish.Inc()
		return fmt.Errorf("publish: %w", err)
	}
	return nil
}

// parseKey is Key's inverse, for the keys received on InvalidationChannel.
func parseKey(key string) (memberKey, bool) {
	rest, ok := strings.CutPrefix(key, keyPrefix)
	if !ok {
		return memberKey{}, false
	}
	parts := strings.Split(rest, ":")
	if len(parts) != 3 {
		return memberKey{}, false
	}
	for i, p := range parts {
		u, err := url.QueryUnescape(p)
		if err != nil {
			return memberKey{}, false
		}
		parts[i] = u
	}
	return memberKey{parts[0], parts[1], parts[2]}, true
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
