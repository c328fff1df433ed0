package changes

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"
)

// TokenKeyPrefix prefixes the Redis key of every stream's resume token: `changes:v1:resume:{db}.{collection}`.
const TokenKeyPrefix = "changes:v1:resume:"

// ErrBadToken wraps a stored resume token that is not a valid BSON document. The manager treats it like
// a lost history: it drops the token and starts from now.
var ErrBadToken = errors.New("stored resume token is not a BSON document")

// TokenStore keeps the last resume token of each stream, named "{db}.{collection}".
type TokenStore interface {
	// Load returns the stream's token, or nil (and no error) when none is stored.
	Load(ctx context.Context, stream string) (bson.Raw, error)
	// Save stores the stream's token, replacing the previous one.
	Save(ctx context.Context, stream string, token bson.Raw) error
	// Delete forgets the stream's token (the next start is "from now").
	Delete(ctx context.Context, stream string) error
}

// TokenKey returns the Redis key of a stream's resume token.
func TokenKey(stream string) string { return TokenKeyPrefix + stream }

// RedisTokens is a TokenStore in Redis: one string key per stream holding the token's raw BSON bytes,
// with no TTL (a token that expired would silently turn a restart into "from now" and lose events).
type RedisTokens struct{ rdb redis.UniversalClient }

// NewRedisTokens returns a TokenStore over rdb.
func NewRedisTokens(rdb redis.UniversalClient) *RedisTokens { return &RedisTokens{rdb: rdb} }

// Load implements TokenStore.
func (r *RedisTokens) Load(ctx context.Context, stream string) (bson.Raw, error) {
	b, err := r.rdb.Get(ctx, TokenKey(stream)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load resume token of %s: %w", stream, err)
	}
	tok := bson.Raw(b)
	if err := tok.Validate(); err != nil {
		return nil, fmt.Errorf("load resume token of %s: %w: %v", stream, ErrBadToken, err)
	}
	return tok, nil
}

// Save implements TokenStore. The key has no expiry (KEEPTTL is not used: SET with 0 clears any TTL).
func (r *RedisTokens) Save(ctx context.Context, stream string, token bson.Raw) error {
	if err := r.rdb.Set(ctx, TokenKey(stream), []byte(token), 0).Err(); err != nil {
		return fmt.Errorf("save resume token of %s: %w", stream, err)
	}
	return nil
}

// Delete implements TokenStore.
func (r *RedisTokens) Delete(ctx context.Context, stream string) error {
	if err := r.rdb.Del(ctx, TokenKey(stream)).Err(); err != nil {
		return fmt.Errorf("delete resume token of %s: %w", stream, err)
	}
	return nil
}
