// Command devstack is `make run`: the whole platform in one process, with embedded Kafka (kfake),
// MongoDB-wire (FerretDB/SQLite) and Redis (miniredis) unless KAFKA_BROKERS, MONGO_URI or REDIS_URL
// point at real ones. It prints every address at start-up.
package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/msgplatform/platform/internal/config"
	"github.com/msgplatform/platform/internal/devstack"
	"github.com/msgplatform/platform/internal/lifecycle"
	"github.com/msgplatform/platform/internal/observability"
)

func main() {
	cfg, err := config.FromEnvWithDefaults(config.DevstackDefaults)
	if err != nil {
		fmt.Fprintln(os.Stderr, "devstack:", err)
		os.Exit(2)
	}
	logger := observability.NewLogger(os.Stderr, cfg.LogLevel, cfg.LogFormat)
	ctx, stop := lifecycle.SignalContext(context.Background(), logger)
	defer stop()

	err = devstack.Run(ctx, cfg, logger, func(a devstack.Addresses) {
		fmt.Printf(`
platform devstack is up (embedded: %s)
  gRPC         %s   grpcurl -plaintext 127.0.0.1:%s list
  REST         http://%s   curl http://127.0.0.1:%s/v1/health
  metrics      http://%s/metrics
  kafka        %s   kcat -b %s -L
  mongodb      %s
  redis        %s
  signing key  %s
Ctrl-C stops it (twice forces).

`, strings.Join(a.Embedded, ", "), a.GRPC, port(a.GRPC), a.HTTP, port(a.HTTP), a.Metrics, a.Kafka, a.Kafka, a.MongoURI, a.RedisURL,
			signingKey(a.SigningKeyFile))
	})
	if err != nil {
		logger.Error("devstack failed", "error", err)
		os.Exit(1)
	}
}

// signingKey describes where the record signing key comes from.
func signingKey(file string) string {
	if file == "" {
		return "KAFKA_SIGNING_KEYS"
	}
	return file + " (generated; records produced by hand are refused: use the API)"
}

func port(addr string) string {
	if i := strings.LastIndexByte(addr, ':'); i >= 0 {
		return addr[i+1:]
	}
	return addr
}
