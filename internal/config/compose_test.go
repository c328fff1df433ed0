package config_test

import (
	"context"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"

	"github.com/msgplatform/platform/internal/config"
	"github.com/msgplatform/platform/internal/kafka"
)

// No Docker engine or compose CLI is needed: compose-go is the library `docker compose` itself loads files
// with, so the schema validation, interpolation, normalisation and consistency checks below are the ones
// `docker compose config` / `up` would run.

const (
	composeFile        = "../../docker-compose.yml"
	composeProjectName = "platform-compose-test"
	// At least 32 bytes, like a real HS256 secret.
	composeTestSecret = "compose-test-secret-0123456789abcdef-0123456789"
)

// The production binaries, built from the repository's Dockerfile.
var platformServices = []string{"gateway", "pipeline"}

// loadCompose loads docker-compose.yml exactly as `docker compose` would, with env as the only source of
// variables for interpolation (not the process environment, so the result does not depend on the machine).
func loadCompose(t *testing.T, env map[string]string) (*types.Project, error) {
	t.Helper()
	abs, err := filepath.Abs(composeFile)
	if err != nil {
		t.Fatal(err)
	}
	details := types.ConfigDetails{
		WorkingDir:  filepath.Dir(abs), // the repository root: build contexts resolve against it
		ConfigFiles: []types.ConfigFile{{Filename: abs}},
		Environment: env,
	}
	// Defaults of loader.Options: schema validation, interpolation, normalisation, path resolution and the
	// consistency check all run.
	return loader.LoadWithContext(context.Background(), details, func(o *loader.Options) {
		o.SetProjectName(composeProjectName, true)
	})
}

func mustLoadCompose(t *testing.T) *types.Project {
	t.Helper()
	p, err := loadCompose(t, map[string]string{"AUTH_HMAC_SECRET": composeTestSecret})
	if err != nil {
		t.Fatalf("load %s: %v", composeFile, err)
	}
	return p
}

func service(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, err := p.GetService(name)
	if err != nil {
		t.Fatalf("service %q: %v", name, err)
	}
	return s
}

// env returns a service's environment as plain strings (an entry without a value is "").
func env(s types.ServiceConfig) map[string]string {
	m := make(map[string]string, len(s.Environment))
	for k, v := range s.Environment {
		if v != nil {
			m[k] = *v
		} else {
			m[k] = ""
		}
	}
	return m
}

func port(t *testing.T, addr string) uint32 {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		t.Fatalf("address %q: port: %v", addr, err)
	}
	return uint32(n)
}

// healthTest returns a service's healthcheck command as one string ("" when it has none).
func healthTest(s types.ServiceConfig) string {
	if s.HealthCheck == nil {
		return ""
	}
	return strings.Join(s.HealthCheck.Test, " ")
}

// oneShots are the services others wait for to complete (condition service_completed_successfully).
func oneShots(p *types.Project) map[string]bool {
	m := map[string]bool{}
	for _, s := range p.Services {
		for dep, d := range s.DependsOn {
			if d.Condition == types.ServiceConditionCompletedSuccessfully {
				m[dep] = true
			}
		}
	}
	return m
}

func TestComposeLoads(t *testing.T) {
	p := mustLoadCompose(t)
	if p.Name != composeProjectName {
		t.Errorf("project name = %q, want %q", p.Name, composeProjectName)
	}
	for _, name := range []string{"kafka", "kafka-init", "mongodb", "redis", "gateway", "pipeline"} {
		t.Run(name, func(t *testing.T) {
			if _, ok := p.Services[name]; !ok {
				t.Errorf("service %q missing; have %v", name, p.ServiceNames())
			}
		})
	}
	if len(p.DisabledServices) > 0 {
		t.Errorf("services behind profiles (not started by a plain `docker compose up`): %v", p.DisabledServices)
	}
}

func TestComposeRequiresAuthSecret(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
	}{
		{"unset", map[string]string{}},
		{"empty", map[string]string{"AUTH_HMAC_SECRET": ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadCompose(t, tc.env)
			if err == nil {
				t.Fatal("loading without AUTH_HMAC_SECRET succeeded; want the ${AUTH_HMAC_SECRET:?...} guard to fail it")
			}
			t.Logf("refused as expected: %v", err)
			if !strings.Contains(err.Error(), "AUTH_HMAC_SECRET") {
				t.Errorf("error does not name AUTH_HMAC_SECRET: %v", err)
			}
		})
	}
}

