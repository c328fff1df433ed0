package authz

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/redis/go-redis/v9"
)

// Run holds the Redis subscription to InvalidationChannel until ctx ends, and with it the in-process
// cache: the cache is emptied and enabled once the subscription is confirmed, and emptied and disabled
// as soon as it fails (an error, or a PING unanswered for SubscriptionCheck), then re-established with
// backoff. While it is down, lookups go to Redis as before. Staleness is thus bounded by the pub/sub
// delivery delay, or, if a message is lost on a live connection, by L1TTL. It returns at once when the
// in-process cache is disabled (L1TTL < 0). Call it once per cache.
func (c *MembershipCache) Run(ctx context.Context) {
	if c.l1 == nil {
		return
	}
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval = 100*time.Millisecond, 5*time.Second
	for {
		subscribed, err := c.subscribe(ctx)
		if c.l1.active.Load() {
			c.l1.reset(false)
			c.l1Active.Set(0)
			c.l1Resets.WithLabelValues("lost").Inc()
		}
		if ctx.Err() != nil {
			return
		}
		c.errs.WithLabelValues("subscribe").Inc()
		if subscribed {
			c.logger.Warn("membership invalidation subscription lost; in-process cache disabled until it is back", "error", err)
			bo.Reset()
		} else {
			c.logger.Debug("membership invalidation subscription not established; retrying", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(bo.NextBackOff()):
		}
	}
}

// Subscribed reports whether the in-process cache is in use (the invalidation subscription is up).
func (c *MembershipCache) Subscribed() bool {
	return c.l1 != nil && c.l1.active.Load()
}

// subscribe runs one subscription until it fails or ctx ends; subscribed says whether it was confirmed.
func (c *MembershipCache) subscribe(ctx context.Context) (subscribed bool, err error) {
	ps := c.rdb.Subscribe(ctx, InvalidationChannel)
	defer ps.Close()
	// Reads do not watch ctx; closing the connection ends a read in progress.
	stop := context.AfterFunc(ctx, func() { _ = ps.Close() })
	defer stop()
	pinged := false
	for {
		msg, err := ps.ReceiveTimeout(ctx, c.cfg.SubscriptionCheck)
		if err != nil {
			if ctx.Err() != nil {
				return subscribed, ctx.Err()
			}
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				return subscribed, fmt.Errorf("receive: %w", err)
			}
			if pinged {
				return subscribed, errors.New("no answer to PING")
			}
			if err := ps.Ping(ctx); err != nil {
				return subscribed, fmt.Errorf("ping: %w", err)
			}
			pinged = true
			continue
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind != "subscribe" || m.Channel != InvalidationChannel {
				return subscribed, fmt.Errorf("unexpected %s %s", m.Kind, m.Channel)
			}
			// From here on every invalidation reaches us; what was cached before may have missed one.
			c.l1.reset(true)
			c.logger.Debug("membership invalidation subscription up; in-process cache enabled")
			c.l1Active.Set(1)
			c.l1Resets.WithLabelValues("subscribed").Inc()
			subscribed = true
		case *redis.Message:
			c.received.Inc()
			if k, ok := parseKey(m.Payload); ok {
				c.l1.invalidate(k)
			} else {
				c.l1.reset(true) // not a key we know how to read: drop everything rather than guess
			}
		case *redis.Pong:
			pinged = false
		}
	}
}
