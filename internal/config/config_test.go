package config

import (
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) Getenv { return func(k string) string { return m[k] } }

func TestLoadDefaults(t *testing.T) {
	c, err := Load(env(nil))
	if err != nil {
		t.Fatalf("Load with no environment: %v", err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"GRPC_ADDR", c.GRPCAddr, ":9090"},
		{"HTTP_ADDR", c.HTTPAddr, ":8080"},
		{"METRICS_ADDR", c.MetricsAddr, ":9464"},
		{"MONGO_DATABASE", c.MongoDatabase, "platform"},
		{"SHUTDOWN_TIMEOUT", c.ShutdownTimeout, 30 * time.Second},
		{"HEALTH_CHECK_TIMEOUT", c.HealthCheckTimeout, 5 * time.Second},
		{"LOG_LEVEL", c.LogLevel, slog.LevelInfo},
		{"LOG_FORMAT", c.LogFormat, "json"},
		{"DEVSTACK_KAFKA_ADDR", c.Devstack.KafkaAddr, "127.0.0.1:19092"},
		{"DEVSTACK_MONGO_ADDR", c.Devstack.MongoAddr, "127.0.0.1:27018"},
		{"DEVSTACK_REDIS_ADDR", c.Devstack.RedisAddr, "127.0.0.1:16379"},
		{"WATCHERS_ENABLED", c.WatchersEnabled, true},
		{"DLQ_SCHEDULER_ENABLED", c.DLQSchedulerEnabled, true},
		{"PIPELINE_MAX_POLL_RECORDS", c.Pipeline.MaxPollRecords, 4000},
		{"PIPELINE_BULK_MAX_DELAY", c.Pipeline.BulkMaxDelay, 2 * time.Millisecond},
		{"PIPELINE_TRANSIENT_RETRY_TIMEOUT", c.Pipeline.TransientRetryTimeout, time.Duration(0)},
		{"DLQ_MAX_ATTEMPTS", c.DLQ.MaxAttempts, 5},
	}
	for _, tc := range checks {
		if tc.got != tc.want {
			t.Errorf("%s default = %v, want %v", tc.name, tc.got, tc.want)
		}
	}
	if len(c.KafkaBrokers) != 0 || c.MongoURI != "" || c.RedisURL != "" {
		t.Errorf("external dependencies must default to empty (embedded in devstack), got %+v", c)
	}
	if err := c.RequireExternal(); err == nil || !strings.Contains(err.Error(), "KAFKA_BROKERS, MONGO_URI, REDIS_URL, KAFKA_SIGNING_KEYS") {
		t.Errorf("RequireExternal = %v, want it to name the four missing variables", err)
	}
}

