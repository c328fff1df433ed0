// Package config reads every environment variable the platform's processes understand, in one place,
// with the defaults documented in docs (the configuration table, kept in sync by a test). The services
// and libraries receive a Config or values taken from it; nothing else reads these variables. (The
// developer tools, services/token and services/loadgen, read their own flags and defaults, and the test
// helpers read CI.)
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/msgplatform/platform/internal/envelope"
)

// Config is the whole configuration of the gateway, the pipeline and the devstack.
type Config struct {
	GRPCAddr    string
	HTTPAddr    string
	MetricsAddr string

	KafkaBrokers []string
	// ProduceTimeout bounds how long a produce (SendMessage, events, DLQ) waits for Kafka's
	// acknowledgement before failing, so a Kafka outage answers UNAVAILABLE instead of hanging.
	ProduceTimeout time.Duration
	// KafkaSigningKeys sign the records the platform produces and verify the ones it consumes
	// (KAFKA_SIGNING_KEYS); nil when unset, which only the devstack accepts (it makes its own).
	KafkaSigningKeys *envelope.Keys
	// KafkaSessionTimeout: a consumer-group member not heard from for this long is dropped and its
	// partitions move to the others (how long a crashed pipeline's partitions wait).
	KafkaSessionTimeout time.Duration
	// PipelineStallAfter: a partition of messages.inbound with records waiting and no commit for this
	// long makes the pipeline dependency DEGRADED.
	PipelineStallAfter time.Duration
	MongoURI           string
	MongoDatabase      string
	// MongoWriteConcern is "majority" or a number of nodes, for the pipeline's message inserts.
	MongoWriteConcern string
	// Circuit breaker around MongoDB: open at this failure ratio (over at least 10 calls in a window),
	// probe again after this cool-down.
	MongoBreakerRatio    float64
	MongoBreakerCoolDown time.Duration
	RedisURL             string

	AuthHMACSecret string
	AuthJWKSFile   string
	AuthIssuer     string
	AuthAudience   string
	// AuthMaxTokenTTL bounds a token's lifetime: exp - iat, or exp - now without iat.
	AuthMaxTokenTTL time.Duration

	// RateLimit holds the per-principal and per-tenant quotas (RATE_LIMIT_*).
	RateLimit RateLimit
	// StreamMaxPerPrincipal caps the live StreamMessages one principal holds open at once, per gateway.
	StreamMaxPerPrincipal int
	// StreamKeepAlive is the period of the keep-alive comment of REST server-sent event streams.
	StreamKeepAlive time.Duration

	// TLS of the gRPC and HTTP listeners (GRPC_TLS_*, HTTP_TLS_*) and of the Kafka clients (KAFKA_TLS_*,
	// KAFKA_SASL_*). MongoDB and Redis take theirs from their URIs (tls=true, rediss://).
	GRPCTLS   ServerTLS
	HTTPTLS   ServerTLS
	KafkaTLS  KafkaTLS
	KafkaSASL KafkaSASL

	ShutdownTimeout    time.Duration
	DrainDelay         time.Duration
	HealthCheckTimeout time.Duration
	HealthInterval     time.Duration

	LogLevel  slog.Level
	LogFormat string

	// Tracing is the OpenTelemetry tracing (OTEL_*): off unless an OTLP endpoint is set.
	Tracing Tracing

	// WatchersEnabled runs the change-stream watchers in this pipeline process (run them in one replica);
	// DLQSchedulerEnabled runs the dead-letter retry scheduler (safe in every replica: claims are fenced).
	WatchersEnabled     bool
	DLQSchedulerEnabled bool

	Pipeline Pipeline
	DLQ      DLQ

	Devstack Devstack
}

// Pipeline holds the ingest pipeline's tunables (PIPELINE_*).
type Pipeline struct {
	MaxPollRecords  int
	BulkMaxDocs     int
	BulkMaxDelay    time.Duration
	BulkMaxInFlight int
	RetryMax        time.Duration
	StageTimeout    time.Duration
	// TransientRetryTimeout, when positive, dead-letters (class transient) a record still failing
	// transiently after that long; zero retries until the dependency is back.
	TransientRetryTimeout time.Duration
}

// RateLimit holds the quotas (RATE_LIMIT_*): token buckets refilled at RPS cost units per second up to
// Burst, shared by the gateway replicas through Redis. A zero RPS disables that limit.
type RateLimit struct {
	PrincipalRPS   float64
	PrincipalBurst int
	TenantRPS      float64
	TenantBurst    int
}

