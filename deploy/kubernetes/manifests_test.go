// Package kubernetes_test checks the Kubernetes manifests of deploy/kubernetes: every file loads strictly
// into the k8s.io/api types (an unknown or misspelt field fails), and every overlay, rendered by kustomize's
// own library (sigs.k8s.io/kustomize/api/krusty, what `kubectl kustomize` runs), keeps the invariants the
// compose file's test keeps: every variable is one internal/config reads and config.Load accepts the
// result, probes and Services point at ports the containers declare and the configuration listens on,
// grace periods exceed the drain delay plus the shutdown timeout, secrets live only in Secrets.
package kubernetes_test

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/api/krusty"
	kusttypes "sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/msgplatform/platform/internal/config"
)

// secretVars are the variables that must come from a Secret: the shared secrets, and the connection strings
// that carry credentials.
var secretVars = map[string]bool{
	"AUTH_HMAC_SECRET": true, "KAFKA_SIGNING_KEYS": true, "KAFKA_SASL_PASSWORD": true, "MONGO_URI": true, "REDIS_URL": true,
}

// overlays are rendered with a secrets.env made by the test, as the README tells an operator to.
var overlays = []string{"overlays/dev", "overlays/prod"}

// objects is a decoded manifest set.
type objects struct {
	deployments []*appsv1.Deployment
	services    []*corev1.Service
	configMaps  map[string]*corev1.ConfigMap
	secrets     map[string]*corev1.Secret
	hpas        []*autoscalingv2.HorizontalPodAutoscaler
	pdbs        []*policyv1.PodDisruptionBudget
	others      int // ServiceAccounts, Namespaces
}

// decode loads one YAML document strictly into its k8s.io/api type (chosen by apiVersion and kind) and
// adds it to o.
func (o *objects) decode(doc []byte) error {
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := yaml.Unmarshal(doc, &head); err != nil {
		return err
	}
	strict := func(v any) error { return yaml.UnmarshalStrict(doc, v) }
	switch head.APIVersion + " " + head.Kind {
	case "apps/v1 Deployment":
		d := &appsv1.Deployment{}
		o.deployments = append(o.deployments, d)
		return strict(d)
	case "v1 Service":
		s := &corev1.Service{}
		o.services = append(o.services, s)
		return strict(s)
	case "v1 ConfigMap":
		c := &corev1.ConfigMap{}
		if err := strict(c); err != nil {
			return err
		}
		o.configMaps[c.Name] = c
		return nil
	case "v1 Secret":
		s := &corev1.Secret{}
		if err := strict(s); err != nil {
			return err
		}
		o.secrets[s.Name] = s
		return nil
	case "autoscaling/v2 HorizontalPodAutoscaler":
		h := &autoscalingv2.HorizontalPodAutoscaler{}
		o.hpas = append(o.hpas, h)
		return strict(h)
	case "policy/v1 PodDisruptionBudget":
		p := &policyv1.PodDisruptionBudget{}
		o.pdbs = append(o.pdbs, p)
		return strict(p)
	case "v1 ServiceAccount":
		o.others++
		return strict(&corev1.ServiceAccount{})
	case "v1 Namespace":
		o.others++
		return strict(&corev1.Namespace{})
	}
	return fmt.Errorf("unexpected kind %q of apiVersion %q (teach the test its type)", head.Kind, head.APIVersion)
}

var docSeparator = regexp.MustCompile(`(?m)^---\s*$`)

func newObjects() *objects {
	return &objects{configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{}}
}

