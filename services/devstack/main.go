// Command devstack is `make run`: the whole platform in one process, with embedded Kafka (kfake),
// MongoDB-wire (FerretDB/SQLite) and Redis (miniredis) unless KAFKA_BROKERS, MONGO_URI or REDIS_URL
// point at real ones. It prints every address at start-up.
//
// `devstack -servers kafka,mongodb,redis` (any of the three) starts only those embedded servers, no
// platform, prints their addresses as one JSON line on stdout once they serve, and stops them on SIGINT
// or SIGTERM: run the production binaries, or several processes, against one set of servers.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/msgplatform/platform/internal/config"
	"github.com/msgplatform/platform/internal/devstack"
	"github.com/msgplatform/platform/internal/lifecycle"
	"github.com/msgplatform/platform/internal/observability"
)

const usage = `Usage:
  devstack                 the whole platform (gateway and pipeline) in one process, with embedded
                           Kafka, MongoDB-wire and Redis for whichever of KAFKA_BROKERS, MONGO_URI
                           and REDIS_URL is empty (make run)
  devstack -servers LIST   only the embedded servers of LIST, a comma list of kafka, mongodb, redis
                           (e.g. -servers kafka,mongodb); no platform. Once they serve it prints one
                           JSON line on stdout with their addresses, e.g.
                           {"kafka":"127.0.0.1:19092","mongodb":"mongodb://127.0.0.1:27018/","redis":"redis://127.0.0.1:16379/0"}
                           and it serves until SIGINT or SIGTERM (exit 0). Logs go to stderr.

Both read their settings from the environment: DEVSTACK_KAFKA_ADDR, DEVSTACK_MONGO_ADDR,
DEVSTACK_REDIS_ADDR (host:port, port 0 picks a free one) and DEVSTACK_DATA_DIR (FerretDB's SQLite
files), LOG_LEVEL, LOG_FORMAT, and for the platform every variable of the configuration table.

Flags:
`

func main() {
	servers := flag.String("servers", "", "start only these embedded servers (comma list of kafka, mongodb, redis), print their addresses as one JSON line, no platform")
	flag.Usage = func() {
		fmt.Fprint(flag.CommandLine.Output(), usage)
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "devstack: unexpected arguments %q\n", flag.Args())
		flag.Usage()
		os.Exit(2)
	}
	cfg, err := config.FromEnvWithDefaults(config.DevstackDefaults)
	if err != nil {
		fmt.Fprintln(os.Stderr, "devstack:", err)
		os.Exit(2)
	}
	logger := observability.NewLogger(os.Stderr, cfg.LogLevel, cfg.LogFormat)
	ctx, stop := lifecycle.SignalContext(context.Background(), logger)
	defer stop()

	if *servers != "" {
		names, err := devstack.ParseServers(*servers)
		if err != nil {
			fmt.Fprintln(os.Stderr, "devstack:", err)
			os.Exit(2)
		}
		if err := devstack.RunServers(ctx, cfg, names, logger, printServers); err != nil {
			logger.Error("devstack servers failed", "error", err)
			stop()
			os.Exit(1)
		}
		return
	}

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
Ctrl-C stops it (twice forces). devstack -servers kafka,mongodb,redis runs only the embedded servers (devstack -h).

`, strings.Join(a.Embedded, ", "), a.GRPC, port(a.GRPC), a.HTTP, port(a.HTTP), a.Metrics, a.Kafka, a.Kafka, a.MongoURI, a.RedisURL,
			signingKey(a.SigningKeyFile))
	})
	if err != nil {
		logger.Error("devstack failed", "error", err)
		os.Exit(1)
	}
}

// printServers writes the servers' addresses as one JSON line on stdout: what a script or a benchmark
// starting `devstack -servers` waits for.
func printServers(a devstack.ServerAddresses) {
	b, err := json.Marshal(a)
	if err != nil { // a struct of strings always encodes
		panic(err)
	}
	fmt.Println(string(b))
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