func TestLoadValues(t *testing.T) {
	c, err := Load(env(map[string]string{
		"KAFKA_BROKERS":            " k1:9092, k2:9092 ,",
		"MONGO_URI":                "mongodb://user:secret@db:27017/?replicaSet=rs0",
		"REDIS_URL":                "redis://redis:6379/0",
		"SHUTDOWN_TIMEOUT":         "45s",
		"LOG_LEVEL":                "debug",
		"LOG_FORMAT":               "TEXT",
		"KAFKA_SIGNING_KEYS":       "k2=second-secret-0123456789abcdefghijklmnop,k1=first-secret-0123456789abcdefghijklmnopq",
		"RATE_LIMIT_PRINCIPAL_RPS": "0", "RATE_LIMIT_PRINCIPAL_BURST": "0", "RATE_LIMIT_TENANT_RPS": "2.5",
		"GRPC_TLS_CERT_FILE": "/tls/c.pem", "GRPC_TLS_KEY_FILE": "/tls/k.pem", "GRPC_TLS_CLIENT_CA_FILE": "/tls/ca.pem",
		"KAFKA_TLS_ENABLED": "true", "KAFKA_SASL_MECHANISM": "scram-sha-256", "KAFKA_SASL_USERNAME": "svc",
		"KAFKA_SASL_PASSWORD": " pass word ",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if rl := c.RateLimit; rl.PrincipalRPS != 0 || rl.TenantRPS != 2.5 || rl.TenantBurst != 4000 {
		t.Errorf("RateLimit = %+v", rl)
	}
	if !c.GRPCTLS.Enabled() || c.GRPCTLS.ClientCAFile != "/tls/ca.pem" || c.HTTPTLS.Enabled() {
		t.Errorf("GRPCTLS = %+v, HTTPTLS = %+v", c.GRPCTLS, c.HTTPTLS)
	}
	if s := c.KafkaSASL; !c.KafkaTLS.Enabled || s.Mechanism != "SCRAM-SHA-256" || s.Password != " pass word " {
		t.Errorf("Kafka TLS %+v, SASL mechanism %q, password kept as given: %v", c.KafkaTLS, s.Mechanism, s.Password == " pass word ")
	}
	if strings.Join(c.KafkaBrokers, ",") != "k1:9092,k2:9092" {
		t.Errorf("KafkaBrokers = %q", c.KafkaBrokers)
	}
	if c.ShutdownTimeout != 45*time.Second || c.LogLevel != slog.LevelDebug || c.LogFormat != "text" {
		t.Errorf("got %v %v %q", c.ShutdownTimeout, c.LogLevel, c.LogFormat)
	}
	if err := c.RequireExternal(); err != nil {
		t.Errorf("RequireExternal: %v", err)
	}
	if k := c.KafkaSigningKeys; k == nil || k.SigningKeyID() != "k2" || strings.Join(k.KeyIDs(), ",") != "k2,k1" {
		t.Errorf("KafkaSigningKeys = %v, want k2 signing, k1 verifying too", k)
	}
}

func TestLoadRejectsBadValues(t *testing.T) {
	tests := []struct {
		name, value string
	}{
		{"GRPC_ADDR", "9090"},
		{"HTTP_ADDR", "localhost"},
		{"METRICS_ADDR", "no port"},
		{"KAFKA_BROKERS", "k1:9092,k2"},
		{"MONGO_URI", "postgres://db"},
		{"REDIS_URL", "http://redis:6379"},
		{"KAFKA_SIGNING_KEYS", "nokey"},
		{"KAFKA_SIGNING_KEYS", "k1=short"},
		{"KAFKA_SIGNING_KEYS", "k1=" + strings.Repeat("a", 40)},
		{"PIPELINE_STALL_AFTER", "0s"},
		{"WATCHERS_ENABLED", "sometimes"},
		{"PIPELINE_MAX_POLL_RECORDS", "0"},
		{"PIPELINE_BULK_MAX_DELAY", "0s"},
		{"DLQ_MAX_ATTEMPTS", "-1"},
		{"SHUTDOWN_TIMEOUT", "30"},
		{"SHUTDOWN_DRAIN_DELAY", "-1s"},
		{"HEALTH_CHECK_TIMEOUT", "0s"},
		{"HEALTH_CHECK_INTERVAL", "soon"},
		{"LOG_LEVEL", "loud"},
		{"LOG_FORMAT", "xml"},
		{"MONGO_WRITE_CONCERN", "all"},
		{"MONGO_BREAKER_FAILURE_RATIO", "1.5"},
		{"MONGO_BREAKER_COOLDOWN", "0s"},
		{"DEVSTACK_MONGO_ADDR", "27018"},
		{"AUTH_MAX_TOKEN_TTL", "0s"},
		{"RATE_LIMIT_PRINCIPAL_RPS", "-1"},
		{"RATE_LIMIT_TENANT_RPS", "lots"},
		{"RATE_LIMIT_PRINCIPAL_BURST", "1"},
		{"RATE_LIMIT_TENANT_BURST", "-5"},
		{"STREAM_MAX_PER_PRINCIPAL", "0"},
		{"GRPC_TLS_CERT_FILE", "/tls/cert.pem"},
		{"HTTP_TLS_KEY_FILE", "/tls/key.pem"},
		{"GRPC_TLS_CLIENT_CA_FILE", "/tls/ca.pem"},
		{"KAFKA_TLS_CA_FILE", "/tls/ca.pem"},
		{"KAFKA_TLS_ENABLED", "maybe"},
		{"KAFKA_SASL_MECHANISM", "GSSAPI"},
		{"KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"},
		{"KAFKA_SASL_USERNAME", "alice"},
		{"OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"},
		{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "udp"},
		{"OTEL_TRACES_EXPORTER", "zipkin"},
		{"OTEL_TRACES_SAMPLER", "sometimes"},
		{"OTEL_TRACES_SAMPLER_ARG", "2"},
		{"OTEL_SDK_DISABLED", "perhaps"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(env(map[string]string{tc.name: tc.value}))
			if err == nil {
				t.Fatalf("%s=%q accepted", tc.name, tc.value)
			}
			if !strings.Contains(err.Error(), tc.name) {
				t.Errorf("error %q does not name %s", err, tc.name)
			}
			if _, sec, ok := strings.Cut(tc.value, "="); ok && tc.name == "KAFKA_SIGNING_KEYS" && strings.Contains(err.Error(), sec) {
				t.Errorf("error %q repeats the secret", err)
			}
		})
	}
}

// Tracing is off unless an OTLP endpoint (or OTEL_TRACES_EXPORTER=otlp) says otherwise, and the
// transport is gRPC unless a protocol variable says http/protobuf, the traces-only one winning.
func TestLoadTracing(t *testing.T) {
	const endpoint = "http://collector:4317"
	for _, tc := range []struct {
		name         string
		vars         map[string]string
		want         bool
		wantProtocol string
	}{
		{"default", nil, false, "grpc"},
		{"endpoint", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}, true, "grpc"},
		{"traces endpoint", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint}, true, "grpc"},
		{"exporter otlp, SDK's default endpoint", map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, true, "grpc"},
		{"exporter none", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_TRACES_EXPORTER": "none"}, false, "grpc"},
		{"SDK disabled", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_SDK_DISABLED": "true"}, false, "grpc"},
		{"http", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, true, "http/protobuf"},
		{"traces protocol wins", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
			"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}, true, "grpc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Load(env(tc.vars))
			if err != nil {
				t.Fatal(err)
			}
			if c.Tracing.Enabled != tc.want || c.Tracing.Protocol != tc.wantProtocol {
				t.Errorf("tracing %v over %q, want %v over %q", c.Tracing.Enabled, c.Tracing.Protocol, tc.want, tc.wantProtocol)
			}
		})
	}
}

func TestLoadReportsEveryProblem(t *testing.T) {
	_, err := Load(env(map[string]string{"GRPC_ADDR": "x", "LOG_FORMAT": "xml"}))
	if err == nil || !strings.Contains(err.Error(), "GRPC_ADDR") || !strings.Contains(err.Error(), "LOG_FORMAT") {
		t.Fatalf("want both variables named, got %v", err)
	}
}

func TestErrorsNeverEchoSecrets(t *testing.T) {
	_, err := Load(env(map[string]string{"MONGO_URI": "postgres://u:hunter2@db", "GRPC_ADDR": "x"}))
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("error must not contain the password: %v", err)
	}
}