func TestComposeKafkaKRaft(t *testing.T) {
	p := mustLoadCompose(t)
	k := env(service(t, p, "kafka"))

	roles := strings.Split(k["KAFKA_PROCESS_ROLES"], ",")
	for _, role := range []string{"broker", "controller"} {
		if !slices.Contains(roles, role) {
			t.Errorf("KAFKA_PROCESS_ROLES = %q: want a combined broker,controller node", k["KAFKA_PROCESS_ROLES"])
		}
	}
	for _, name := range []string{
		"KAFKA_NODE_ID", "CLUSTER_ID", "KAFKA_LISTENERS", "KAFKA_ADVERTISED_LISTENERS",
		"KAFKA_CONTROLLER_QUORUM_VOTERS", "KAFKA_CONTROLLER_LISTENER_NAMES", "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
	} {
		if k[name] == "" {
			t.Errorf("kafka: %s not set", name)
		}
	}
	if k["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] != "1" {
		t.Errorf("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR = %q, want 1 on a single broker", k["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"])
	}
	if !strings.Contains(k["KAFKA_LISTENERS"], k["KAFKA_CONTROLLER_LISTENER_NAMES"]+"://") {
		t.Errorf("controller listener %q is not among KAFKA_LISTENERS %q", k["KAFKA_CONTROLLER_LISTENER_NAMES"], k["KAFKA_LISTENERS"])
	}
	for name := range p.Services {
		if strings.Contains(strings.ToLower(name), "zookeeper") {
			t.Errorf("service %q: KRaft needs no ZooKeeper", name)
		}
	}
	for name := range k {
		if strings.Contains(name, "ZOOKEEPER") {
			t.Errorf("kafka: %s set; KRaft mode has no ZooKeeper", name)
		}
	}
	// The brokers the services are given must be an advertised listener (else clients are redirected elsewhere).
	var advertised []string
	for _, l := range strings.Split(k["KAFKA_ADVERTISED_LISTENERS"], ",") {
		if _, hostPort, ok := strings.Cut(strings.TrimSpace(l), "://"); ok {
			advertised = append(advertised, hostPort)
		}
	}
	for _, svc := range platformServices {
		for _, b := range strings.Split(env(service(t, p, svc))["KAFKA_BROKERS"], ",") {
			if !slices.Contains(advertised, strings.TrimSpace(b)) {
				t.Errorf("%s: KAFKA_BROKERS has %q, not among KAFKA_ADVERTISED_LISTENERS %q", svc, b, k["KAFKA_ADVERTISED_LISTENERS"])
			}
		}
	}
}

func TestComposeKafkaInitCreatesTopics(t *testing.T) {
	p := mustLoadCompose(t)
	s := service(t, p, "kafka-init")
	script := strings.Join(append(slices.Clone(s.Entrypoint), s.Command...), " ")

	for _, want := range append([]string{"kafka-topics.sh", "--create", "--if-not-exists", "--partitions 6"}, kafka.Topics...) {
		if !strings.Contains(script, want) {
			t.Errorf("kafka-init command lacks %q:\n%s", want, script)
		}
	}
	// Compose interpolation must have turned $$ into $ (a bare $topic would have been replaced by "").
	if !regexp.MustCompile(`--topic "\$\{?topic\}?"`).MatchString(script) {
		t.Errorf("kafka-init: the loop variable did not survive interpolation:\n%s", script)
	}
	if d, ok := s.DependsOn["kafka"]; !ok || d.Condition != types.ServiceConditionHealthy {
		t.Errorf("kafka-init depends_on kafka = %+v, want condition %s", d, types.ServiceConditionHealthy)
	}
	if s.Restart != "" && s.Restart != types.RestartPolicyNo {
		t.Errorf("kafka-init restart = %q: a one-shot must not be restarted", s.Restart)
	}
	if !oneShots(p)["kafka-init"] {
		t.Error("nothing waits for kafka-init to complete (condition service_completed_successfully)")
	}
}

