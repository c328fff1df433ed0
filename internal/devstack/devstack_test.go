package devstack_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/devstack"
	"github.com/msgplatform/platform/internal/testenv"
)

// TestDevstackEndToEnd starts the whole dev stack in-process (embedded Kafka and FerretDB, a real
// redis-server) on free ports and checks what a new user checks after `make run`.
func TestDevstackEndToEnd(t *testing.T) {
	ctx, addrs, cancel, done := startDevstack(t)
	defer cancel()
	if strings.Join(addrs.Embedded, ",") != "kafka,mongodb" {
		t.Errorf("embedded = %v, want kafka and mongodb (redis given by REDIS_URL)", addrs.Embedded)
	}

	conn, err := grpc.NewClient(addrs.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	testenv.Eventually(t, "grpc health SERVING", 30*time.Second, func() bool {
		r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		return err == nil && r.GetStatus() == healthpb.HealthCheckResponse_SERVING
	})
	base := "http://" + addrs.HTTP

	t.Run("grpc health per service", func(t *testing.T) {
		for _, svc := range []string{"", "platform.v1.ConversationService", "platform.v1.MessageService",
			"platform.v1.DeadLetterService", "platform.v1.HealthService"} {
			r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
			if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				t.Errorf("Check(%q) = %v, %v", svc, r.GetStatus(), err)
			}
		}
	})

	t.Run("GetHealth over gRPC names every dependency", func(t *testing.T) {
		r, err := platformv1.NewHealthServiceClient(conn).GetHealth(ctx, &platformv1.GetHealthRequest{})
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]platformv1.DependencyStatus{
			"mongodb": platformv1.DependencyStatus_DEPENDENCY_STATUS_UP,
			"redis":   platformv1.DependencyStatus_DEPENDENCY_STATUS_UP,
			"kafka":   platformv1.DependencyStatus_DEPENDENCY_STATUS_UP,
			// FerretDB has no change streams: reported, not hidden, and the server stays ready.
			"change_streams": platformv1.DependencyStatus_DEPENDENCY_STATUS_UNSUPPORTED,
			// The circuit breaker around MongoDB is closed.
			"mongodb_circuit": platformv1.DependencyStatus_DEPENDENCY_STATUS_UP,
			// The pipeline keeps up with messages.inbound.
			"pipeline": platformv1.DependencyStatus_DEPENDENCY_STATUS_UP,
		}
		for _, d := range r.GetDependencies() {
			if want[d.GetName()] != d.GetStatus() {
				t.Errorf("%s = %v (%s), want %v", d.GetName(), d.GetStatus(), d.GetLastError(), want[d.GetName()])
			}
			delete(want, d.GetName())
		}
		if len(want) > 0 {
			t.Errorf("missing dependencies %v", want)
		}
		if r.GetStatus() != platformv1.ServingStatus_SERVING_STATUS_DEGRADED {
			t.Errorf("overall = %v, want DEGRADED (change streams unsupported)", r.GetStatus())
		}
	})

	t.Run("GetHealth over REST", func(t *testing.T) {
		code, body := getJSON(t, base+"/v1/health")
		if code != http.StatusOK {
			t.Fatalf("GET /v1/health = %d %v", code, body)
		}
		got := map[string]any{}
		for _, d := range body["dependencies"].([]any) {
			m := d.(map[string]any)
			got[m["name"].(string)] = m["status"]
		}
		for _, name := range []string{"mongodb", "redis", "kafka"} {
			if got[name] != "DEPENDENCY_STATUS_UP" {
				t.Errorf("%s = %v, want DEPENDENCY_STATUS_UP", name, got[name])
			}
		}
	})

	t.Run("liveness and readiness", func(t *testing.T) {
		for _, p := range []string{"/healthz", "/readyz"} {
			if code, body := getJSON(t, base+p); code != http.StatusOK {
				t.Errorf("GET %s = %d %v", p, code, body)
			}
		}
	})

	t.Run("reflection lists the services", func(t *testing.T) {
		stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		listed := map[string]bool{}
		for _, s := range resp.GetListServicesResponse().GetService() {
			listed[s.GetName()] = true
		}
		for _, want := range []string{"platform.v1.ConversationService", "platform.v1.MessageService",
			"platform.v1.DeadLetterService", "platform.v1.HealthService", "grpc.health.v1.Health"} {
			if !listed[want] {
				t.Errorf("reflection does not list %s (got %v)", want, listed)
			}
		}
	})

	t.Run("tokens are required; operators reach the DLQ", func(t *testing.T) {
		_, err := platformv1.NewConversationServiceClient(conn).CreateConversation(ctx, &platformv1.CreateConversationRequest{Title: "x"})
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("gRPC CreateConversation without a token = %v, want Unauthenticated", err)
		}
		code, body := postJSON(t, base+"/v1/conversations", `{"title":"x"}`)
		if code != http.StatusUnauthorized || body["code"] != float64(codes.Unauthenticated) {
			t.Errorf("REST POST /v1/conversations without a token = %d %v, want 401", code, body)
		}
		tok, err := auth.MintHS256([]byte(auth.DevHMACSecret), auth.Principal{Subject: "oscar", TenantID: "t1", Roles: []string{"operator"}}, time.Hour, "", "")
		if err != nil {
			t.Fatal(err)
		}
		octx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
		stats, err := platformv1.NewDeadLetterServiceClient(conn).GetDeadLetterStats(octx, &platformv1.GetDeadLetterStatsRequest{})
		if err != nil || stats.GetTotal() != 0 {
			t.Errorf("operator GetDeadLetterStats on an empty DLQ = %v, %v", stats, err)
		}
	})

	t.Run("bad JSON is 400", func(t *testing.T) {
		tok, err := auth.MintHS256([]byte(auth.DevHMACSecret), auth.Principal{Subject: "alice", TenantID: "t1", Roles: []string{"user"}}, time.Hour, "", "")
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range []string{`{"title":`, `{"titel":"typo"}`, `[1,2]`} {
			// With a token: an anonymous caller gets 401 before its body is looked at.
			req, _ := http.NewRequest(http.MethodPost, base+"/v1/conversations", strings.NewReader(b))
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			if code, body := decode(t, resp); code != http.StatusBadRequest || body["code"] != float64(codes.InvalidArgument) {
				t.Errorf("POST %s = %d %v, want 400 INVALID_ARGUMENT", b, code, body)
			}
		}
	})

	t.Run("request id travels back", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, base+"/v1/health", nil)
		req.Header.Set("X-Request-Id", "trace-me-123")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("X-Request-Id"); got != "trace-me-123" {
			t.Errorf("X-Request-Id = %q", got)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		resp, err := http.Get("http://" + addrs.Metrics + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, want := range []string{
			`grpc_server_handled_total{grpc_code="OK",grpc_method="GetHealth",grpc_service="platform.v1.HealthService",grpc_type="unary"}`,
			`grpc_server_handling_seconds_bucket`, `go_goroutines`, `process_resident_memory_bytes`,
			`platform_http_requests_total{code="200",method="GET",route="/v1/health"}`,
			`platform_store_circuit_state{name="mongodb"} 0`, `platform_mongodb_pool_connections_in_use`,
		} {
			if !strings.Contains(string(b), want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
	})

	// Shutdown: readiness must turn 503 while the listeners still answer, then Run returns cleanly.
	cancel()
	testenv.Eventually(t, "readyz 503 during the drain delay", 2*time.Second, func() bool {
		code, _ := getJSON(t, base+"/readyz")
		return code == http.StatusServiceUnavailable
	})
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("devstack.Run after cancel: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("devstack did not stop within 30s of cancellation")
	}
}

// startDevstack runs devstack.Run on free ports with embedded Kafka and FerretDB and a real redis-server,
// and returns once it serves. It leaves AUTH_HMAC_SECRET and KAFKA_SIGNING_KEYS empty, as `make run` does,
// so the devstack checks tokens with auth.DevHMACSecret and signs records with a key of its own. cancel
// starts the shutdown; done receives Run's result. extra adds or overrides variables (an empty value
// restores the production default).
func startDevstack(t *testing.T, extra ...map[string]string) (context.Context, devstack.Addresses, context.CancelFunc, chan error) {
	t.Helper()
	vars := map[string]string{
		"AUTH_HMAC_SECRET": "", "KAFKA_SIGNING_KEYS": "",
		"DEVSTACK_DATA_DIR": t.TempDir(), "REDIS_URL": testenv.Redis(t),
		"HEALTH_CHECK_INTERVAL": "200ms", "SHUTDOWN_DRAIN_DELAY": "500ms", "SHUTDOWN_TIMEOUT": "5s",
	}
	for _, e := range extra {
		maps.Copy(vars, e)
	}
	cfg := testenv.Config(t, vars)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ready := make(chan devstack.Addresses, 1)
	done := make(chan error, 1)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	go func() { done <- devstack.Run(ctx, cfg, logger, func(a devstack.Addresses) { ready <- a }) }()
	select {
	case addrs := <-ready:
		return ctx, addrs, cancel, done
	case err := <-done:
		t.Fatalf("devstack stopped before serving: %v", err)
	case <-time.After(90 * time.Second):
		t.Fatal("devstack not serving after 90s")
	}
	panic("unreachable")
}

func getJSON(t *testing.T, url string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return decode(t, resp)
}

func postJSON(t *testing.T, url, body string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	return decode(t, resp)
}

func decode(t *testing.T, resp *http.Response) (int, map[string]any) {
	t.Helper()
	defer resp.Body.Close()
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatalf("%s %s: body is not JSON: %v", resp.Request.Method, resp.Request.URL, err)
	}
	return resp.StatusCode, m
}