// TestManifestFilesAreStrict loads every YAML file as written: kustomization.yaml files into kustomize's
// Kustomization type, every other document (resources and patches alike) into its k8s.io/api type, with
// unknown fields refused.
func TestManifestFilesAreStrict(t *testing.T) {
	var files int
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || filepath.Ext(path) != ".yaml" {
			return err
		}
		files++
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if d.Name() == "kustomization.yaml" {
			var k kusttypes.Kustomization
			if err := yaml.UnmarshalStrict(b, &k); err != nil {
				t.Errorf("%s: %v", path, err)
			}
			if k.Kind != kusttypes.KustomizationKind || k.APIVersion != kusttypes.KustomizationVersion {
				t.Errorf("%s: kind %q apiVersion %q", path, k.Kind, k.APIVersion)
			}
			return nil
		}
		o := newObjects()
		for i, doc := range docSeparator.Split(string(b), -1) {
			if strings.TrimSpace(stripComments(doc)) == "" {
				continue
			}
			if err := o.decode([]byte(doc)); err != nil {
				t.Errorf("%s, document %d: %v", path, i+1, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 10 {
		t.Fatalf("found %d YAML files under deploy/kubernetes; the walk missed them", files)
	}
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, line := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// TestBaseRenders renders the base alone (no Secret: it is the overlays' part) and checks what does not
// need the secrets.
func TestBaseRenders(t *testing.T) {
	o := render(t, ".", "base")
	check(t, o, false)
}

// TestOverlaysRender renders each overlay with a secrets.env of fresh random values and checks every
// invariant, config.Load of each container's environment included.
func TestOverlaysRender(t *testing.T) {
	for _, overlay := range overlays {
		t.Run(overlay, func(t *testing.T) {
			root := copyTree(t)
			writeSecrets(t, filepath.Join(root, overlay))
			o := render(t, root, overlay)
			check(t, o, true)
			if len(o.secrets) != 1 {
				t.Errorf("%d Secrets, want the one platform-secrets", len(o.secrets))
			}
		})
	}
}

// TestOverlaysRequireSecrets: without secrets.env an overlay does not render (as docker compose refuses to
// start without AUTH_HMAC_SECRET and KAFKA_SIGNING_KEYS), rather than deploying without secrets.
func TestOverlaysRequireSecrets(t *testing.T) {
	for _, overlay := range overlays {
		root := copyTree(t)
		_ = os.Remove(filepath.Join(root, overlay, "secrets.env"))
		_, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), filepath.Join(root, overlay))
		if err == nil || !strings.Contains(err.Error(), "secrets.env") {
			t.Errorf("%s rendered without secrets.env: %v", overlay, err)
		}
	}
}

// copyTree copies deploy/kubernetes to a temporary directory, so the test can add secrets.env files.
func copyTree(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "kubernetes")
	if err := os.CopyFS(dir, os.DirFS(".")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// writeSecrets writes the secrets.env of secrets.env.example with random secrets in place of <...>.
func writeSecrets(t *testing.T, dir string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "secrets.env.example"))
	if err != nil {
		t.Fatal(err)
	}
	out := regexp.MustCompile(`<[a-z]+>`).ReplaceAllStringFunc(string(b), func(string) string {
		r := make([]byte, 32)
		_, _ = rand.Read(r)
		return hex.EncodeToString(r)
	})
	if err := os.WriteFile(filepath.Join(dir, "secrets.env"), []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
}

// render runs kustomize on root/dir and decodes every resource strictly.
func render(t *testing.T, root, dir string) *objects {
	t.Helper()
	rm, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), filepath.Join(root, dir))
	if err != nil {
		t.Fatalf("kustomize %s: %v", dir, err)
	}
	o := newObjects()
	for _, r := range rm.Resources() {
		b, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		if err := o.decode(b); err != nil {
			t.Errorf("%s: %s: %v", dir, r.CurId(), err)
		}
	}
	if len(o.deployments) != 3 || len(o.services) != 1 || len(o.hpas) != 1 || len(o.pdbs) != 2 || len(o.configMaps) != 1 {
		t.Errorf("%s: %d Deployments, %d Services, %d HPAs, %d PDBs, %d ConfigMaps; want 3 (gateway, pipeline, pipeline-watchers), 1, 1, 2, 1",
			dir, len(o.deployments), len(o.services), len(o.hpas), len(o.pdbs), len(o.configMaps))
	}
	return o
}