// ServerTLS is a listener's certificate and, for mutual TLS, the CA its clients' certificates must chain
// to. Empty CertFile: plain text.
type ServerTLS struct {
	CertFile, KeyFile, ClientCAFile string
}

// Enabled reports whether the listener serves TLS.
func (t ServerTLS) Enabled() bool { return t.CertFile != "" }

// KafkaTLS is the Kafka clients' TLS: CAFile verifies the brokers (system roots when empty); CertFile and
// KeyFile are the client certificate for mutual TLS.
type KafkaTLS struct {
	Enabled                   bool
	CAFile, CertFile, KeyFile string
}

// KafkaSASL is the Kafka clients' SASL authentication; an empty Mechanism is none.
type KafkaSASL struct {
	Mechanism          string // PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512
	Username, Password string
}

// DLQ holds the dead-letter retry policy (DLQ_*).
type DLQ struct {
	MaxAttempts  int
	InitialDelay time.Duration
	MaxDelay     time.Duration
}

// Tracing says whether spans are exported over OTLP. Only the switch is decided here: the exporter,
// sampler and resource read the standard OTEL_* variables themselves (internal/tracing), and the ones the
// platform relies on are listed in Vars with their defaults.
type Tracing struct {
	// Enabled: OTEL_TRACES_EXPORTER=otlp, or unset with OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT set; never
	// with OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none.
	Enabled bool
	// ServiceName is OTEL_SERVICE_NAME; empty: the process names itself by its roles.
	ServiceName string
	// Protocol is the OTLP transport: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, else OTEL_EXPORTER_OTLP_PROTOCOL;
	// one of OTLPProtocols.
	Protocol string
}

// OTLPProtocols are the OTLP transports the exporter speaks: gRPC (collectors listen on 4317; the default
// here, as before the variable was read) and protobuf over HTTP (4318, /v1/traces). The SDK's http/json
// is not implemented in Go.
var OTLPProtocols = []string{"grpc", "http/protobuf"}

// Devstack holds the settings only services/devstack reads.
type Devstack struct {
	KafkaAddr string
	MongoAddr string
	RedisAddr string
	DataDir   string
}

// Var documents one environment variable.
type Var struct {
	Name    string
	Default string
	Help    string
}