func TestComposeMongoReplicaSet(t *testing.T) {
	p := mustLoadCompose(t)
	s := service(t, p, "mongodb")
	i := slices.Index(s.Command, "--replSet")
	if i < 0 || i+1 >= len(s.Command) {
		t.Fatalf("mongodb command %q has no --replSet <name>", s.Command)
	}
	rs := s.Command[i+1]
	if !slices.Contains(s.Command, "--bind_ip_all") {
		t.Errorf("mongodb command %q lacks --bind_ip_all (other containers could not connect)", s.Command)
	}
	// The healthcheck initiates the replica set with the name the command starts and a host clients resolve.
	hc := healthTest(s)
	for _, want := range []string{"rs.initiate", "'" + rs + "'", "'mongodb:27017'"} {
		if !strings.Contains(hc, want) {
			t.Errorf("mongodb healthcheck lacks %q:\n%s", want, hc)
		}
	}
	for _, svc := range platformServices {
		u, err := url.Parse(env(service(t, p, svc))["MONGO_URI"])
		if err != nil {
			t.Fatalf("%s: MONGO_URI: %v", svc, err)
		}
		if got := u.Query().Get("replicaSet"); got != rs {
			t.Errorf("%s: MONGO_URI replicaSet = %q, want %q (change streams need the replica set)", svc, got, rs)
		}
		if u.Host != "mongodb:27017" {
			t.Errorf("%s: MONGO_URI host = %q, want the replica set member mongodb:27017", svc, u.Host)
		}
	}
}

func TestComposeRedis(t *testing.T) {
	p := mustLoadCompose(t)
	s := service(t, p, "redis")
	if i := slices.Index(s.Command, "--appendonly"); i < 0 || i+1 >= len(s.Command) || s.Command[i+1] != "yes" {
		t.Errorf("redis command %q: want --appendonly yes", s.Command)
	}
	if hc := healthTest(s); !strings.Contains(hc, "redis-cli ping") {
		t.Errorf("redis healthcheck %q: want redis-cli ping", hc)
	}
}

func TestComposeHealthchecks(t *testing.T) {
	p := mustLoadCompose(t)
	once := oneShots(p)
	for _, name := range p.ServiceNames() {
		if once[name] {
			continue
		}
		t.Run(name, func(t *testing.T) {
			hc := p.Services[name].HealthCheck
			if hc == nil || hc.Disable || len(hc.Test) < 2 || hc.Test[0] == "NONE" {
				t.Fatalf("long-running service %q has no healthcheck: %+v", name, hc)
			}
			if hc.Interval == nil || hc.Timeout == nil || hc.Retries == nil {
				t.Errorf("healthcheck of %q should set interval, timeout and retries: %+v", name, hc)
			}
			if r := p.Services[name].Restart; r != types.RestartPolicyUnlessStopped && r != types.RestartPolicyAlways {
				t.Errorf("long-running service %q: restart = %q, want unless-stopped", name, r)
			}
		})
	}
}