// check verifies the invariants of a rendered set; withSecrets says whether its Secrets are in it.
func check(t *testing.T, o *objects, withSecrets bool) {
	for _, cm := range o.configMaps {
		for k := range cm.Data {
			if !config.Known(k) {
				t.Errorf("ConfigMap %s: %s is not a variable internal/config reads (config.Vars)", cm.Name, k)
			}
			if secretVars[k] {
				t.Errorf("ConfigMap %s holds %s: secrets go in a Secret", cm.Name, k)
			}
		}
	}
	for _, s := range o.secrets {
		for k := range merged(s) {
			if !config.Known(k) {
				t.Errorf("Secret %s: %s is not a variable internal/config reads", s.Name, k)
			}
			if !secretVars[k] {
				t.Errorf("Secret %s holds %s, not a secret: put it in the ConfigMap", s.Name, k)
			}
		}
	}

	watchers := 0
	for _, d := range o.deployments {
		spec := d.Spec.Template.Spec
		if len(spec.Containers) != 1 {
			t.Errorf("Deployment %s: %d containers, want 1", d.Name, len(spec.Containers))
			continue
		}
		c := spec.Containers[0]
		env := environment(t, o, d.Name, c, withSecrets)
		get := func(name string) string {
			if v, ok := env[name]; ok {
				return v
			}
			for _, v := range config.Vars {
				if v.Name == name {
					return v.Default
				}
			}
			return ""
		}
		if withSecrets {
			if _, err := config.Load(func(k string) string { return env[k] }); err != nil {
				t.Errorf("Deployment %s: config.Load of its environment: %v", d.Name, err)
			}
			if env["AUTH_HMAC_SECRET"] == "" && env["AUTH_JWKS_FILE"] == "" {
				t.Errorf("Deployment %s: neither AUTH_HMAC_SECRET nor AUTH_JWKS_FILE is set", d.Name)
			}
			if env["KAFKA_SIGNING_KEYS"] == "" {
				t.Errorf("Deployment %s: KAFKA_SIGNING_KEYS is not set (required outside the devstack)", d.Name)
			}
		}
		for _, k := range []string{"KAFKA_BROKERS", "MONGO_URI", "REDIS_URL"} {
			if _, ok := env[k]; !ok && (withSecrets || !secretVars[k]) {
				t.Errorf("Deployment %s: %s not set", d.Name, k)
			}
		}

		// Ports: the configuration listens on declared container ports.
		ports := map[string]int32{}
		numbers := map[int32]bool{}
		for _, p := range c.Ports {
			ports[p.Name] = p.ContainerPort
			numbers[p.ContainerPort] = true
		}
		httpPort, metricsPort := portOf(t, get("HTTP_ADDR")), portOf(t, get("METRICS_ADDR"))
		if ports["http"] != httpPort || ports["metrics"] != metricsPort {
			t.Errorf("Deployment %s: container ports %v, want http %d (HTTP_ADDR) and metrics %d (METRICS_ADDR)", d.Name, ports, httpPort, metricsPort)
		}
		gateway := false
		if p, ok := ports["grpc"]; ok {
			gateway = true
			if g := portOf(t, get("GRPC_ADDR")); p != g {
				t.Errorf("Deployment %s: container port grpc %d, GRPC_ADDR port %d", d.Name, p, g)
			}
		}

		// Probes: on declared ports; readiness on the real readiness endpoints.
		probes := map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe, "startup": c.StartupProbe}
		for kind, p := range probes {
			if p == nil {
				t.Errorf("Deployment %s: no %s probe", d.Name, kind)
				continue
			}
			port, path := probePort(t, p, ports)
			if !numbers[port] {
				t.Errorf("Deployment %s: %s probe on port %d, not a container port %v", d.Name, kind, port, ports)
			}
			switch {
			case p.GRPC != nil && port != ports["grpc"]:
				t.Errorf("Deployment %s: %s probe is gRPC on %d, not the gRPC port", d.Name, kind, port)
			case p.HTTPGet != nil && port != httpPort:
				t.Errorf("Deployment %s: %s probe on %d, not HTTP_ADDR's port %d", d.Name, kind, port, httpPort)
			case p.HTTPGet != nil && kind == "readiness" && path != "/readyz", p.HTTPGet != nil && kind != "readiness" && path != "/healthz":
				t.Errorf("Deployment %s: %s probe path %q", d.Name, kind, path)
			}
		}
		if gateway && (c.ReadinessProbe == nil || c.ReadinessProbe.GRPC == nil) {
			t.Errorf("Deployment %s: the gateway's readiness must be the grpc.health.v1 check on its gRPC port", d.Name)
		}

		// Grace period above the drain delay plus the shutdown timeout.
		drain, shutdown := duration(t, get("SHUTDOWN_DRAIN_DELAY")), duration(t, get("SHUTDOWN_TIMEOUT"))
		if g := spec.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second <= drain+shutdown {
			t.Errorf("Deployment %s: terminationGracePeriodSeconds %v must exceed SHUTDOWN_DRAIN_DELAY + SHUTDOWN_TIMEOUT = %v", d.Name, deref(g), drain+shutdown)
		}

		// Resources: requests and limits of CPU and memory, requests within limits.
		for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			req, okReq := c.Resources.Requests[r]
			lim, okLim := c.Resources.Limits[r]
			if !okReq || !okLim || req.IsZero() || req.Cmp(lim) > 0 {
				t.Errorf("Deployment %s: %s request %v limit %v; want both, request ≤ limit", d.Name, r, req.String(), lim.String())
			}
		}

		// Prometheus scrape annotations on the pods.
		a := d.Spec.Template.Annotations
		if a["prometheus.io/scrape"] != "true" || a["prometheus.io/port"] != strconv.Itoa(int(metricsPort)) || a["prometheus.io/path"] != "/metrics" {
			t.Errorf("Deployment %s: scrape annotations %v, want scrape true, port %d, path /metrics", d.Name, a, metricsPort)
		}

		// Watchers in exactly one process: the Deployments that enable them (the default) have one pod,
		// replaced with Recreate so two never overlap.
		if enabled, err := strconv.ParseBool(get("WATCHERS_ENABLED")); err == nil && enabled && !gateway {
			replicas := int32(1)
			if d.Spec.Replicas != nil {
				replicas = *d.Spec.Replicas
			}
			watchers += int(replicas)
			if d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
				t.Errorf("Deployment %s runs the watchers: strategy %q, want Recreate (a rolling update runs two at once)", d.Name, d.Spec.Strategy.Type)
			}
		}
	}
	if watchers != 1 {
		t.Errorf("%d pipeline pods run the change-stream watchers, want exactly 1", watchers)
	}

	// Services: named ports, HTTP/2 marked, targets on pods they select.
	for _, s := range o.services {
		d := selected(o, s.Spec.Selector)
		if d == nil {
			t.Errorf("Service %s selects no Deployment's pods (%v)", s.Name, s.Spec.Selector)
			continue
		}
		names := map[string]bool{}
		for _, p := range s.Spec.Ports {
			names[p.Name] = true
			if !targetExists(d.Spec.Template.Spec.Containers[0], p.TargetPort) {
				t.Errorf("Service %s port %s: targetPort %s is not a port of %s's containers", s.Name, p.Name, p.TargetPort.String(), d.Name)
			}
			want := map[string]string{"grpc": "kubernetes.io/h2c", "http": "http"}[p.Name]
			if want == "" || p.AppProtocol == nil || *p.AppProtocol != want {
				t.Errorf("Service %s port %q: appProtocol %v, want ports named grpc (kubernetes.io/h2c) and http (http)", s.Name, p.Name, deref(p.AppProtocol))
			}
		}
		if !names["grpc"] || !names["http"] {
			t.Errorf("Service %s: ports %v, want grpc and http", s.Name, names)
		}
	}

	// The HPA scales the gateway, which then sets no replica count of its own.
	for _, h := range o.hpas {
		var target *appsv1.Deployment
		for _, d := range o.deployments {
			if h.Spec.ScaleTargetRef.Kind == "Deployment" && d.Name == h.Spec.ScaleTargetRef.Name {
				target = d
			}
		}
		switch {
		case target == nil:
			t.Errorf("HPA %s: target %v is not a Deployment here", h.Name, h.Spec.ScaleTargetRef)
		case target.Spec.Replicas != nil:
			t.Errorf("HPA %s: Deployment %s sets replicas %d; every apply would reset the HPA's count", h.Name, target.Name, *target.Spec.Replicas)
		case h.Spec.MinReplicas == nil || *h.Spec.MinReplicas < 1 || h.Spec.MaxReplicas < *h.Spec.MinReplicas:
			t.Errorf("HPA %s: replicas %v to %d", h.Name, deref(h.Spec.MinReplicas), h.Spec.MaxReplicas)
		}
	}

	// Every Deployment with more than one pod is covered by a PodDisruptionBudget.
	for _, d := range o.deployments {
		if d.Spec.Replicas != nil && *d.Spec.Replicas <= 1 {
			continue
		}
		covered := false
		for _, p := range o.pdbs {
			if p.Spec.Selector != nil && matches(p.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
				covered = true
			}
		}
		if !covered {
			t.Errorf("Deployment %s has no PodDisruptionBudget", d.Name)
		}
	}
}