// Vars lists every variable Load reads, in the order of the configuration table of docs/operations.md.
// The compose test checks docker-compose.yml against it, and that table is written from it.
var Vars = []Var{
	{"GRPC_ADDR", ":9090", "gRPC listen address (platform.v1 services, grpc.health.v1, reflection)"},
	{"HTTP_ADDR", ":8080", "REST (grpc-gateway) listen address, with /healthz and /readyz"},
	{"METRICS_ADDR", ":9464", "Prometheus /metrics listen address"},
	{"KAFKA_BROKERS", "", "comma-separated seed brokers (host:port); required outside devstack"},
	{"KAFKA_PRODUCE_TIMEOUT", "10s", "how long a produce waits for Kafka's acknowledgement before the call fails with UNAVAILABLE"},
	{"KAFKA_SIGNING_KEYS", "", "record signing keys, `kid=secret[,kid2=secret2…]` (secrets of at least 32 random bytes): the first signs, all verify; required outside devstack, which makes its own"},
	{"KAFKA_SESSION_TIMEOUT", "45s", "consumer groups: a member not heard from for this long (a crashed process) is dropped and its partitions move to the others"},
	{"PIPELINE_STALL_AFTER", "30s", "a messages.inbound partition with records waiting and no commit for this long makes the `pipeline` dependency DEGRADED in /v1/health"},
	{"MONGO_URI", "", "MongoDB connection string (TLS through its options: tls=true, tlsCAFile, tlsCertificateKeyFile); required outside devstack"},
	{"MONGO_DATABASE", "platform", "MongoDB database name"},
	{"MONGO_BREAKER_FAILURE_RATIO", "0.5", "share of failing MongoDB calls (transient errors, at least 10 calls in 10 s) that opens the circuit breaker"},
	{"MONGO_BREAKER_COOLDOWN", "5s", "how long the open circuit fails calls fast before letting a probe through"},
	{"MONGO_WRITE_CONCERN", "majority", "write concern of the pipeline's message inserts: majority or a number of nodes (FerretDB ignores it)"},
	{"REDIS_URL", "", "Redis URL (redis://[:password@]host:port/db, rediss:// for TLS); required outside devstack"},
	{"AUTH_HMAC_SECRET", "", "HS256 secret for bearer JWTs (at least 32 bytes)"},
	{"AUTH_JWKS_FILE", "", "path of a JWKS file with RS256/ES256 public keys"},
	{"AUTH_ISSUER", "", "required JWT `iss` when set"},
	{"AUTH_AUDIENCE", "", "required JWT `aud` when set"},
	{"AUTH_MAX_TOKEN_TTL", "24h", "longest token lifetime accepted: `exp - iat`, or `exp - now` when `iat` is absent"},
	{"RATE_LIMIT_PRINCIPAL_RPS", "50", "quota of one principal (subject of a tenant), in cost units per second (a read costs 1, a mutation 2, over all gateway replicas through Redis); 0 disables"},
	{"RATE_LIMIT_PRINCIPAL_BURST", "100", "burst of the principal quota, in cost units"},
	{"RATE_LIMIT_TENANT_RPS", "2000", "quota of one tenant (all its principals), in cost units per second; 0 disables"},
	{"RATE_LIMIT_TENANT_BURST", "4000", "burst of the tenant quota, in cost units"},
	{"STREAM_MAX_PER_PRINCIPAL", "16", "live StreamMessages one principal may hold open on one gateway; more are RESOURCE_EXHAUSTED"},
	{"STREAM_KEEPALIVE", "15s", "REST server-sent event streams: period of the `: keep-alive` comment a quiet stream sends, so proxies do not time it out"},
	{"GRPC_TLS_CERT_FILE", "", "PEM certificate (chain) of the gRPC listener; TLS when set (reloaded when the file changes or on SIGHUP)"},
	{"GRPC_TLS_KEY_FILE", "", "PEM private key of GRPC_TLS_CERT_FILE"},
	{"GRPC_TLS_CLIENT_CA_FILE", "", "PEM CA bundle: when set, gRPC clients must present a certificate it signed (mutual TLS)"},
	{"HTTP_TLS_CERT_FILE", "", "PEM certificate (chain) of the HTTP listener (REST, /healthz, /readyz); TLS when set (reloaded when the file changes or on SIGHUP)"},
	{"HTTP_TLS_KEY_FILE", "", "PEM private key of HTTP_TLS_CERT_FILE"},
	{"HTTP_TLS_CLIENT_CA_FILE", "", "PEM CA bundle: when set, HTTP clients must present a certificate it signed (mutual TLS)"},
	{"KAFKA_TLS_ENABLED", "false", "connect to the Kafka brokers over TLS"},
	{"KAFKA_TLS_CA_FILE", "", "PEM CA bundle verifying the brokers (system roots when empty); the KAFKA_TLS_* files reload when they change or on SIGHUP"},
	{"KAFKA_TLS_CERT_FILE", "", "PEM client certificate for mutual TLS with the brokers"},
	{"KAFKA_TLS_KEY_FILE", "", "PEM private key of KAFKA_TLS_CERT_FILE"},
	{"KAFKA_SASL_MECHANISM", "", "SASL mechanism: PLAIN (sends the password as is: use with KAFKA_TLS_ENABLED), SCRAM-SHA-256 or SCRAM-SHA-512; empty for none"},
	{"KAFKA_SASL_USERNAME", "", "SASL user name"},
	{"KAFKA_SASL_PASSWORD", "", "SASL password"},
	{"SHUTDOWN_TIMEOUT", "30s", "bound on graceful shutdown (drain, in-flight RPCs, flush)"},
	{"SHUTDOWN_DRAIN_DELAY", "2s", "time between readiness turning 503 and the listeners closing"},
	{"HEALTH_CHECK_TIMEOUT", "5s", "timeout of one dependency check"},
	{"HEALTH_CHECK_INTERVAL", "5s", "period of the background dependency checks"},
	{"LOG_LEVEL", "info", "debug, info, warn or error"},
	{"LOG_FORMAT", "json", "json or text (devstack defaults to text)"},
	{"OTEL_SDK_DISABLED", "false", "tracing: true turns OpenTelemetry tracing off whatever the other OTEL_* say"},
	{"OTEL_TRACES_EXPORTER", "", "tracing: `otlp` or `none`; unset, spans are exported (OTLP over gRPC) only when an OTLP endpoint below is set, so tracing is off by default"},
	{"OTEL_EXPORTER_OTLP_ENDPOINT", "", "tracing: OTLP/gRPC collector, e.g. `http://jaeger:4317` (`http://` for plain text); setting it turns tracing on"},
	{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "", "tracing: the same for traces only (wins over OTEL_EXPORTER_OTLP_ENDPOINT)"},
	{"OTEL_EXPORTER_OTLP_PROTOCOL", "grpc", "tracing: OTLP transport, `grpc` (collectors listen on 4317) or `http/protobuf` (4318); the platform's default is grpc, the OpenTelemetry specification's http/protobuf"},
	{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "", "tracing: the same for traces only (wins over OTEL_EXPORTER_OTLP_PROTOCOL)"},
	{"OTEL_SERVICE_NAME", "", "tracing: service.name of the spans; empty: platform-gateway, platform-pipeline or platform (both roles)"},
	{"OTEL_TRACES_SAMPLER", "parentbased_always_on", "tracing: sampler (always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio)"},
	{"OTEL_TRACES_SAMPLER_ARG", "", "tracing: the ratio of a traceidratio sampler, 0 to 1 (1 when empty)"},
	{"WATCHERS_ENABLED", "true", "pipeline: run the change-stream watchers in this process; enable in exactly one replica"},
	{"DLQ_SCHEDULER_ENABLED", "true", "pipeline: run the dead-letter retry scheduler in this process (every replica may: claims are fenced)"},
	{"PIPELINE_MAX_POLL_RECORDS", "4000", "pipeline: records of one polled batch (with the fetch limits, bounds memory)"},
	{"PIPELINE_BULK_MAX_DOCS", "500", "pipeline: messages per InsertMany of the bulk writer"},
	{"PIPELINE_BULK_MAX_DELAY", "2ms", "pipeline: how long the bulk writer waits to fill an InsertMany"},
	{"PIPELINE_BULK_MAX_IN_FLIGHT", "2", "pipeline: InsertMany commands running at once"},
	{"PIPELINE_RETRY_MAX", "5s", "pipeline: cap of the backoff between retries of a stage after transient failures"},
	{"PIPELINE_STAGE_TIMEOUT", "30s", "pipeline: bound of one attempt of a stage over a batch (a hung dependency becomes a transient failure)"},
	{"PIPELINE_TRANSIENT_RETRY_TIMEOUT", "0s", "pipeline: dead-letter a record still failing transiently after this long; 0 retries until the dependency is back"},
	{"DLQ_MAX_ATTEMPTS", "5", "dead letters: failed tries after which a transient failure is parked instead of retried"},
	{"DLQ_RETRY_INITIAL_DELAY", "1s", "dead letters: delay before the first automatic retry (doubling per attempt)"},
	{"DLQ_RETRY_MAX_DELAY", "1m", "dead letters: cap of the delay between automatic retries"},
	{"DEVSTACK_KAFKA_ADDR", "127.0.0.1:19092", "devstack: embedded Kafka (kfake) address when KAFKA_BROKERS is empty"},
	{"DEVSTACK_MONGO_ADDR", "127.0.0.1:27018", "devstack: embedded MongoDB-wire (FerretDB) address when MONGO_URI is empty"},
	{"DEVSTACK_REDIS_ADDR", "127.0.0.1:16379", "devstack: embedded Redis (miniredis) address when REDIS_URL is empty"},
	{"DEVSTACK_DATA_DIR", "<os temp dir>/platform-devstack", "devstack: FerretDB's SQLite files"},
}

