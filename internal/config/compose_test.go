package config_test

import (
	"cmp"
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
	"go.yaml.in/yaml/v4"

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
	p, err := loadCompose(t, map[string]string{"AUTH_HMAC_SECRET": composeTestSecret, "KAFKA_SIGNING_KEYS": composeTestSigningKeys})
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
	for _, name := range []string{"kafka", "kafka-init", "mongodb", "redis", "gateway", "pipeline", "prometheus"} {
		t.Run(name, func(t *testing.T) {
			if _, ok := p.Services[name]; !ok {
				t.Errorf("service %q missing; have %v", name, p.ServiceNames())
			}
		})
	}
	// Only the optional tracing backend (TestComposeTracing) may wait behind a profile.
	for name := range p.DisabledServices {
		if name != "jaeger" {
			t.Errorf("service %s is behind a profile: a plain `docker compose up` would not start it", name)
		}
	}
}

// composeTestSigningKeys is KAFKA_SIGNING_KEYS as an operator would export it.
const composeTestSigningKeys = "k1=compose-test-signing-secret-0123456789abcdef"

// Both secrets are required: compose refuses to start without either.
func TestComposeRequiresSecrets(t *testing.T) {
	for _, tc := range []struct {
		name, missing string
		env           map[string]string
	}{
		{"auth unset", "AUTH_HMAC_SECRET", map[string]string{"KAFKA_SIGNING_KEYS": composeTestSigningKeys}},
		{"auth empty", "AUTH_HMAC_SECRET", map[string]string{"AUTH_HMAC_SECRET": "", "KAFKA_SIGNING_KEYS": composeTestSigningKeys}},
		{"signing keys unset", "KAFKA_SIGNING_KEYS", map[string]string{"AUTH_HMAC_SECRET": composeTestSecret}},
		{"signing keys empty", "KAFKA_SIGNING_KEYS", map[string]string{"AUTH_HMAC_SECRET": composeTestSecret, "KAFKA_SIGNING_KEYS": ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadCompose(t, tc.env)
			if err == nil {
				t.Fatalf("loading without %s succeeded; want the ${%s:?...} guard to fail it", tc.missing, tc.missing)
			}
			t.Logf("refused as expected: %v", err)
			if !strings.Contains(err.Error(), tc.missing) {
				t.Errorf("error does not name %s: %v", tc.missing, err)
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

// Prometheus: the prometheus service of docker-compose.yml and the configuration file it mounts.
const (
	prometheusService = "prometheus"
	// Where the prom/prometheus image reads its configuration (--config.file).
	prometheusConfigTarget = "/etc/prometheus/prometheus.yml"
	// The repository's configuration file, relative to this package.
	prometheusConfigFile = "../../deploy/prometheus.yml"
	// Prometheus's listen port inside its container (the image's default --web.listen-address).
	prometheusContainerPort = 9090
)

// promConfig is the part of a Prometheus configuration file the tests read.
type promConfig struct {
	Global struct {
		ScrapeInterval string `yaml:"scrape_interval"`
		ScrapeTimeout  string `yaml:"scrape_timeout"`
	} `yaml:"global"`
	ScrapeConfigs []promScrapeConfig `yaml:"scrape_configs"`
}

type promScrapeConfig struct {
	JobName        string `yaml:"job_name"`
	MetricsPath    string `yaml:"metrics_path"`
	Scheme         string `yaml:"scheme"`
	ScrapeInterval string `yaml:"scrape_interval"`
	ScrapeTimeout  string `yaml:"scrape_timeout"`
	StaticConfigs  []struct {
		Targets []string          `yaml:"targets"`
		Labels  map[string]string `yaml:"labels"`
	} `yaml:"static_configs"`
}

// prometheusConfigMount returns the prometheus service's bind mount of its configuration file.
func prometheusConfigMount(t *testing.T, s types.ServiceConfig) types.ServiceVolumeConfig {
	t.Helper()
	for _, v := range s.Volumes {
		if v.Target == prometheusConfigTarget {
			return v
		}
	}
	t.Fatalf("%s: nothing mounted at %s: %+v", s.Name, prometheusConfigTarget, s.Volumes)
	return types.ServiceVolumeConfig{}
}

// loadPrometheusConfig parses the file the compose file mounts into the prometheus service (so the scrape
// checks read the file the container would, not one the test merely assumes).
func loadPrometheusConfig(t *testing.T, p *types.Project) promConfig {
	t.Helper()
	src := prometheusConfigMount(t, service(t, p, prometheusService)).Source
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatalf("prometheus configuration: %v", err)
	}
	var c promConfig
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatalf("%s: %v", src, err)
	}
	return c
}

// flagValue returns the value of a --name=value argument ("" when absent).
func flagValue(args []string, name string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
	}
	return ""
}

func TestComposePrometheus(t *testing.T) {
	p := mustLoadCompose(t)
	s := service(t, p, prometheusService)
	wantConfig, err := filepath.Abs(prometheusConfigFile)
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name  string
		check func(t *testing.T)
	}{
		{"image is the official one, pinned to a v3 release", func(t *testing.T) {
			if !regexp.MustCompile(`^prom/prometheus:v3\.\d+\.\d+$`).MatchString(s.Image) {
				t.Errorf("image = %q, want prom/prometheus:v3.<minor>.<patch> (pinned, not latest)", s.Image)
			}
		}},
		{"healthcheck probes /-/ready on its own port", func(t *testing.T) {
			hc := healthTest(s)
			want := "http://127.0.0.1:" + strconv.Itoa(prometheusContainerPort) + "/-/ready"
			if !strings.Contains(hc, want) {
				t.Errorf("healthcheck %q does not probe %s", hc, want)
			}
			// The image is busybox-based: wget is there, curl is not.
			if len(s.HealthCheck.Test) < 2 || s.HealthCheck.Test[1] != "wget" {
				t.Errorf("healthcheck %q: want busybox wget", hc)
			}
		}},
		{"configuration mounted read-only from deploy/prometheus.yml", func(t *testing.T) {
			m := prometheusConfigMount(t, s)
			if m.Type != types.VolumeTypeBind {
				t.Errorf("%s: mount type %q, want a bind mount", prometheusConfigTarget, m.Type)
			}
			if filepath.Clean(m.Source) != wantConfig {
				t.Errorf("%s: mounted from %q, want %q", prometheusConfigTarget, m.Source, wantConfig)
			}
			if !m.ReadOnly {
				t.Errorf("%s: mounted read-write, want :ro", prometheusConfigTarget)
			}
			// A missing source would make Docker create an empty directory in its place.
			if fi, err := os.Stat(m.Source); err != nil || !fi.Mode().IsRegular() {
				t.Errorf("%s: source %q is not a file: %v", prometheusConfigTarget, m.Source, err)
			}
			if got := flagValue(s.Command, "config.file"); got != prometheusConfigTarget {
				t.Errorf("--config.file = %q, want %q", got, prometheusConfigTarget)
			}
		}},
		{"TSDB on a named volume", func(t *testing.T) {
			path := flagValue(s.Command, "storage.tsdb.path")
			if path == "" {
				t.Fatalf("command %q lacks --storage.tsdb.path", s.Command)
			}
			i := slices.IndexFunc(s.Volumes, func(v types.ServiceVolumeConfig) bool { return v.Target == path })
			if i < 0 {
				t.Fatalf("no volume mounted at --storage.tsdb.path %s: %+v", path, s.Volumes)
			}
			v := s.Volumes[i]
			if v.Type != types.VolumeTypeVolume || v.ReadOnly {
				t.Errorf("%s: %+v, want a writable named volume", path, v)
			}
			if _, ok := p.Volumes[v.Source]; !ok {
				t.Errorf("volume %q is not declared under the top-level volumes", v.Source)
			}
		}},
		{"published on loopback only, not on the gateway's gRPC port", func(t *testing.T) {
			grpc := port(t, env(service(t, p, "gateway"))["GRPC_ADDR"])
			if len(s.Ports) == 0 {
				t.Fatal("prometheus publishes no port")
			}
			for _, pc := range s.Ports {
				if pc.HostIP != "127.0.0.1" {
					t.Errorf("port %+v: host_ip %q, want 127.0.0.1 (the UI and API have no authentication)", pc, pc.HostIP)
				}
				if pc.Published == strconv.Itoa(int(grpc)) {
					t.Errorf("port %+v: host port %d is the gateway's gRPC port", pc, grpc)
				}
			}
			if !slices.ContainsFunc(s.Ports, func(pc types.ServicePortConfig) bool {
				return pc.Target == prometheusContainerPort && pc.Published == "9091"
			}) {
				t.Errorf("ports %+v: want 127.0.0.1:9091 -> %d", s.Ports, prometheusContainerPort)
			}
		}},
		{"depends on the services it scrapes", func(t *testing.T) {
			for _, dep := range platformServices {
				d, ok := s.DependsOn[dep]
				if !ok {
					t.Errorf("prometheus does not depend on %s", dep)
					continue
				}
				if d.Condition != types.ServiceConditionStarted && d.Condition != types.ServiceConditionHealthy {
					t.Errorf("depends_on %s: condition %q, want service_started or service_healthy", dep, d.Condition)
				}
			}
		}},
		{"shares a network with the services it scrapes", func(t *testing.T) {
			for _, name := range platformServices {
				other := service(t, p, name)
				shared := false
				for n := range s.Networks {
					if _, ok := other.Networks[n]; ok {
						shared = true
					}
				}
				if !shared {
					t.Errorf("prometheus (networks %v) cannot reach %s (networks %v)", s.Networks, name, other.Networks)
				}
			}
		}},
	} {
		t.Run(tc.name, tc.check)
	}

	// Docker refuses to start the second of two containers publishing the same host port.
	t.Run("no two services publish the same host port", func(t *testing.T) {
		seen := map[string]string{}
		for _, name := range p.ServiceNames() {
			for _, pc := range p.Services[name].Ports {
				if pc.Published == "" { // an ephemeral host port: never clashes
					continue
				}
				proto := cmp.Or(pc.Protocol, "tcp")
				key := pc.Published + "/" + proto
				if other, ok := seen[key]; ok {
					t.Errorf("host port %s published by both %s and %s", key, other, name)
				}
				seen[key] = name
			}
		}
	})
}

func TestComposePrometheusScrapes(t *testing.T) {
	p := mustLoadCompose(t)
	c := loadPrometheusConfig(t, p)

	if c.Global.ScrapeInterval != "15s" {
		t.Errorf("global scrape_interval = %q, want 15s", c.Global.ScrapeInterval)
	}
	if c.Global.ScrapeTimeout != "" {
		interval, err1 := time.ParseDuration(c.Global.ScrapeInterval)
		timeout, err2 := time.ParseDuration(c.Global.ScrapeTimeout)
		if err1 != nil || err2 != nil || timeout > interval {
			t.Errorf("global scrape_timeout %q must not exceed scrape_interval %q", c.Global.ScrapeTimeout, c.Global.ScrapeInterval)
		}
	}
	jobs := map[string]promScrapeConfig{}
	for _, sc := range c.ScrapeConfigs {
		if _, dup := jobs[sc.JobName]; dup {
			t.Errorf("job_name %q appears twice (Prometheus refuses the configuration)", sc.JobName)
		}
		jobs[sc.JobName] = sc
	}

	cases := []struct {
		service string // compose service, and the host name its target must use
		job     string
	}{
		{"gateway", "gateway"},
		{"pipeline", "pipeline"},
	}
	for _, name := range platformServices {
		if !slices.ContainsFunc(cases, func(tc struct{ service, job string }) bool { return tc.service == name }) {
			t.Errorf("platform service %q has no scrape case", name)
		}
	}
	for _, tc := range cases {
		t.Run(tc.service, func(t *testing.T) {
			e := env(service(t, p, tc.service))
			addr := e["METRICS_ADDR"]
			if addr == "" {
				t.Fatalf("%s: METRICS_ADDR not set in docker-compose.yml", tc.service)
			}
			if _, err := config.Load(func(k string) string { return e[k] }); err != nil {
				t.Fatalf("%s: %v", tc.service, err)
			}
			// Another container can only reach a listener on all interfaces.
			if host, _, _ := net.SplitHostPort(addr); host != "" && host != "0.0.0.0" && host != "::" {
				t.Errorf("%s: METRICS_ADDR=%q listens on %s only; Prometheus in another container cannot reach it", tc.service, addr, host)
			}
			want := net.JoinHostPort(tc.service, strconv.Itoa(int(port(t, addr))))

			job, ok := jobs[tc.job]
			if !ok {
				t.Fatalf("no scrape job %q in %s", tc.job, prometheusConfigFile)
			}
			var targets []string
			for _, sc := range job.StaticConfigs {
				targets = append(targets, sc.Targets...)
			}
			if !slices.Contains(targets, want) {
				t.Errorf("job %q targets %v, want %s (service name and the port of METRICS_ADDR=%q)", tc.job, targets, want, addr)
			}
			if job.MetricsPath != "" && job.MetricsPath != "/metrics" {
				t.Errorf("job %q metrics_path = %q, want /metrics", tc.job, job.MetricsPath)
			}
			if job.Scheme != "" && job.Scheme != "http" {
				t.Errorf("job %q scheme = %q, want http (the metrics listener is plain HTTP)", tc.job, job.Scheme)
			}
		})
	}
}

// Tracing is off by default; the "tracing" profile adds Jaeger, and pointing OTEL_EXPORTER_OTLP_ENDPOINT at
// it turns tracing on in both processes, at an address and port Jaeger receives OTLP/gRPC on.
func TestComposeTracing(t *testing.T) {
	for _, name := range platformServices {
		cfg, err := config.Load(func(k string) string { return env(service(t, mustLoadCompose(t), name))[k] })
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Tracing.Enabled {
			t.Errorf("%s: tracing on by default", name)
		}
	}
	if _, err := mustLoadCompose(t).GetService("jaeger"); err == nil {
		t.Error("jaeger starts without the tracing profile")
	}

	abs, err := filepath.Abs(composeFile)
	if err != nil {
		t.Fatal(err)
	}
	const endpoint = "http://jaeger:4317" // the command given at the top of docker-compose.yml
	p, err := loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir: filepath.Dir(abs), ConfigFiles: []types.ConfigFile{{Filename: abs}},
		Environment: map[string]string{"AUTH_HMAC_SECRET": composeTestSecret, "KAFKA_SIGNING_KEYS": composeTestSigningKeys,
			"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint},
	}, func(o *loader.Options) {
		o.SetProjectName(composeProjectName, true)
		o.Profiles = []string{"tracing"}
	})
	if err != nil {
		t.Fatal(err)
	}
	jaeger := service(t, p, "jaeger")
	if !strings.HasPrefix(jaeger.Image, "cr.jaegertracing.io/jaegertracing/jaeger:2.") {
		t.Errorf("jaeger image %q: want a pinned Jaeger v2 (OTLP receiver built in)", jaeger.Image)
	}
	for _, pc := range jaeger.Ports {
		if pc.HostIP != "127.0.0.1" {
			t.Errorf("jaeger publishes %d on %q: the UI has no authentication, loopback only", pc.Target, pc.HostIP)
		}
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	if u.Hostname() != jaeger.Name || u.Port() != "4317" {
		t.Errorf("endpoint %s is not jaeger's OTLP/gRPC port 4317", endpoint)
	}
	for _, name := range platformServices {
		e := env(service(t, p, name))
		cfg, err := config.Load(func(k string) string { return e[k] })
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !cfg.Tracing.Enabled || e["OTEL_EXPORTER_OTLP_ENDPOINT"] != endpoint {
			t.Errorf("%s: tracing %v, endpoint %q: want on, exporting to %s", name, cfg.Tracing.Enabled, e["OTEL_EXPORTER_OTLP_ENDPOINT"], endpoint)
		}
		if _, ok := service(t, p, name).DependsOn["jaeger"]; ok {
			t.Errorf("%s depends on jaeger: tracing must never keep the platform from starting", name)
		}
	}
}