// environment returns the container's variables (ConfigMaps and Secrets of envFrom, then env), checking
// that each is one config reads and that secret ones come from Secrets.
func environment(t *testing.T, o *objects, name string, c corev1.Container, withSecrets bool) map[string]string {
	env := map[string]string{}
	for _, from := range c.EnvFrom {
		switch {
		case from.ConfigMapRef != nil:
			cm, ok := o.configMaps[from.ConfigMapRef.Name]
			if !ok {
				t.Errorf("Deployment %s: envFrom ConfigMap %s is not in the manifests", name, from.ConfigMapRef.Name)
				continue
			}
			for k, v := range cm.Data {
				env[k] = v
			}
		case from.SecretRef != nil:
			s, ok := o.secrets[from.SecretRef.Name]
			if !ok {
				if withSecrets {
					t.Errorf("Deployment %s: envFrom Secret %s is not in the manifests", name, from.SecretRef.Name)
				}
				continue
			}
			for k, v := range merged(s) {
				env[k] = v
			}
		}
	}
	for _, e := range c.Env {
		if !config.Known(e.Name) {
			t.Errorf("Deployment %s: environment variable %s is not one internal/config reads (config.Vars)", name, e.Name)
		}
		if secretVars[e.Name] && (e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil) {
			t.Errorf("Deployment %s: %s must come from a Secret", name, e.Name)
		}
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		case e.ValueFrom.SecretKeyRef != nil:
			if s, ok := o.secrets[e.ValueFrom.SecretKeyRef.Name]; ok {
				env[e.Name] = merged(s)[e.ValueFrom.SecretKeyRef.Key]
			}
		case e.ValueFrom.ConfigMapKeyRef != nil:
			if cm, ok := o.configMaps[e.ValueFrom.ConfigMapKeyRef.Name]; ok {
				env[e.Name] = cm.Data[e.ValueFrom.ConfigMapKeyRef.Key]
			}
		}
	}
	return env
}