// samplers are the OTEL_TRACES_SAMPLER values the SDK understands.
var samplers = []string{"always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio"}

// loadTracing reads the tracing switch (Tracing) and checks the OTEL_* values the SDK would otherwise
// ignore or misread silently.
func loadTracing(get func(string) string, errs *[]error) Tracing {
	t := Tracing{ServiceName: get("OTEL_SERVICE_NAME")}
	disabled, err := strconv.ParseBool(get("OTEL_SDK_DISABLED"))
	if err != nil {
		*errs = append(*errs, fmt.Errorf("OTEL_SDK_DISABLED=%q: want true or false", get("OTEL_SDK_DISABLED")))
	}
	endpoint := get("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
	switch exp := strings.ToLower(get("OTEL_TRACES_EXPORTER")); exp {
	case "":
		t.Enabled = endpoint
	case "otlp":
		t.Enabled = true
	case "none":
	default:
		*errs = append(*errs, fmt.Errorf("OTEL_TRACES_EXPORTER=%q: want otlp or none", exp))
	}
	t.Enabled = t.Enabled && !disabled
	protocolVar := "OTEL_EXPORTER_OTLP_PROTOCOL"
	if get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") != "" {
		protocolVar = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
	}
	if t.Protocol = strings.ToLower(get(protocolVar)); !slices.Contains(OTLPProtocols, t.Protocol) {
		*errs = append(*errs, fmt.Errorf("%s=%q: want one of %s", protocolVar, t.Protocol, strings.Join(OTLPProtocols, ", ")))
	}
	if s := strings.ToLower(get("OTEL_TRACES_SAMPLER")); !slices.Contains(samplers, s) {
		*errs = append(*errs, fmt.Errorf("OTEL_TRACES_SAMPLER=%q: want one of %s", s, strings.Join(samplers, ", ")))
	}
	if a := get("OTEL_TRACES_SAMPLER_ARG"); a != "" {
		if r, err := strconv.ParseFloat(a, 64); err != nil || r < 0 || r > 1 {
			*errs = append(*errs, fmt.Errorf("OTEL_TRACES_SAMPLER_ARG=%q: want a ratio from 0 to 1", a))
		}
	}
	return t
}

