package health

import (
	"context"
	"encoding/json"
	"net/http"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
)

// Service implements platform.v1.HealthService from the checker's cached results.
type Service struct {
	platformv1.UnimplementedHealthServiceServer
	checker *Checker
	details func(context.Context) bool
}

// NewService returns the HealthService over checker. The answer is public, so it shows each
// dependency's status and timing only; the error text and detail (which name internal addresses and
// hosts) go to callers for whom details says so (operators). A nil details shows them to nobody.
func NewService(checker *Checker, details func(context.Context) bool) *Service {
	return &Service{checker: checker, details: details}
}

// GetHealth reports the overall status and every dependency's latest check.
func (s *Service) GetHealth(ctx context.Context, _ *platformv1.GetHealthRequest) (*platformv1.GetHealthResponse, error) {
	full := s.details != nil && s.details(ctx)
	snap := s.checker.Snapshot()
	resp := &platformv1.GetHealthResponse{Draining: snap.Draining, Status: overall(snap)}
	for _, r := range snap.Results {
		d := &platformv1.Dependency{
			Name:     r.Name,
			Status:   dependencyStatus(r.Status),
			Required: r.Required,
		}
		if full {
			d.LastError, d.Detail = r.LastError, r.Detail
		}
		if !r.CheckedAt.IsZero() {
			d.Latency = durationpb.New(r.Latency)
			d.CheckTime = timestamppb.New(r.CheckedAt)
		}
		resp.Dependencies = append(resp.Dependencies, d)
	}
	return resp, nil
}

func overall(s Snapshot) platformv1.ServingStatus {
	switch {
	case !s.Ready():
		return platformv1.ServingStatus_SERVING_STATUS_NOT_SERVING
	case s.Degraded():
		return platformv1.ServingStatus_SERVING_STATUS_DEGRADED
	default:
		return platformv1.ServingStatus_SERVING_STATUS_SERVING
	}
}

func dependencyStatus(s Status) platformv1.DependencyStatus {
	switch s {
	case StatusUp:
		return platformv1.DependencyStatus_DEPENDENCY_STATUS_UP
	case StatusDown:
		return platformv1.DependencyStatus_DEPENDENCY_STATUS_DOWN
	case StatusUnsupported:
		return platformv1.DependencyStatus_DEPENDENCY_STATUS_UNSUPPORTED
	case StatusDegraded:
		return platformv1.DependencyStatus_DEPENDENCY_STATUS_DEGRADED
	default:
		return platformv1.DependencyStatus_DEPENDENCY_STATUS_UNSPECIFIED
	}
}

// StatusSetter is the part of grpc's health.Server the checker drives.
type StatusSetter interface {
	SetServingStatus(service string, status healthpb.HealthCheckResponse_ServingStatus)
}

// FollowChecker keeps the grpc.health.v1 statuses in step with the checker: "" (the whole server) is
// SERVING when the server is ready; each named service is SERVING when the dependencies it needs are up
// and the server is not draining.
func FollowChecker(c *Checker, hs StatusSetter, needs map[string][]string) {
	c.Watch(func(s Snapshot) {
		hs.SetServingStatus("", servingStatus(s.Ready()))
		for svc, deps := range needs {
			hs.SetServingStatus(svc, servingStatus(!s.Draining && s.Up(deps...)))
		}
	})
}

func servingStatus(ok bool) healthpb.HealthCheckResponse_ServingStatus {
	if ok {
		return healthpb.HealthCheckResponse_SERVING
	}
	return healthpb.HealthCheckResponse_NOT_SERVING
}

// HTTPHandler serves /healthz (liveness: 200 while the process runs), /readyz (readiness: 200 when
// every required dependency is up and the server is not draining, else 503 naming what fails) and
// /v1/health (GetHealth as protojson, as the gateway serves it through grpc-gateway; processes without
// the gateway, the pipeline, serve it here, with details for the requests details says so of).
func HTTPHandler(c *Checker, details func(*http.Request) bool) http.Handler {
	mux := http.NewServeMux()
	svc := NewService(c, func(ctx context.Context) bool {
		r, _ := ctx.Value(requestKey{}).(*http.Request)
		return details != nil && r != nil && details(r)
	})
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, r *http.Request) {
		resp, _ := svc.GetHealth(context.WithValue(r.Context(), requestKey{}, r), &platformv1.GetHealthRequest{})
		b, err := protojson.Marshal(resp)
		if err != nil {
			http.Error(w, "encode health", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write(b)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"status": "alive"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		s := c.Snapshot()
		if s.Ready() {
			writeJSON(w, http.StatusOK, map[string]any{"status": "ready"})
			return
		}
		body := map[string]any{"status": "not ready", "failing": s.Failing()}
		if s.Draining {
			body["status"] = "draining"
		}
		w.Header().Set("Retry-After", "5")
		writeJSON(w, http.StatusServiceUnavailable, body)
	})
	return mux
}

type requestKey struct{}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
