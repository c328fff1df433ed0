package api

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// SendKeys makes SendMessage idempotent per (tenant, conversation, sender, client_message_id). A send
// claims the key as "p:<id>" (pending) before publishing and marks it "d:<id>" (done) after Kafka
// acknowledged the record; a concurrent retry waits for the pending claim to settle instead of
// answering with an id that might never be published. Keys: `send:v1:{tenant}:{conversation}:{sender}:{client_message_id}`.
type SendKeys struct {
	rdb        redis.UniversalClient
	doneTTL    time.Duration // how long a client_message_id is remembered (≥ 24h promised)
	pendingTTL time.Duration // bound on a claim whose holder died mid-send
	poll       time.Duration
}

// NewSendKeys returns the idempotency store: done keys live 48 hours, pending claims 30 seconds.
func NewSendKeys(rdb redis.UniversalClient) *SendKeys {
	return &SendKeys{rdb: rdb, doneTTL: 48 * time.Hour, pendingTTL: 30 * time.Second, poll: 25 * time.Millisecond}
}

func sendKey(tenant, conv, sender, clientMessageID string) string {
	parts := []string{tenant, conv, sender, clientMessageID}
	for i, p := range parts {
		parts[i] = url.QueryEscape(p)
	}
	return "send:v1:" + strings.Join(parts, ":")
}

// Accepted is an earlier send found under a key.
type Accepted struct {
	ID   string
	Time time.Time
}

// Claim reserves key for id. It returns claimed=true when the caller must publish, or the earlier send
// when one with the same key was accepted.
func (k *SendKeys) Claim(ctx context.Context, key, id string) (earlier Accepted, claimed bool, err error) {
	for {
		ok, err := k.rdb.SetNX(ctx, key, "p:"+id, k.pendingTTL).Result()
		if err != nil {
			return Accepted{}, false, fmt.Errorf("claim idempotency key: %w", err)
		}
		if ok {
			return Accepted{}, true, nil
		}
		v, err := k.rdb.Get(ctx, key).Result()
		switch {
		case errors.Is(err, redis.Nil):
			continue // the earlier claim was released or expired: try again
		case err != nil:
			return Accepted{}, false, fmt.Errorf("read idempotency key: %w", err)
		case strings.HasPrefix(v, "d:"):
			// "d:<id>|<unix nanos>"
			id, nanos, _ := strings.Cut(strings.TrimPrefix(v, "d:"), "|")
			n, _ := strconv.ParseInt(nanos, 10, 64)
			return Accepted{ID: id, Time: time.Unix(0, n)}, false, nil
		}
		select { // pending: another send with this key is in flight
		case <-ctx.Done():
			return Accepted{}, false, fmt.Errorf("wait for concurrent send: %w", ctx.Err())
		case <-time.After(k.poll):
		}
	}
}

// Done records that id was accepted under key at t.
func (k *SendKeys) Done(ctx context.Context, key, id string, t time.Time) error {
	if err := k.rdb.Set(ctx, key, "d:"+id+"|"+strconv.FormatInt(t.UnixNano(), 10), k.doneTTL).Err(); err != nil {
		return fmt.Errorf("complete idempotency key: %w", err)
	}
	return nil
}

// releaseScript deletes the key only if it still holds this caller's pending claim.
var releaseScript = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0`)

// Release gives up a claim whose publish failed, so a retry can publish.
func (k *SendKeys) Release(ctx context.Context, key, id string) error {
	if err := releaseScript.Run(ctx, k.rdb, []string{key}, "p:"+id).Err(); err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("release idempotency key: %w", err)
	}
	return nil
}