func TestComposePlatformServices(t *testing.T) {
	p := mustLoadCompose(t)
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range platformServices {
		t.Run(name, func(t *testing.T) {
			s := service(t, p, name)
			e := env(s)

			t.Run("env known to config", func(t *testing.T) {
				for k := range e {
					if !config.Known(k) {
						t.Errorf("%s: environment variable %s is not one internal/config reads (config.Vars)", name, k)
					}
				}
				for _, k := range []string{"KAFKA_BROKERS", "MONGO_URI", "REDIS_URL", "AUTH_HMAC_SECRET"} {
					if e[k] == "" {
						t.Errorf("%s: %s not set", name, k)
					}
				}
				if e["AUTH_HMAC_SECRET"] != composeTestSecret {
					t.Errorf("%s: AUTH_HMAC_SECRET = %q, want the value from the environment", name, e["AUTH_HMAC_SECRET"])
				}
			})

			// The values must be ones the binary accepts, not just the names.
			cfg, err := config.Load(func(k string) string { return e[k] })
			if err != nil {
				t.Fatalf("%s: config.Load of the compose environment: %v", name, err)
			}
			if err := cfg.RequireExternal(); err != nil {
				t.Errorf("%s: %v", name, err)
			}

			t.Run("depends_on", func(t *testing.T) {
				for dep, cond := range map[string]string{
					"kafka":      types.ServiceConditionHealthy,
					"mongodb":    types.ServiceConditionHealthy,
					"redis":      types.ServiceConditionHealthy,
					"kafka-init": types.ServiceConditionCompletedSuccessfully,
				} {
					d, ok := s.DependsOn[dep]
					if !ok {
						t.Errorf("%s does not depend on %s", name, dep)
						continue
					}
					if d.Condition != cond {
						t.Errorf("%s depends_on %s: condition %q, want %q", name, dep, d.Condition, cond)
					}
				}
			})

			t.Run("stop_grace_period", func(t *testing.T) {
				need := cfg.ShutdownTimeout + cfg.DrainDelay
				if s.StopGracePeriod == nil || time.Duration(*s.StopGracePeriod) <= need {
					t.Errorf("%s: stop_grace_period %v must exceed SHUTDOWN_DRAIN_DELAY + SHUTDOWN_TIMEOUT = %v",
						name, s.StopGracePeriod, need)
				}
			})

			t.Run("healthcheck probes the service's own port", func(t *testing.T) {
				addr := cfg.HTTPAddr // the pipeline: /readyz
				if name == "gateway" {
					addr = cfg.GRPCAddr // the gateway: grpc.health.v1
				}
				hc := healthTest(s)
				if !strings.Contains(hc, ":"+strconv.Itoa(int(port(t, addr)))) {
					t.Errorf("%s healthcheck %q does not probe port %d (%s)", name, hc, port(t, addr), addr)
				}
			})

			t.Run("build", func(t *testing.T) {
				b := s.Build
				if b == nil {
					t.Fatalf("%s is not built from the repository", name)
				}
				if filepath.Clean(b.Context) != root {
					t.Errorf("%s: build context %q, want the repository root %q", name, b.Context, root)
				}
				if _, err := os.Stat(filepath.Join(b.Context, b.Dockerfile)); err != nil {
					t.Errorf("%s: dockerfile: %v", name, err)
				}
				if v := b.Args["SERVICE"]; v == nil || *v != name {
					t.Errorf("%s: build arg SERVICE = %v, want %q", name, v, name)
				}
				// The Dockerfile builds ./services/${SERVICE}. Checked once services/ exists in the tree.
				if _, err := os.Stat(filepath.Join(root, "services")); err == nil {
					if _, err := os.Stat(filepath.Join(root, "services", name)); err != nil {
						t.Errorf("%s: the Dockerfile would build ./services/%s: %v", name, name, err)
					}
				}
			})
		})
	}

	t.Run("gateway publishes its gRPC and REST ports", func(t *testing.T) {
		s := service(t, p, "gateway")
		cfg, err := config.Load(func(k string) string { return env(s)[k] })
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []uint32{port(t, cfg.GRPCAddr), port(t, cfg.HTTPAddr)} {
			if !slices.ContainsFunc(s.Ports, func(pc types.ServicePortConfig) bool { return pc.Target == want && pc.Published != "" }) {
				t.Errorf("gateway does not publish container port %d: %+v", want, s.Ports)
			}
		}
	})
}

// The Dockerfile is not executed here (no Docker engine); these are the properties the compose file relies on.
func TestComposeDockerfile(t *testing.T) {
	b, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	for _, want := range []string{
		"FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build",
		"ARG SERVICE",
		"CGO_ENABLED=0",
		"go mod download",
		"go build -trimpath",
		"./services/${SERVICE}",
		"grpc-health-probe@", // the gateway's healthcheck binary
		"EXPOSE 9090 8080 9464",
	} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	if strings.Index(df, "go mod download") > strings.Index(df, "COPY . .") {
		t.Error("Dockerfile: `go mod download` must come before `COPY . .` so the module layer is cached")
	}
	users := regexp.MustCompile(`(?m)^USER\s+(\S+)`).FindAllStringSubmatch(df, -1)
	if len(users) == 0 {
		t.Fatal("Dockerfile: the final stage sets no USER (would run as root)")
	}
	if u := users[len(users)-1][1]; u == "root" || u == "0" || strings.HasPrefix(u, "0:") || strings.HasPrefix(u, "root:") {
		t.Errorf("Dockerfile: final USER %q is root", u)
	}
}
