package changes

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/msgplatform/platform/internal/testenv"
)

// Resume-token store against a real redis-server (testenv.Redis; miniredis only when none is installed
// and CI is not set).
func TestRedisTokens(t *testing.T) {
	ctx := context.Background()
	opt, err := redis.ParseURL(testenv.Redis(t))
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	s := NewRedisTokens(rdb)

	if tok, err := s.Load(ctx, "platform.messages"); err != nil || tok != nil {
		t.Fatalf("Load of nothing = %v, %v; want nil, nil", tok, err)
	}
	for _, c := range []struct {
		stream string
		n      int
	}{{"platform.messages", 1}, {"platform.memberships", 2}, {"other.messages", 3}, {"platform.messages", 4}} {
		if err := s.Save(ctx, c.stream, rawToken(t, c.n)); err != nil {
			t.Fatal(err)
		}
	}
	for stream, n := range map[string]int{"platform.messages": 4, "platform.memberships": 2, "other.messages": 3} {
		tok, err := s.Load(ctx, stream)
		if err != nil || !bytes.Equal(tok, rawToken(t, n)) {
			t.Errorf("Load(%s) = %v, %v; want token(%d)", stream, tok, err, n)
		}
		if ttl, err := rdb.TTL(ctx, TokenKey(stream)).Result(); err != nil || ttl != -1 {
			t.Errorf("TTL(%s) = %v, %v; want -1 (no expiry)", TokenKey(stream), ttl, err)
		}
	}
	if TokenKey("platform.messages") != "changes:v1:resume:platform.messages" {
		t.Errorf("TokenKey = %s", TokenKey("platform.messages"))
	}
	// A key given a TTL by someone else loses it on the next Save.
	rdb.Expire(ctx, TokenKey("other.messages"), 3600e9)
	_ = s.Save(ctx, "other.messages", rawToken(t, 5))
	if ttl, _ := rdb.TTL(ctx, TokenKey("other.messages")).Result(); ttl != -1 {
		t.Errorf("TTL after Save = %v, want -1", ttl)
	}
	if err := s.Delete(ctx, "platform.messages"); err != nil {
		t.Fatal(err)
	}
	if tok, err := s.Load(ctx, "platform.messages"); err != nil || tok != nil {
		t.Errorf("Load after Delete = %v, %v", tok, err)
	}
	rdb.Set(ctx, TokenKey("bad"), "not bson", 0)
	if _, err := s.Load(ctx, "bad"); !errors.Is(err, ErrBadToken) {
		t.Errorf("Load of garbage = %v, want ErrBadToken", err)
	}
}
