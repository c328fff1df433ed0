package health

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
)

// switchable is a dependency check a test turns up, down or unsupported.
type switchable struct {
	mu  sync.Mutex
	err error
}

func (s *switchable) set(err error) { s.mu.Lock(); s.err = err; s.mu.Unlock() }
func (s *switchable) check(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

type recorder struct {
	mu     sync.Mutex
	status map[string]healthpb.HealthCheckResponse_ServingStatus
}

func (r *recorder) SetServingStatus(svc string, st healthpb.HealthCheckResponse_ServingStatus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status[svc] = st
}

func (r *recorder) get(svc string) healthpb.HealthCheckResponse_ServingStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.status[svc]
}

func newTestChecker() (*Checker, map[string]*switchable) {
	sw := map[string]*switchable{"mongodb": {}, "kafka": {}, "change_streams": {}}
	c := NewChecker([]Dependency{
		{Name: "mongodb", Required: true, Check: sw["mongodb"].check},
		{Name: "kafka", Required: true, Check: sw["kafka"].check},
		{Name: "change_streams", Check: sw["change_streams"].check},
	}, time.Hour, time.Second, slog.New(slog.NewTextHandler(io.Discard, nil)))
	return c, sw
}

func TestCheckerFollowsDependencies(t *testing.T) {
	const svcNeedsKafka, svcNeedsMongo = "svc.Kafka", "svc.Mongo"
	tests := []struct {
		name                 string
		mongo, kafka, stream error
		drain                bool
		wantReady, wantDegr  bool
		wantOverall          platformv1.ServingStatus
		wantKafkaSvc, wantMS healthpb.HealthCheckResponse_ServingStatus
	}{
		{"all up", nil, nil, nil, false, true, false, platformv1.ServingStatus_SERVING_STATUS_SERVING, healthpb.HealthCheckResponse_SERVING, healthpb.HealthCheckResponse_SERVING},
		{"change streams unsupported", nil, nil, ErrUnsupported, false, true, true, platformv1.ServingStatus_SERVING_STATUS_DEGRADED, healthpb.HealthCheckResponse_SERVING, healthpb.HealthCheckResponse_SERVING},
		{"kafka down", nil, errors.New("no brokers"), nil, false, false, false, platformv1.ServingStatus_SERVING_STATUS_NOT_SERVING, healthpb.HealthCheckResponse_NOT_SERVING, healthpb.HealthCheckResponse_SERVING},
		{"draining", nil, nil, nil, true, false, false, platformv1.ServingStatus_SERVING_STATUS_NOT_SERVING, healthpb.HealthCheckResponse_NOT_SERVING, healthpb.HealthCheckResponse_NOT_SERVING},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, sw := newTestChecker()
			rec := &recorder{status: map[string]healthpb.HealthCheckResponse_ServingStatus{}}
			FollowChecker(c, rec, map[string][]string{svcNeedsKafka: {"kafka"}, svcNeedsMongo: {"mongodb"}})
			sw["mongodb"].set(tc.mongo)
			sw["kafka"].set(tc.kafka)
			sw["change_streams"].set(tc.stream)
			c.CheckNow(context.Background())
			if tc.drain {
				c.SetDraining()
			}
			snap := c.Snapshot()
			if snap.Ready() != tc.wantReady || snap.Degraded() != tc.wantDegr {
				t.Errorf("ready=%v degraded=%v, want %v %v", snap.Ready(), snap.Degraded(), tc.wantReady, tc.wantDegr)
			}
			resp, _ := NewService(c, operator).GetHealth(context.Background(), nil)
			if resp.GetStatus() != tc.wantOverall || resp.GetDraining() != tc.drain {
				t.Errorf("GetHealth status=%v draining=%v, want %v %v", resp.GetStatus(), resp.GetDraining(), tc.wantOverall, tc.drain)
			}
			if got := rec.get(""); (got == healthpb.HealthCheckResponse_SERVING) != tc.wantReady {
				t.Errorf(`grpc health "" = %v, want serving=%v`, got, tc.wantReady)
			}
			if got := rec.get(svcNeedsKafka); got != tc.wantKafkaSvc {
				t.Errorf("grpc health %s = %v, want %v", svcNeedsKafka, got, tc.wantKafkaSvc)
			}
			if got := rec.get(svcNeedsMongo); got != tc.wantMS {
				t.Errorf("grpc health %s = %v, want %v", svcNeedsMongo, got, tc.wantMS)
			}
		})
	}
}

