package gateway

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/msgplatform/platform/internal/observability"
	"github.com/msgplatform/platform/internal/requestid"
)

// rejectionLogEvery is the most often a refused unauthenticated call is logged: anyone can make such
// calls, so logging each would let them fill the logs; the counter has them all.
const rejectionLogEvery = time.Second

// rejections counts the calls refused for want of a valid token, by transport, and logs at most one per
// rejectionLogEvery, with how many were not logged since the last line.
type rejections struct {
	counter *prometheus.CounterVec
	logger  *slog.Logger
	next    func(ctx context.Context, method string, err error) // Options.OnUnauthenticated, if any

	mu         sync.Mutex
	lastLogged time.Time
	suppressed int
}

func newRejections(reg prometheus.Registerer, logger *slog.Logger, next func(context.Context, string, error)) (*rejections, error) {
	counter, err := observability.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: observability.Namespace, Name: "unauthenticated_total",
		Help: "Calls refused for want of a valid bearer token, by transport (grpc, or rest: refused before its body was read).",
	}, []string{"transport"}))
	if err != nil {
		return nil, err
	}
	counter.WithLabelValues("grpc")
	counter.WithLabelValues("rest")
	return &rejections{counter: counter, logger: logger, next: next}, nil
}

func (r *rejections) grpc(ctx context.Context, method string, err error) {
	r.hear(ctx, "grpc", method, err)
}
func (r *rejections) rest(ctx context.Context, method string, err error) {
	r.hear(ctx, "rest", method, err)
}

func (r *rejections) hear(ctx context.Context, transport, method string, err error) {
	r.counter.WithLabelValues(transport).Inc()
	if r.next != nil {
		r.next(ctx, method, err)
	}
	r.mu.Lock()
	now := time.Now()
	if now.Sub(r.lastLogged) < rejectionLogEvery {
		r.suppressed++
		r.mu.Unlock()
		return
	}
	suppressed := r.suppressed
	r.lastLogged, r.suppressed = now, 0
	r.mu.Unlock()
	r.logger.WarnContext(ctx, "unauthenticated call refused", "transport", transport, "method", method,
		"error", err, "request_id", requestid.From(ctx), "not_logged_since_last", suppressed)
}
