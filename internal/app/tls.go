package app

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/msgplatform/platform/internal/config"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/tlsconfig"
)

// kafkaDialTimeout bounds one connection to a broker, TLS handshake included (franz-go's own default).
const kafkaDialTimeout = 10 * time.Second

// kafkaConn returns the connection options every Kafka client of the process starts from: the seed
// brokers, TLS when KAFKA_TLS_ENABLED (its files reloaded by r) and SASL when KAFKA_SASL_MECHANISM is set.
// Plain text without authentication otherwise.
func kafkaConn(cfg config.Config, r *tlsconfig.Reloader) ([]kgo.Opt, error) {
	opts := []kgo.Opt{kgo.SeedBrokers(cfg.KafkaBrokers...)}
	if t := cfg.KafkaTLS; t.Enabled {
		c, err := r.Client("kafka", tlsconfig.Files{Setting: "KAFKA_TLS", CertFile: t.CertFile, KeyFile: t.KeyFile, CAFile: t.CAFile})
		if err != nil {
			return nil, err
		}
		// Each connection gets the CA bundle and client certificate current when it is dialled.
		opts = append(opts, kgo.Dialer(c.Dialer(&net.Dialer{Timeout: kafkaDialTimeout})))
	}
	if s := cfg.KafkaSASL; s.Mechanism != "" {
		m, err := kafka.SASL(s.Mechanism, s.Username, s.Password)
		if err != nil {
			return nil, err
		}
		opts = append(opts, kgo.SASL(m))
	}
	return opts, nil
}

// listenerTLS are the gateway listeners' TLS configurations (nil: plain text).
type listenerTLS struct{ grpc, http, internal *tls.Config }

// loadListenerTLS loads the gateway listeners' certificates (GRPC_TLS_*, HTTP_TLS_*), reloaded by r. A
// listener without a certificate stays plain text. With gRPC TLS, the REST gateway's own connection to
// the gRPC listener gets the internal client identity (see tlsconfig.Server.InternalClient), so it
// passes mutual TLS too.
func loadListenerTLS(cfg config.Config, r *tlsconfig.Reloader) (l listenerTLS, err error) {
	if t := cfg.GRPCTLS; t.Enabled() {
		s, err := r.Server("grpc", tlsconfig.Files{Setting: "GRPC_TLS", CertFile: t.CertFile, KeyFile: t.KeyFile, CAFile: t.ClientCAFile})
		if err != nil {
			return l, err
		}
		if l.internal, err = s.InternalClient(); err != nil {
			return l, err
		}
		l.grpc = s.Config() // gRPC's credentials offer "h2" by ALPN
	}
	l.http, err = httpTLS(cfg, r)
	return l, err
}

// httpTLS loads the HTTP listener's certificate (HTTP_TLS_*), reloaded by r; nil without one.
func httpTLS(cfg config.Config, r *tlsconfig.Reloader) (*tls.Config, error) {
	t := cfg.HTTPTLS
	if !t.Enabled() {
		return nil, nil
	}
	s, err := r.Server("http", tlsconfig.Files{Setting: "HTTP_TLS", CertFile: t.CertFile, KeyFile: t.KeyFile, CAFile: t.ClientCAFile})
	if err != nil {
		return nil, err
	}
	return s.Config("h2", "http/1.1"), nil
}

// opsHTTPTLS wraps the health listener of a process without the gateway (HTTP_ADDR) in TLS when
// HTTP_TLS_* are set, as the gateway's HTTP listener is. On error it closes l.
func opsHTTPTLS(l net.Listener, cfg config.Config, r *tlsconfig.Reloader) (net.Listener, error) {
	c, err := httpTLS(cfg, r)
	if err != nil {
		_ = l.Close()
		return nil, err
	}
	if c == nil {
		return l, nil
	}
	return tls.NewListener(l, c), nil
}

// tlsReloads is the lifecycle actor that keeps the process's certificates current: it reloads them when
// their files change and on SIGHUP, until ctx ends. The signal is subscribed to at once (before the
// process reports ready), so a SIGHUP never falls on the default action, which would end the process.
func tlsReloads(r *tlsconfig.Reloader) func(context.Context) error {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	return func(ctx context.Context) error {
		defer signal.Stop(hup)
		return r.Run(ctx, hup)
	}
}
