// Package devstack runs the whole platform in one process for `make run` and the end-to-end tests:
// embedded Kafka (kfake), MongoDB-wire (FerretDB on SQLite) and Redis (miniredis) for whichever of
// KAFKA_BROKERS, MONGO_URI and REDIS_URL is empty, then the gateway and the pipeline roles of the
// production composition root (internal/app). With no AUTH_HMAC_SECRET nor AUTH_JWKS_FILE it checks tokens with the
// well-known development secret that `make token` uses.
//
// RunServers (`devstack -servers kafka,mongodb,redis`) starts only some of those embedded servers, no
// platform, for production binaries, benchmarks or several processes to share.
package devstack

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/msgplatform/platform/internal/app"
	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/config"
	"github.com/msgplatform/platform/internal/envelope"
)

// Addresses are where a running devstack can be reached.
type Addresses struct {
	GRPC, HTTP, Metrics string
	Kafka               string // broker address
	MongoURI            string
	RedisURL            string
	Embedded            []string // which of kafka, mongodb, redis are embedded
	DevSecret           bool     // tokens are checked with auth.DevHMACSecret
	SigningKeyFile      string   // where the generated KAFKA_SIGNING_KEYS is kept ("" when configured)
}

// devKeyID is the key id of the devstack's generated record signing key.
const devKeyID = "devstack"

// devSigningKeys returns the devstack's record signing key: a random secret made on the first start and
// kept in dir (0600), so records produced before a restart still verify after it (with an external
// KAFKA_BROKERS). Nobody else knows it: a record produced to the devstack's Kafka by hand is refused.
func devSigningKeys(dir string) (*envelope.Keys, string, error) {
	path := filepath.Join(dir, "envelope-signing-key")
	secret, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		raw := make([]byte, 32)
		if _, err := rand.Read(raw); err != nil {
			return nil, "", err
		}
		secret = []byte(base64.RawURLEncoding.EncodeToString(raw))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, "", err
		}
		if err := os.WriteFile(path, secret, 0o600); err != nil {
			return nil, "", err
		}
	} else if err != nil {
		return nil, "", err
	}
	keys, err := envelope.NewKeys(devKeyID, strings.TrimSpace(string(secret)))
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w (delete it to make a new one)", path, err)
	}
	return keys, path, nil
}

// Run starts the embedded servers the configuration leaves empty, serves the platform until ctx ends,
// shuts it down in order and stops the embedded servers last. onReady sees the addresses once serving.
func Run(ctx context.Context, cfg config.Config, logger *slog.Logger, onReady func(Addresses)) (err error) {
	var addrs Addresses
	var closers []func()
	defer func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}()

	if len(cfg.KafkaBrokers) == 0 {
		addr, stop, err := startServer(ctx, ServerKafka, cfg, logger)
		if err != nil {
			return err
		}
		closers = append(closers, stop)
		cfg.KafkaBrokers = []string{addr}
		addrs.Embedded = append(addrs.Embedded, ServerKafka)
	}
	if cfg.MongoURI == "" {
		addr, stop, err := startServer(ctx, ServerMongo, cfg, logger)
		if err != nil {
			return err
		}
		closers = append(closers, stop)
		cfg.MongoURI = addr
		addrs.Embedded = append(addrs.Embedded, ServerMongo)
	}
	if cfg.RedisURL == "" {
		addr, stop, err := startServer(ctx, ServerRedis, cfg, logger)
		if err != nil {
			return err
		}
		closers = append(closers, stop)
		cfg.RedisURL = addr
		addrs.Embedded = append(addrs.Embedded, ServerRedis)
	}
	addrs.Kafka, addrs.MongoURI, addrs.RedisURL = cfg.KafkaBrokers[0], cfg.MongoURI, cfg.RedisURL
	if cfg.KafkaSigningKeys == nil {
		keys, path, err := devSigningKeys(cfg.Devstack.DataDir)
		if err != nil {
			return fmt.Errorf("devstack signing key: %w", err)
		}
		cfg.KafkaSigningKeys = keys
		addrs.SigningKeyFile = path
	}
	if cfg.AuthHMACSecret == "" && cfg.AuthJWKSFile == "" {
		// `make token` signs with the same well-known secret, so a new user gets working tokens at once.
		cfg.AuthHMACSecret = auth.DevHMACSecret
		addrs.DevSecret = true
		logger.Warn("AUTH_HMAC_SECRET is empty: using the well-known development secret; never do this in production")
	}

	// The gateway and the pipeline run in this one process through the production composition root, over
	// one set of clients: one registry, one metrics endpoint, one MongoDB pool.
	err = app.Run(ctx, cfg, logger, app.Roles{Gateway: true, Pipeline: true}, func(a app.Addresses) {
		addrs.GRPC, addrs.HTTP, addrs.Metrics = a.GRPC, a.HTTP, a.Metrics
		if onReady != nil {
			onReady(addrs)
		}
	})
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
