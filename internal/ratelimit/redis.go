package ratelimit

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// script is gcra (gcra.go) over KEYS, all charged or none, in one round trip. ARGV[1] is the cost;
// ARGV[2i] and ARGV[2i+1] are bucket i's interval and tolerance in µs. The time is Redis's own, so the
// replicas' clocks do not matter. A key holds its bucket's TAT (µs since epoch, printed with a fixed
// precision: tostring would keep only 14 digits) and expires when the bucket is full again (at least 1 ms
// on: at very high rates a charge can be below a float64's resolution of now), so idle keys vanish. It answers {allowed, then per bucket: ok, remaining, reset µs, retry µs}, all integers.
var script = redis.NewScript(`
local t = redis.call('TIME')
local now = (tonumber(t[1]) - 1700000000) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local slack = 0.5
local tats, allowed = {}, 1
for i = 1, #KEYS do
  local v = redis.call('GET', KEYS[i])
  local tat = now
  if v then tat = math.max(tonumber(v), now) end
  tats[i] = tat
  if tat + cost * tonumber(ARGV[2*i]) - tonumber(ARGV[2*i+1]) > now + slack then allowed = 0 end
end
local out = {allowed}
for i = 1, #KEYS do
  local interval, tolerance = tonumber(ARGV[2*i]), tonumber(ARGV[2*i+1])
  local tat = tats[i]
  local need = tat + cost * interval - tolerance - now
  if allowed == 1 then
    tat = tat + cost * interval
    redis.call('SET', KEYS[i], string.format('%.3f', tat), 'PX', math.max(1, math.ceil((tat - now) / 1000)))
  end
  local ok, retry = 1, 0
  if need > slack then ok, retry = 0, math.ceil(need) end
  out[#out + 1] = ok
  out[#out + 1] = math.max(0, math.floor((tolerance - (tat - now) + slack) / interval))
  out[#out + 1] = math.ceil(tat - now)
  out[#out + 1] = retry
end
return out
`)

// keyPrefix namespaces the limiter's keys; v1 is the format of the value (a TAT in µs since epoch).
const keyPrefix = "ratelimit:v1:"

// tag is a short, safe stand-in for an id in a key: ids may be 128 bytes of any printable UTF-8,
// braces and colons included. 96 bits of SHA-256 make a collision between two callers' buckets negligible.
func tag(id string) string {
	sum := sha256.Sum256([]byte(id))
	return base64.RawURLEncoding.EncodeToString(sum[:12])
}

// tenantKey and principalKey put the tenant's tag in a hash tag ({…}): a caller's two buckets live in one
// Redis Cluster slot, as a script touching both requires.
func tenantKey(tenantTag string) string { return keyPrefix + "{" + tenantTag + "}:t" }

func principalKey(tenantTag, subject string) string {
	return keyPrefix + "{" + tenantTag + "}:p:" + tag(subject)
}

// redisAllow runs the script for buckets.
func redisAllow(ctx context.Context, rdb redis.Scripter, cost int, buckets []bucket) (bool, []outcome, error) {
	keys := make([]string, len(buckets))
	args := make([]any, 1, 1+2*len(buckets))
	args[0] = cost
	for i, b := range buckets {
		keys[i] = b.key
		args = append(args, b.interval, b.tolerance)
	}
	vals, err := script.Run(ctx, rdb, keys, args...).Int64Slice()
	if err != nil {
		return false, nil, fmt.Errorf("rate limit script: %w", err)
	}
	if len(vals) != 1+4*len(buckets) {
		return false, nil, fmt.Errorf("rate limit script: %d values for %d buckets", len(vals), len(buckets))
	}
	outs := make([]outcome, len(buckets))
	for i := range buckets {
		v := vals[1+4*i:]
		outs[i] = outcome{ok: v[0] == 1, remaining: int(v[1]), reset: float64(v[2]), retry: float64(v[3])}
	}
	return vals[0] == 1, outs, nil
}