func TestVarsAreKnownAndUnique(t *testing.T) {
	seen := map[string]bool{}
	for _, v := range Vars {
		if seen[v.Name] {
			t.Errorf("%s listed twice", v.Name)
		}
		seen[v.Name] = true
		if !Known(v.Name) || v.Help == "" {
			t.Errorf("%s: Known=%v help=%q", v.Name, Known(v.Name), v.Help)
		}
	}
	if Known("NOT_A_VAR") {
		t.Error("Known accepted an unknown name")
	}
}

// TestDocsListEveryVariable keeps the configuration table of docs/operations.md in step with Vars.
func TestDocsListEveryVariable(t *testing.T) {
	doc, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range Vars {
		def := "(empty)"
		if v.Default != "" {
			def = "`" + v.Default + "`"
		}
		row := "| `" + v.Name + "` | " + def + " | " + v.Help + " |"
		if !strings.Contains(string(doc), row) {
			t.Errorf("docs/operations.md lacks the row\n%s", row)
		}
	}
}

// The devstack listens on loopback only unless told otherwise; the production defaults stay as documented.
func TestDevstackDefaultsBindLoopback(t *testing.T) {
	for _, name := range []string{"GRPC_ADDR", "HTTP_ADDR", "METRICS_ADDR"} {
		t.Setenv(name, "")
	}
	for _, name := range []string{"DEVSTACK_KAFKA_ADDR", "DEVSTACK_MONGO_ADDR", "DEVSTACK_REDIS_ADDR"} {
		t.Setenv(name, "")
	}
	dev, err := FromEnvWithDefaults(DevstackDefaults)
	if err != nil {
		t.Fatal(err)
	}
	for name, addr := range map[string]string{"GRPC_ADDR": dev.GRPCAddr, "HTTP_ADDR": dev.HTTPAddr, "METRICS_ADDR": dev.MetricsAddr,
		"DEVSTACK_KAFKA_ADDR": dev.Devstack.KafkaAddr, "DEVSTACK_MONGO_ADDR": dev.Devstack.MongoAddr, "DEVSTACK_REDIS_ADDR": dev.Devstack.RedisAddr} {
		if host, _, err := net.SplitHostPort(addr); err != nil || host != "127.0.0.1" {
			t.Errorf("devstack %s = %q, want a 127.0.0.1 address", name, addr)
		}
	}
	t.Setenv("HTTP_ADDR", ":18080")
	if dev, err := FromEnvWithDefaults(DevstackDefaults); err != nil || dev.HTTPAddr != ":18080" {
		t.Errorf("HTTP_ADDR set: devstack listens on %q (%v), want the setting", dev.HTTPAddr, err)
	}
	t.Setenv("HTTP_ADDR", "")
	prod, err := FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if prod.GRPCAddr != ":9090" || prod.HTTPAddr != ":8080" {
		t.Errorf("production defaults changed: %s %s", prod.GRPCAddr, prod.HTTPAddr)
	}
}
