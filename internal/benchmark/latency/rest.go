package latency

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/app"
	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/config"
	"github.com/msgplatform/platform/internal/testenv"
)

// RESTResult is rest_vs_grpc_latency_ratio and the two p50s behind it.
type RESTResult struct {
	Ratio         float64 // median over rounds of p50(REST) / p50(gRPC); goal ≤ 2.0
	P50RESTMicros float64 // GET /v1/conversations/{id} through the grpc-gateway
	P50GRPCMicros float64 // ConversationService.GetConversation over gRPC
	Rounds, Calls int
}

// MeasureRESTvsGRPC measures GetConversation through REST (grpc-gateway, which reaches the gRPC server
// over its loopback client connection, so every interceptor runs) against the same call over gRPC, on
// ONE gateway started by app.Run (the gateway role) over FerretDB, redis-server and kfake, with the same token and
// conversation. Both paths run the whole production chain, authorization and the MongoDB read included.
func MeasureRESTvsGRPC(tb testing.TB, rounds, calls int) (RESTResult, error) {
	g, err := newGateway(tb)
	if err != nil {
		return RESTResult{}, err
	}
	return g.measure(rounds, calls)
}

func (g *gateway) measure(rounds, calls int) (RESTResult, error) {
	p, err := alternate(rounds, calls,
		func() error { _, err := g.getREST(g.member); return err },
		func() error { _, err := g.getGRPC(g.member); return err },
	)
	if err != nil {
		return RESTResult{}, fmt.Errorf("measure REST vs gRPC: %w", err)
	}
	return RESTResult{Ratio: p.Ratio, P50RESTMicros: p.P50A, P50GRPCMicros: p.P50B, Rounds: rounds, Calls: calls}, nil
}

// gateway is one production gateway and a caller of each protocol.
type gateway struct {
	grpc          platformv1.ConversationServiceClient
	msgs          platformv1.MessageServiceClient
	http          *http.Client
	rest          string // base URL
	metrics       string // /metrics URL
	conversation  string
	member, other string // bearer tokens: the conversation's owner, and a user of the tenant who is no member
	mongoURI, db  string // the gateway's database
}

// newGateway starts a gateway; extra adds or overrides configuration variables (the OTEL_* of a traced
// gateway).
func newGateway(tb testing.TB, extra ...map[string]string) (*gateway, error) {
	tb.Helper()
	mongoURI := testenv.SharedMongo(tb)
	db := testenv.MongoDatabase(tb, mongoURI)
	secret := rand.Text() + rand.Text()
	vars := map[string]string{
		"GRPC_ADDR": "127.0.0.1:0", "HTTP_ADDR": "127.0.0.1:0", "METRICS_ADDR": "127.0.0.1:0",
		"KAFKA_BROKERS": testenv.Kafka(tb), "MONGO_URI": mongoURI, "MONGO_DATABASE": db,
		"REDIS_URL": testenv.Redis(tb), "AUTH_HMAC_SECRET": secret, "KAFKA_SIGNING_KEYS": testenv.SigningKeysSpec,
		"SHUTDOWN_DRAIN_DELAY": "0s", "SHUTDOWN_TIMEOUT": "5s",
		// Quotas on, as in production, but far above the offered load: both protocols pay the Redis check,
		// none is refused.
		"RATE_LIMIT_PRINCIPAL_RPS": "1000000", "RATE_LIMIT_PRINCIPAL_BURST": "2000000",
		"RATE_LIMIT_TENANT_RPS": "1000000", "RATE_LIMIT_TENANT_BURST": "2000000",
	}
	for _, e := range extra {
		maps.Copy(vars, e)
	}
	cfg, err := config.Load(func(k string) string { return vars[k] })
	if err != nil {
		return nil, err
	}
	// As in production: one JSON log line per call (the handler's cost counts), written nowhere.
	logger := slog.New(slog.NewJSONHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan app.Addresses, 1)
	done := make(chan error, 1)
	go func() {
		done <- app.Run(ctx, cfg, logger, app.Roles{Gateway: true}, func(a app.Addresses) { ready <- a })
	}()
	var srv app.Addresses
	select {
	case srv = <-ready:
	case err := <-done:
		cancel()
		return nil, fmt.Errorf("gateway did not start: %w", err)
	case <-time.After(60 * time.Second):
		cancel()
		return nil, fmt.Errorf("gateway not ready after 60s")
	}
	tb.Cleanup(func() { cancel(); <-done })

	conn, err := grpc.NewClient(srv.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	tb.Cleanup(func() { _ = conn.Close() })
	g := &gateway{
		grpc:     platformv1.NewConversationServiceClient(conn),
		msgs:     platformv1.NewMessageServiceClient(conn),
		http:     &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}, Timeout: 10 * time.Second},
		rest:     "http://" + srv.HTTP,
		metrics:  "http://" + srv.Metrics + "/metrics",
		mongoURI: mongoURI, db: db,
	}
	tb.Cleanup(g.http.CloseIdleConnections)
	for _, c := range []struct {
		tok *string
		sub string
	}{{&g.member, benchMember}, {&g.other, benchNonMember}} {
		if *c.tok, err = auth.MintHS256([]byte(secret), auth.Principal{Subject: c.sub, TenantID: benchTenant, Roles: []string{"user"}}, time.Hour, "", ""); err != nil {
			return nil, err
		}
	}
	created, err := g.grpc.CreateConversation(withToken(g.member), &platformv1.CreateConversationRequest{Title: "bench"})
	if err != nil {
		return nil, fmt.Errorf("create the conversation: %w", err)
	}
	g.conversation = created.GetConversation().GetId()

	// The invalidation subscription starts with the server's workers; wait for it so the calls measured
	// see the cache as production does (warm, in-process).
	deadline := time.Now().Add(10 * time.Second)
	for !g.l1Active() {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("membership cache invalidation subscription not up after 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := g.getGRPC(g.member); err != nil { // fills the membership cache
		return nil, fmt.Errorf("warm-up call: %w", err)
	}
	return g, nil
}

func withToken(tok string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
}

// getGRPC calls GetConversation over gRPC and returns the conversation id answered.
func (g *gateway) getGRPC(tok string) (string, error) {
	resp, err := g.grpc.GetConversation(withToken(tok), &platformv1.GetConversationRequest{ConversationId: g.conversation})
	if err != nil {
		return "", err
	}
	return resp.GetConversation().GetId(), nil
}

// getREST calls GET /v1/conversations/{id} and returns the body; a status other than 200 is an error.
func (g *gateway) getREST(tok string) ([]byte, error) {
	req, err := http.NewRequest(http.MethodGet, g.rest+"/v1/conversations/"+g.conversation, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := g.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return body, &statusError{code: resp.StatusCode}
	}
	return body, nil
}

type statusError struct{ code int }

func (e *statusError) Error() string { return fmt.Sprintf("HTTP %d", e.code) }

// l1Active reads platform_membership_cache_local_active from the gateway's /metrics.
func (g *gateway) l1Active() bool {
	v, err := g.metric("platform_membership_cache_local_active")
	return err == nil && v == 1
}

// metric reads an unlabelled sample (name value) from the gateway's /metrics, or one with labels when
// name includes them (name{label="value"}).
func (g *gateway) metric(name string) (float64, error) {
	resp, err := g.http.Get(g.metrics)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("metric %s not found", name)
}