func TestLastErrorKeptUntilSuccess(t *testing.T) {
	c, sw := newTestChecker()
	sw["kafka"].set(errors.New("dial tcp: connection refused"))
	c.CheckNow(context.Background())
	resp, _ := NewService(c, operator).GetHealth(context.Background(), nil)
	kafka := resp.GetDependencies()[1]
	if kafka.GetName() != "kafka" || kafka.GetStatus() != platformv1.DependencyStatus_DEPENDENCY_STATUS_DOWN ||
		kafka.GetLastError() != "dial tcp: connection refused" || kafka.GetLatency() == nil || kafka.GetCheckTime() == nil {
		t.Fatalf("kafka after failure = %v", kafka)
	}
	sw["kafka"].set(nil)
	c.CheckNow(context.Background())
	resp, _ = NewService(c, operator).GetHealth(context.Background(), nil)
	if d := resp.GetDependencies()[1]; d.GetStatus() != platformv1.DependencyStatus_DEPENDENCY_STATUS_UP || d.GetLastError() != "" {
		t.Fatalf("kafka after recovery = %v", d)
	}
}

func operator(context.Context) bool { return true }

// The public answer names each dependency and its status, never the error text or detail (addresses,
// hosts); operators see them.
func TestDetailsOnlyForOperators(t *testing.T) {
	c, sw := newTestChecker()
	sw["kafka"].set(errors.New("dial tcp 10.0.0.7:9092: connection refused"))
	c.CheckNow(context.Background())
	for _, tc := range []struct {
		name    string
		details func(context.Context) bool
		want    string
	}{
		{"no rule", nil, ""},
		{"not an operator", func(context.Context) bool { return false }, ""},
		{"operator", operator, "dial tcp 10.0.0.7:9092: connection refused"},
	} {
		resp, _ := NewService(c, tc.details).GetHealth(context.Background(), nil)
		kafka := resp.GetDependencies()[1]
		if kafka.GetStatus() != platformv1.DependencyStatus_DEPENDENCY_STATUS_DOWN || kafka.GetLastError() != tc.want {
			t.Errorf("%s: kafka = %v, want DOWN with last_error %q", tc.name, kafka, tc.want)
		}
	}
	rec := httptest.NewRecorder()
	HTTPHandler(c, func(r *http.Request) bool { return r.Header.Get("X-Op") == "yes" }).ServeHTTP(rec, httptest.NewRequest("GET", "/v1/health", nil))
	if strings.Contains(rec.Body.String(), "10.0.0.7") || !strings.Contains(rec.Body.String(), "DEPENDENCY_STATUS_DOWN") {
		t.Errorf("public /v1/health = %s", rec.Body)
	}
	rec = httptest.NewRecorder()
	req := httptest.NewRequest("GET", "/v1/health", nil)
	req.Header.Set("X-Op", "yes")
	HTTPHandler(c, func(r *http.Request) bool { return r.Header.Get("X-Op") == "yes" }).ServeHTTP(rec, req)
	if !strings.Contains(rec.Body.String(), "10.0.0.7") {
		t.Errorf("operator's /v1/health = %s", rec.Body)
	}
}

func TestCheckTimeout(t *testing.T) {
	c := NewChecker([]Dependency{{Name: "slow", Required: true, Check: func(ctx context.Context) error {
		<-ctx.Done()
		return ctx.Err()
	}}}, time.Hour, 20*time.Millisecond, slog.New(slog.NewTextHandler(io.Discard, nil)))
	start := time.Now()
	c.CheckNow(context.Background())
	if r := c.Snapshot().Results[0]; r.Status != StatusDown || time.Since(start) > 5*time.Second {
		t.Fatalf("a hanging check must be cut at the timeout and reported down: %+v", r)
	}
}

func TestHTTPProbes(t *testing.T) {
	c, sw := newTestChecker()
	srv := httptest.NewServer(HTTPHandler(c, nil))
	defer srv.Close()
	get := func(path string) (int, map[string]any) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		return resp.StatusCode, body
	}

	if code, _ := get("/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("readyz before the first check = %d, want 503", code)
	}
	c.CheckNow(context.Background())
	if code, _ := get("/readyz"); code != http.StatusOK {
		t.Errorf("readyz with all up = %d", code)
	}
	sw["mongodb"].set(errors.New("down"))
	c.CheckNow(context.Background())
	code, body := get("/readyz")
	if failing, _ := body["failing"].([]any); code != http.StatusServiceUnavailable || len(failing) != 1 || failing[0] != "mongodb" {
		t.Errorf("readyz with mongodb down = %d %v, want 503 naming mongodb", code, body)
	}
	if code, _ := get("/healthz"); code != http.StatusOK {
		t.Errorf("healthz must stay 200 while the process lives, got %d", code)
	}
	sw["mongodb"].set(nil)
	c.CheckNow(context.Background())
	c.SetDraining()
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || body["status"] != "draining" {
		t.Errorf("readyz while draining = %d %v", code, body)
	}
}
