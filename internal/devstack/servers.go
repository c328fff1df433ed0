package devstack

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/msgplatform/platform/internal/config"
	"github.com/msgplatform/platform/internal/embedded"
	"github.com/msgplatform/platform/internal/kafka"
)

// The embedded servers, as named by `devstack -servers` and in Addresses.Embedded.
const (
	ServerKafka = "kafka"   // kfake, every platform topic seeded, on DEVSTACK_KAFKA_ADDR
	ServerMongo = "mongodb" // FerretDB on SQLite, on DEVSTACK_MONGO_ADDR, files in DEVSTACK_DATA_DIR
	ServerRedis = "redis"   // miniredis, on DEVSTACK_REDIS_ADDR
)

// Servers lists the embedded servers in the order they start.
var Servers = []string{ServerKafka, ServerMongo, ServerRedis}

// ParseServers reads the comma-separated list of `devstack -servers` (e.g. "kafka,mongodb"): names from
// Servers, each at most once, blanks around commas ignored. The result is in Servers' order.
func ParseServers(list string) ([]string, error) {
	var out []string
	for name := range strings.SplitSeq(list, ",") {
		name = strings.ToLower(strings.TrimSpace(name))
		switch {
		case name == "":
			continue
		case !slices.Contains(Servers, name):
			return nil, fmt.Errorf("-servers: unknown server %q (want a comma list of %s)", name, strings.Join(Servers, ", "))
		case slices.Contains(out, name):
			return nil, fmt.Errorf("-servers: %s named twice", name)
		}
		out = append(out, name)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("-servers: no server named (want a comma list of %s)", strings.Join(Servers, ", "))
	}
	slices.SortFunc(out, func(a, b string) int { return slices.Index(Servers, a) - slices.Index(Servers, b) })
	return out, nil
}

// ServerAddresses are where RunServers' servers are reached, as `devstack -servers` prints them (one JSON
// line); a server not started is absent.
type ServerAddresses struct {
	Kafka    string `json:"kafka,omitempty"`   // broker host:port, for KAFKA_BROKERS
	MongoURI string `json:"mongodb,omitempty"` // mongodb:// URI, for MONGO_URI
	RedisURL string `json:"redis,omitempty"`   // redis:// URL, for REDIS_URL
}

// RunServers is `devstack -servers`: it starts only the named embedded servers (names from Servers, see
// ParseServers), with the same code and settings as Run (DEVSTACK_KAFKA_ADDR, DEVSTACK_MONGO_ADDR,
// DEVSTACK_REDIS_ADDR, DEVSTACK_DATA_DIR; KAFKA_BROKERS, MONGO_URI and REDIS_URL are not looked at) and no
// platform, calls onReady (if not nil) once every one of them serves, and stops them, in reverse order,
// when ctx ends. Production binaries, benchmarks or several processes can then share one set of servers.
func RunServers(ctx context.Context, cfg config.Config, servers []string, logger *slog.Logger, onReady func(ServerAddresses)) error {
	if len(servers) == 0 {
		return fmt.Errorf("devstack servers: no server to run")
	}
	var closers []func()
	defer func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}()
	var addrs ServerAddresses
	for _, name := range servers {
		addr, stop, err := startServer(ctx, name, cfg, logger)
		if err != nil {
			return err
		}
		closers = append(closers, stop)
		switch name {
		case ServerKafka:
			addrs.Kafka = addr
		case ServerMongo:
			addrs.MongoURI = addr
		case ServerRedis:
			addrs.RedisURL = addr
		}
	}
	logger.Info("embedded servers serving", "servers", servers, "kafka", addrs.Kafka, "mongodb", addrs.MongoURI, "redis", addrs.RedisURL)
	if onReady != nil {
		onReady(addrs)
	}
	<-ctx.Done()
	logger.Info("stopping the embedded servers", "servers", servers)
	return nil
}

// startServer starts one embedded server as cfg.Devstack says and returns its address as clients take
// it (KAFKA_BROKERS, MONGO_URI or REDIS_URL) and how to stop it. It returns once the server accepts
// connections: kfake and miniredis serve on their listener as soon as they return, and FerretDB's
// listener is bound before StartMongo returns.
func startServer(ctx context.Context, name string, cfg config.Config, logger *slog.Logger) (addr string, stop func(), err error) {
	switch name {
	case ServerKafka:
		k, err := embedded.StartKafka(cfg.Devstack.KafkaAddr, kafka.Topics)
		if err != nil {
			return "", nil, fmt.Errorf("embedded kafka on DEVSTACK_KAFKA_ADDR %s: %w", cfg.Devstack.KafkaAddr, err)
		}
		return k.Addr(), k.Close, nil
	case ServerMongo:
		m, err := embedded.StartMongo(ctx, cfg.Devstack.MongoAddr, cfg.Devstack.DataDir, logger)
		if err != nil {
			return "", nil, fmt.Errorf("embedded mongodb (FerretDB) on DEVSTACK_MONGO_ADDR %s: %w", cfg.Devstack.MongoAddr, err)
		}
		return m.URI(), m.Close, nil
	case ServerRedis:
		r, err := embedded.StartRedis(cfg.Devstack.RedisAddr)
		if err != nil {
			return "", nil, fmt.Errorf("embedded redis on DEVSTACK_REDIS_ADDR %s: %w", cfg.Devstack.RedisAddr, err)
		}
		return r.URL(), r.Close, nil
	}
	return "", nil, fmt.Errorf("devstack: unknown embedded server %q", name)
}