// Known reports whether name is a variable Load reads.
func Known(name string) bool {
	for _, v := range Vars {
		if v.Name == name {
			return true
		}
	}
	return false
}

// Getenv is os.Getenv's shape, so tests can pass a map lookup.
type Getenv func(string) string

// FromEnv loads the configuration from the process environment.
func FromEnv() (Config, error) { return Load(os.Getenv) }

// DevstackDefaults are the defaults `make run` changes: a developer's terminal reads text logs more
// easily than JSON, and a development stack (with its well-known token secret) listens on loopback only
// unless told otherwise. Every listener of the devstack derives from these and the DEVSTACK_*_ADDR ones.
var DevstackDefaults = map[string]string{
	"LOG_FORMAT": "text",
	"GRPC_ADDR":  "127.0.0.1:9090", "HTTP_ADDR": "127.0.0.1:8080", "METRICS_ADDR": "127.0.0.1:9464",
}

// FromEnvWithDefaults is FromEnv with other defaults for some variables (DevstackDefaults).
func FromEnvWithDefaults(defaults map[string]string) (Config, error) {
	return Load(func(name string) string {
		if v := os.Getenv(name); v != "" {
			return v
		}
		return defaults[name]
	})
}

// Load reads and validates the configuration. Every problem is reported, each naming its variable.
func Load(getenv Getenv) (Config, error) {
	defaults := make(map[string]string, len(Vars))
	for _, v := range Vars {
		defaults[v.Name] = v.Default
	}
	get := func(name string) string {
		if v := strings.TrimSpace(getenv(name)); v != "" {
			return v
		}
		return defaults[name]
	}
	var errs []error
	addr := func(name string) string {
		v := get(name)
		if _, _, err := net.SplitHostPort(v); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: want host:port: %w", name, v, err))
		}
		return v
	}
	boolean := func(name string) bool {
		v, err := strconv.ParseBool(get(name))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: want true or false", name, get(name)))
		}
		return v
	}
	positiveInt := func(name string) int {
		n, err := strconv.Atoi(get(name))
		if err != nil || n <= 0 {
			errs = append(errs, fmt.Errorf("%s=%q: want a positive integer", name, get(name)))
		}
		return n
	}
	nonNegativeInt := func(name string) int {
		n, err := strconv.Atoi(get(name))
		if err != nil || n < 0 {
			errs = append(errs, fmt.Errorf("%s=%q: want a non-negative integer", name, get(name)))
		}
		return n
	}
	rate := func(name string) float64 {
		r, err := strconv.ParseFloat(get(name), 64)
		if err != nil || r < 0 || math.IsInf(r, 0) || math.IsNaN(r) {
			errs = append(errs, fmt.Errorf("%s=%q: want a non-negative number (0 disables)", name, get(name)))
		}
		return r
	}
	duration := func(name string) time.Duration {
		v := get(name)
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			errs = append(errs, fmt.Errorf("%s=%q: want a non-negative duration such as 5s", name, v))
		}
		return d
	}

	c := Config{
		GRPCAddr:             addr("GRPC_ADDR"),
		HTTPAddr:             addr("HTTP_ADDR"),
		MetricsAddr:          addr("METRICS_ADDR"),
		MongoURI:             get("MONGO_URI"),
		MongoDatabase:        get("MONGO_DATABASE"),
		MongoWriteConcern:    get("MONGO_WRITE_CONCERN"),
		MongoBreakerCoolDown: duration("MONGO_BREAKER_COOLDOWN"),
		RedisURL:             get("REDIS_URL"),
		AuthHMACSecret:       getenv("AUTH_HMAC_SECRET"), // not trimmed: every byte of a secret counts
		AuthJWKSFile:         get("AUTH_JWKS_FILE"),
		AuthIssuer:           get("AUTH_ISSUER"),
		AuthAudience:         get("AUTH_AUDIENCE"),
		AuthMaxTokenTTL:      duration("AUTH_MAX_TOKEN_TTL"),
		RateLimit: RateLimit{
			PrincipalRPS: rate("RATE_LIMIT_PRINCIPAL_RPS"), PrincipalBurst: nonNegativeInt("RATE_LIMIT_PRINCIPAL_BURST"),
			TenantRPS: rate("RATE_LIMIT_TENANT_RPS"), TenantBurst: nonNegativeInt("RATE_LIMIT_TENANT_BURST"),
		},
		StreamMaxPerPrincipal: positiveInt("STREAM_MAX_PER_PRINCIPAL"),
		StreamKeepAlive:       duration("STREAM_KEEPALIVE"),
		GRPCTLS:               ServerTLS{CertFile: get("GRPC_TLS_CERT_FILE"), KeyFile: get("GRPC_TLS_KEY_FILE"), ClientCAFile: get("GRPC_TLS_CLIENT_CA_FILE")},
		HTTPTLS:               ServerTLS{CertFile: get("HTTP_TLS_CERT_FILE"), KeyFile: get("HTTP_TLS_KEY_FILE"), ClientCAFile: get("HTTP_TLS_CLIENT_CA_FILE")},
		KafkaTLS: KafkaTLS{Enabled: boolean("KAFKA_TLS_ENABLED"), CAFile: get("KAFKA_TLS_CA_FILE"),
			CertFile: get("KAFKA_TLS_CERT_FILE"), KeyFile: get("KAFKA_TLS_KEY_FILE")},
		KafkaSASL: KafkaSASL{Mechanism: strings.ToUpper(get("KAFKA_SASL_MECHANISM")), Username: get("KAFKA_SASL_USERNAME"),
			Password: getenv("KAFKA_SASL_PASSWORD")}, // not trimmed: every byte of a secret counts
		ProduceTimeout:      duration("KAFKA_PRODUCE_TIMEOUT"),
		PipelineStallAfter:  duration("PIPELINE_STALL_AFTER"),
		KafkaSessionTimeout: duration("KAFKA_SESSION_TIMEOUT"),
		ShutdownTimeout:     duration("SHUTDOWN_TIMEOUT"),
		DrainDelay:          duration("SHUTDOWN_DRAIN_DELAY"),
		HealthCheckTimeout:  duration("HEALTH_CHECK_TIMEOUT"),
		HealthInterval:      duration("HEALTH_CHECK_INTERVAL"),
		LogFormat:           strings.ToLower(get("LOG_FORMAT")),
		Tracing:             loadTracing(get, &errs),
		WatchersEnabled:     boolean("WATCHERS_ENABLED"),
		DLQSchedulerEnabled: boolean("DLQ_SCHEDULER_ENABLED"),
		Pipeline: Pipeline{
			MaxPollRecords:        positiveInt("PIPELINE_MAX_POLL_RECORDS"),
			BulkMaxDocs:           positiveInt("PIPELINE_BULK_MAX_DOCS"),
			BulkMaxDelay:          duration("PIPELINE_BULK_MAX_DELAY"),
			BulkMaxInFlight:       positiveInt("PIPELINE_BULK_MAX_IN_FLIGHT"),
			RetryMax:              duration("PIPELINE_RETRY_MAX"),
			StageTimeout:          duration("PIPELINE_STAGE_TIMEOUT"),
			TransientRetryTimeout: duration("PIPELINE_TRANSIENT_RETRY_TIMEOUT"),
		},
		DLQ: DLQ{
			MaxAttempts:  positiveInt("DLQ_MAX_ATTEMPTS"),
			InitialDelay: duration("DLQ_RETRY_INITIAL_DELAY"),
			MaxDelay:     duration("DLQ_RETRY_MAX_DELAY"),
		},
		Devstack: Devstack{
			KafkaAddr: addr("DEVSTACK_KAFKA_ADDR"),
			MongoAddr: addr("DEVSTACK_MONGO_ADDR"),
			RedisAddr: addr("DEVSTACK_REDIS_ADDR"),
			DataDir:   getenv("DEVSTACK_DATA_DIR"),
		},
	}
	if c.Devstack.DataDir == "" {
		c.Devstack.DataDir = filepath.Join(os.TempDir(), "platform-devstack")
	}
	for _, b := range strings.Split(get("KAFKA_BROKERS"), ",") {
		if b = strings.TrimSpace(b); b == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(b); err != nil {
			errs = append(errs, fmt.Errorf("KAFKA_BROKERS: broker %q: want host:port", b))
		}
		c.KafkaBrokers = append(c.KafkaBrokers, b)
	}
	if c.MongoURI != "" && !strings.HasPrefix(c.MongoURI, "mongodb://") && !strings.HasPrefix(c.MongoURI, "mongodb+srv://") {
		errs = append(errs, errors.New("MONGO_URI: want a mongodb:// or mongodb+srv:// URI"))
	}
	if r, err := strconv.ParseFloat(get("MONGO_BREAKER_FAILURE_RATIO"), 64); err != nil || r <= 0 || r > 1 {
		errs = append(errs, fmt.Errorf("MONGO_BREAKER_FAILURE_RATIO=%q: want a number in (0, 1]", get("MONGO_BREAKER_FAILURE_RATIO")))
	} else {
		c.MongoBreakerRatio = r
	}
	if c.MongoBreakerCoolDown == 0 {
		errs = append(errs, errors.New("MONGO_BREAKER_COOLDOWN: must be positive"))
	}
	if wc := c.MongoWriteConcern; wc != "majority" {
		if n, err := strconv.Atoi(wc); err != nil || n < 0 {
			errs = append(errs, fmt.Errorf("MONGO_WRITE_CONCERN=%q: want majority or a number of nodes", wc))
		}
	}
	if c.RedisURL != "" {
		if u, err := url.Parse(c.RedisURL); err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") {
			errs = append(errs, errors.New("REDIS_URL: want a redis:// or rediss:// URL"))
		}
	}
	if spec := getenv("KAFKA_SIGNING_KEYS"); strings.TrimSpace(spec) != "" { // not trimmed: every byte of a secret counts
		keys, err := envelope.ParseKeys(spec)
		if err != nil {
			errs = append(errs, fmt.Errorf("KAFKA_SIGNING_KEYS: %w", err))
		}
		c.KafkaSigningKeys = keys
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"PIPELINE_BULK_MAX_DELAY", c.Pipeline.BulkMaxDelay}, {"PIPELINE_RETRY_MAX", c.Pipeline.RetryMax},
		{"PIPELINE_STAGE_TIMEOUT", c.Pipeline.StageTimeout}, {"DLQ_RETRY_INITIAL_DELAY", c.DLQ.InitialDelay},
		{"DLQ_RETRY_MAX_DELAY", c.DLQ.MaxDelay}} {
		if d.v == 0 {
			errs = append(errs, fmt.Errorf("%s: must be positive", d.name))
		}
	}
	if c.KafkaSessionTimeout < 6*time.Second || c.KafkaSessionTimeout > 5*time.Minute {
		errs = append(errs, fmt.Errorf("KAFKA_SESSION_TIMEOUT=%s: want 6s to 5m (the brokers' default bounds)", c.KafkaSessionTimeout))
	}
	if c.AuthMaxTokenTTL == 0 {
		errs = append(errs, errors.New("AUTH_MAX_TOKEN_TTL: must be positive"))
	}
	for _, q := range []struct {
		name  string
		rps   float64
		burst int
	}{{"RATE_LIMIT_PRINCIPAL", c.RateLimit.PrincipalRPS, c.RateLimit.PrincipalBurst}, {"RATE_LIMIT_TENANT", c.RateLimit.TenantRPS, c.RateLimit.TenantBurst}} {
		if q.rps > 0 && q.burst < 2 { // a mutation costs 2
			errs = append(errs, fmt.Errorf("%s_BURST=%d: want at least 2 (a mutation's cost) when %s_RPS is set", q.name, q.burst, q.name))
		}
	}
	for _, t := range []struct {
		prefix string
		tls    ServerTLS
	}{{"GRPC_TLS", c.GRPCTLS}, {"HTTP_TLS", c.HTTPTLS}} {
		if (t.tls.CertFile == "") != (t.tls.KeyFile == "") {
			errs = append(errs, fmt.Errorf("%s_CERT_FILE and %s_KEY_FILE: set both or neither", t.prefix, t.prefix))
		}
		if t.tls.ClientCAFile != "" && t.tls.CertFile == "" {
			errs = append(errs, fmt.Errorf("%s_CLIENT_CA_FILE: mutual TLS needs %s_CERT_FILE and %s_KEY_FILE", t.prefix, t.prefix, t.prefix))
		}
	}
	if (c.KafkaTLS.CertFile == "") != (c.KafkaTLS.KeyFile == "") {
		errs = append(errs, errors.New("KAFKA_TLS_CERT_FILE and KAFKA_TLS_KEY_FILE: set both or neither"))
	}
	if !c.KafkaTLS.Enabled && (c.KafkaTLS.CAFile != "" || c.KafkaTLS.CertFile != "") {
		errs = append(errs, errors.New("KAFKA_TLS_CA_FILE/KAFKA_TLS_CERT_FILE: set KAFKA_TLS_ENABLED=true to use them"))
	}
	switch c.KafkaSASL.Mechanism {
	case "":
		if c.KafkaSASL.Username != "" || c.KafkaSASL.Password != "" {
			errs = append(errs, errors.New("KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD: set KAFKA_SASL_MECHANISM to use them"))
		}
	case "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512":
		if c.KafkaSASL.Username == "" || c.KafkaSASL.Password == "" {
			errs = append(errs, fmt.Errorf("KAFKA_SASL_MECHANISM=%s: KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD are required", c.KafkaSASL.Mechanism))
		}
	default:
		errs = append(errs, fmt.Errorf("KAFKA_SASL_MECHANISM=%q: want PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", c.KafkaSASL.Mechanism))
	}
	if c.PipelineStallAfter == 0 {
		errs = append(errs, errors.New("PIPELINE_STALL_AFTER: must be positive"))
	}
	if c.ProduceTimeout == 0 {
		errs = append(errs, errors.New("KAFKA_PRODUCE_TIMEOUT: must be positive"))
	}
	if c.HealthCheckTimeout == 0 {
		errs = append(errs, errors.New("HEALTH_CHECK_TIMEOUT: must be positive"))
	}
	if c.HealthInterval == 0 {
		errs = append(errs, errors.New("HEALTH_CHECK_INTERVAL: must be positive"))
	}
	if err := c.LogLevel.UnmarshalText([]byte(get("LOG_LEVEL"))); err != nil {
		errs = append(errs, fmt.Errorf("LOG_LEVEL=%q: want debug, info, warn or error", get("LOG_LEVEL")))
	}
	if c.LogFormat != "json" && c.LogFormat != "text" {
		errs = append(errs, fmt.Errorf("LOG_FORMAT=%q: want json or text", c.LogFormat))
	}
	if len(errs) > 0 {
		return Config{}, fmt.Errorf("configuration: %w", errors.Join(errs...))
	}
	return c, nil
}

// RequireExternal reports the variables a production binary needs but that are empty. The devstack
// fills them with its embedded servers instead.
func (c Config) RequireExternal() error {
	var missing []string
	if len(c.KafkaBrokers) == 0 {
		missing = append(missing, "KAFKA_BROKERS")
	}
	if c.MongoURI == "" {
		missing = append(missing, "MONGO_URI")
	}
	if c.RedisURL == "" {
		missing = append(missing, "REDIS_URL")
	}
	if c.KafkaSigningKeys == nil {
		missing = append(missing, "KAFKA_SIGNING_KEYS")
	}
	if len(missing) > 0 {
		return fmt.Errorf("configuration: %s must be set (or use `make run` for the embedded dev stack)", strings.Join(missing, ", "))
	}
	return nil
}
