package app

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/msgplatform/platform/internal/embedded"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/testenv"
	"github.com/msgplatform/platform/internal/tlsconfig"
	"github.com/msgplatform/platform/internal/tlsconfig/tlstest"
)

// SecureKafka is a kfake broker that requires TLS (its certificate signed by CA, for 127.0.0.1) and SASL
// (User with Password, by PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512), with every platform topic, and,
// with a client CA, a client certificate too.
type SecureKafka struct {
	Addr           string
	CA             *tlstest.CA
	User, Password string
}

// StartSecureKafka starts a SecureKafka for the test; clientCA, when not nil, makes it require client
// certificates it signed (mutual TLS).
func StartSecureKafka(t testing.TB, clientCA *tlstest.CA) *SecureKafka {
	t.Helper()
	k := &SecureKafka{CA: tlstest.NewCA(t, "kafka CA"), User: "platform", Password: "s3cret-pass"}
	srv := &tls.Config{Certificates: []tls.Certificate{k.CA.Server(t, "127.0.0.1").TLS(t)}, MinVersion: tls.VersionTLS12}
	if clientCA != nil {
		srv.ClientAuth, srv.ClientCAs = tls.RequireAndVerifyClientCert, clientCA.Pool()
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.TLS(srv), kfake.EnableSASL(),
		kfake.Superuser("PLAIN", k.User, k.Password),
		kfake.Superuser("SCRAM-SHA-256", k.User, k.Password),
		kfake.Superuser("SCRAM-SHA-512", k.User, k.Password),
		kfake.SeedTopics(embedded.KafkaPartitions, kafka.Topics...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	k.Addr = c.ListenAddrs()[0]
	return k
}

// The production connection options (kafkaConn, from KAFKA_TLS_* and KAFKA_SASL_*) reach a broker that
// requires TLS and SASL, by each mechanism and with a client certificate; a wrong password, no SASL, no
// TLS, or a broker certificate of another CA fail.
func TestKafkaConnTLSAndSASL(t *testing.T) {
	dir := t.TempDir()
	clientCA := tlstest.NewCA(t, "kafka clients CA")
	k := StartSecureKafka(t, clientCA)
	caFile := k.CA.WriteFile(t, dir, "kafka-ca.pem")
	certFile, keyFile := clientCA.Client(t, "platform").WriteFiles(t, dir, "kafka-client")
	otherCA := tlstest.NewCA(t, "other CA").WriteFile(t, dir, "other-ca.pem")
	secure := func(vars map[string]string) map[string]string {
		v := map[string]string{"KAFKA_BROKERS": k.Addr,
			"KAFKA_TLS_ENABLED": "true", "KAFKA_TLS_CA_FILE": caFile, "KAFKA_TLS_CERT_FILE": certFile, "KAFKA_TLS_KEY_FILE": keyFile,
			"KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": k.User, "KAFKA_SASL_PASSWORD": k.Password}
		for name, val := range vars {
			if val == "-" {
				delete(v, name)
			} else {
				v[name] = val
			}
		}
		return v
	}
	for _, tc := range []struct {
		name string
		vars map[string]string
		want string // "": connects; otherwise part of the error (any error when "-")
	}{
		{"SCRAM-SHA-512 over mutual TLS", secure(nil), ""},
		{"SCRAM-SHA-256", secure(map[string]string{"KAFKA_SASL_MECHANISM": "SCRAM-SHA-256"}), ""},
		{"PLAIN", secure(map[string]string{"KAFKA_SASL_MECHANISM": "plain"}), ""},
		{"wrong password", secure(map[string]string{"KAFKA_SASL_PASSWORD": "wrong"}), "-"}, // kfake hangs up
		{"unknown user", secure(map[string]string{"KAFKA_SASL_USERNAME": "mallory"}), "-"},
		{"no SASL", secure(map[string]string{"KAFKA_SASL_MECHANISM": "-", "KAFKA_SASL_USERNAME": "-", "KAFKA_SASL_PASSWORD": "-"}), "SASL"},
		{"no client certificate", secure(map[string]string{"KAFKA_TLS_CERT_FILE": "-", "KAFKA_TLS_KEY_FILE": "-"}), "certificate required"},
		{"broker of another CA", secure(map[string]string{"KAFKA_TLS_CA_FILE": otherCA}), "unknown authority"},
		{"plain text", secure(map[string]string{"KAFKA_TLS_ENABLED": "-", "KAFKA_TLS_CA_FILE": "-", "KAFKA_TLS_CERT_FILE": "-", "KAFKA_TLS_KEY_FILE": "-"}), "TLS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testenv.Config(t, tc.vars)
			r, err := tlsconfig.New(nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err != nil {
				t.Fatal(err)
			}
			opts, err := kafkaConn(cfg, r)
			if err != nil {
				t.Fatal(err)
			}
			cl, err := kgo.NewClient(opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if tc.want == "" {
				if err := cl.ProduceSync(ctx, &kgo.Record{Topic: kafka.TopicEvents, Value: []byte("hello")}).FirstErr(); err != nil {
					t.Fatalf("produce: %v", err)
				}
				return
			}
			err = cl.Ping(ctx)
			if err == nil || (tc.want != "-" && !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("ping: %v, want an error (%s)", err, tc.want)
			}
		})
	}
}