// merged returns a Secret's data and stringData as strings.
func merged(s *corev1.Secret) map[string]string {
	out := map[string]string{}
	for k, v := range s.Data {
		out[k] = string(v)
	}
	for k, v := range s.StringData {
		out[k] = v
	}
	return out
}

func probePort(t *testing.T, p *corev1.Probe, named map[string]int32) (port int32, path string) {
	var target intstr.IntOrString
	switch {
	case p.GRPC != nil:
		return p.GRPC.Port, ""
	case p.HTTPGet != nil:
		target, path = p.HTTPGet.Port, p.HTTPGet.Path
	case p.TCPSocket != nil:
		target = p.TCPSocket.Port
	default:
		t.Errorf("probe without gRPC, HTTP or TCP action: %+v", p)
		return 0, ""
	}
	if target.Type == intstr.String {
		return named[target.StrVal], path
	}
	return target.IntVal, path
}

func targetExists(c corev1.Container, target intstr.IntOrString) bool {
	for _, p := range c.Ports {
		if (target.Type == intstr.String && p.Name == target.StrVal) || (target.Type == intstr.Int && p.ContainerPort == target.IntVal) {
			return true
		}
	}
	return false
}

func selected(o *objects, selector map[string]string) *appsv1.Deployment {
	for _, d := range o.deployments {
		if len(selector) > 0 && matches(selector, d.Spec.Template.Labels) {
			return d
		}
	}
	return nil
}

func matches(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func portOf(t *testing.T, addr string) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	n, err := strconv.ParseInt(p, 10, 32)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	return int32(n)
}

func duration(t *testing.T, v string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("duration %q: %v", v, err)
	}
	return d
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}
