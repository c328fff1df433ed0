package ratelimit_test

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/app"
	"github.com/msgplatform/platform/internal/app/apptest"
	"github.com/msgplatform/platform/internal/ratelimit"
	"github.com/msgplatform/platform/internal/testenv"
)

// The quotas of the gateway under test, in cost units (a read costs 1, a mutation 2). The rates are so
// low (one unit per 20 s) that nothing refills while a case runs: every number below is exact.
const (
	principalBurst = 4
	tenantBurst    = 10
	rate           = "0.05"
)

// platform is a gateway process started through app.Run (the production composition root) with quotas
// on, over a real redis-server (miniredis without one, unless CI=true) the test may stop.
type platform struct {
	conv    platformv1.ConversationServiceClient
	rest    string // base URL
	metrics string // /metrics URL
	redis   *testenv.RedisServer
}

func startPlatform(t *testing.T) *platform {
	t.Helper()
	mongoURI := testenv.SharedMongo(t)
	rs := testenv.StartRedisServer(t)
	cfg := testenv.Config(t, map[string]string{
		"KAFKA_BROKERS": testenv.Kafka(t), "MONGO_URI": mongoURI, "MONGO_DATABASE": testenv.MongoDatabase(t, mongoURI),
		"REDIS_URL":                rs.URL(),
		"RATE_LIMIT_PRINCIPAL_RPS": rate, "RATE_LIMIT_PRINCIPAL_BURST": strconv.Itoa(principalBurst),
		"RATE_LIMIT_TENANT_RPS": rate, "RATE_LIMIT_TENANT_BURST": strconv.Itoa(tenantBurst),
	})
	logs := &strings.Builder{}
	sw := &syncWriter{w: logs, mu: make(chan struct{}, 1)}
	p := apptest.Start(t, cfg, app.Roles{Gateway: true}, slog.New(slog.NewTextHandler(sw, nil)))
	t.Cleanup(func() {
		if t.Failed() {
			sw.mu <- struct{}{}
			t.Logf("process logs:\n%s", logs)
			<-sw.mu
		}
	})
	conn, err := grpc.NewClient(p.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &platform{conv: platformv1.NewConversationServiceClient(conn), rest: "http://" + p.HTTP,
		metrics: "http://" + p.Metrics + "/metrics", redis: rs}
}

// syncWriter serialises the process's log writes.
type syncWriter struct {
	w  io.Writer
	mu chan struct{}
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu <- struct{}{}
	defer func() { <-s.mu }()
	return s.w.Write(p)
}

// call is one request of a case: who calls (subject of tenant), over which API, reading (ListConversations,
// cost 1) or mutating (CreateConversation, cost 2).
type call struct {
	tenant, subject string
	rest, mutate    bool
	// What must come back: served, or refused by quota (its QuotaFailure subject over gRPC), and the
	// X-RateLimit-Remaining header (-1: not checked).
	refusedBy string // "" served; "principal:<subject>" or "tenant:<tenant>"
	remaining int
}

// outcome is what a call got, over either API.
type outcome struct {
	refused                      bool
	quotaSubject                 string        // gRPC: the QuotaFailure violation's subject
	retryDelay                   time.Duration // gRPC: RetryInfo; REST: Retry-After
	limit, remaining, resetAfter int           // the x-ratelimit-* headers
	retryAfterHeader             bool          // a retry-after header (metadata or HTTP) came back
}

func atoi(t *testing.T, what, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("%s %q: %v", what, s, err)
	}
	return n
}

func (p *platform) do(t *testing.T, c call) outcome {
	t.Helper()
	tok := testenv.Token(t, c.subject, c.tenant)
	if c.rest {
		return p.doREST(t, c, tok)
	}
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
	var hdr metadata.MD
	var err error
	if c.mutate {
		_, err = p.conv.CreateConversation(ctx, &platformv1.CreateConversationRequest{Title: "quota"}, grpc.Header(&hdr))
	} else {
		_, err = p.conv.ListConversations(ctx, &platformv1.ListConversationsRequest{}, grpc.Header(&hdr))
	}
	get := func(k string) string {
		if v := hdr.Get(k); len(v) == 1 {
			return v[0]
		}
		t.Fatalf("%+v: header %s = %v, want one value (headers %v)", c, k, hdr.Get(k), hdr)
		return ""
	}
	o := outcome{limit: atoi(t, "limit", get(ratelimit.HeaderLimit)), remaining: atoi(t, "remaining", get(ratelimit.HeaderRemaining)),
		resetAfter: atoi(t, "reset", get(ratelimit.HeaderReset)), retryAfterHeader: len(hdr.Get(ratelimit.HeaderRetryAfter)) > 0}
	if err == nil {
		return o
	}
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted {
		t.Fatalf("%+v: %v, want OK or RESOURCE_EXHAUSTED", c, err)
	}
	o.refused = true
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.RetryInfo:
			o.retryDelay = d.GetRetryDelay().AsDuration()
		case *errdetails.QuotaFailure:
			o.quotaSubject = d.GetViolations()[0].GetSubject()
		}
	}
	return o
}

func (p *platform) doREST(t *testing.T, c call, tok string) outcome {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, p.rest+"/v1/conversations", nil)
	if c.mutate {
		req, _ = http.NewRequest(http.MethodPost, p.rest+"/v1/conversations", strings.NewReader(`{"title":"quota"}`))
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("%+v: HTTP %d %s, want 200 or 429", c, resp.StatusCode, body)
	}
	for _, h := range []string{"Grpc-Metadata-X-Ratelimit-Limit", "Grpc-Metadata-Retry-After"} {
		if v := resp.Header.Get(h); v != "" {
			t.Errorf("%+v: header %s: %q, want it under its own name only", c, h, v)
		}
	}
	o := outcome{refused: resp.StatusCode == http.StatusTooManyRequests,
		limit:            atoi(t, "X-RateLimit-Limit", resp.Header.Get("X-RateLimit-Limit")),
		remaining:        atoi(t, "X-RateLimit-Remaining", resp.Header.Get("X-RateLimit-Remaining")),
		resetAfter:       atoi(t, "X-RateLimit-Reset", resp.Header.Get("X-RateLimit-Reset")),
		retryAfterHeader: resp.Header.Get("Retry-After") != ""}
	if o.retryAfterHeader {
		o.retryDelay = time.Duration(atoi(t, "Retry-After", resp.Header.Get("Retry-After"))) * time.Second
	}
	if o.refused && !strings.Contains(string(body), "quota exceeded") {
		t.Errorf("%+v: 429 body %s, want the quota's message", c, body)
	}
	return o
}

// check asserts what a call of a case got.
func check(t *testing.T, i int, c call, o outcome) {
	t.Helper()
	api := "gRPC"
	if c.rest {
		api = "REST"
	}
	if o.refused != (c.refusedBy != "") {
		t.Fatalf("call %d (%s %s/%s mutate=%v): refused=%v, want refused by %q", i, api, c.tenant, c.subject, c.mutate, o.refused, c.refusedBy)
	}
	if c.remaining >= 0 && o.remaining != c.remaining {
		t.Errorf("call %d (%s %s/%s): remaining %d, want %d", i, api, c.tenant, c.subject, o.remaining, c.remaining)
	}
	wantLimit := principalBurst
	if strings.HasPrefix(c.refusedBy, "tenant:") {
		wantLimit = tenantBurst
	}
	if o.refused && o.limit != wantLimit {
		t.Errorf("call %d: limit %d, want %d (the refusing quota's burst)", i, o.limit, wantLimit)
	}
	if o.resetAfter < 0 || o.resetAfter > 20*tenantBurst {
		t.Errorf("call %d: reset %ds, want within the time a bucket takes to fill", i, o.resetAfter)
	}
	if !o.refused {
		if o.retryAfterHeader {
			t.Errorf("call %d: served with a retry-after header", i)
		}
		return
	}
	// A refusal says when to come back: RetryInfo over gRPC, Retry-After (whole seconds) over REST; one
	// unit refills in 20 s.
	if !o.retryAfterHeader || o.retryDelay <= 0 || o.retryDelay > 41*time.Second {
		t.Errorf("call %d: refused with retry-after header %v, delay %v; want both, within (0, 41s]", i, o.retryAfterHeader, o.retryDelay)
	}
	if !c.rest && o.quotaSubject != c.refusedBy {
		t.Errorf("call %d: QuotaFailure subject %q, want %q", i, o.quotaSubject, c.refusedBy)
	}
}

// metric returns a sample's value from /metrics (-1 when absent).
func (p *platform) metric(t *testing.T, name string) float64 {
	t.Helper()
	resp, err := http.Get(p.metrics)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	return -1
}

// Through the real gateway (gRPC and REST): a principal over its burst is refused with RESOURCE_EXHAUSTED
// and RetryInfo, 429 and Retry-After, while another principal of its tenant is served; the tenant's quota
// bounds the sum of its principals; a refused call charges nothing; and with Redis stopped the gateway
// keeps enforcing the quotas with its in-process limiter (it fails open to local limits, never closed),
// counting those decisions in platform_ratelimit_fallback_total. Each case uses tenants of its own.
func TestGatewayQuotas(t *testing.T) {
	p := startPlatform(t)
	const unchecked = -1
	cases := []struct {
		name      string
		stopRedis bool
		calls     []call
	}{
		{
			name: "one principal over its burst; another of its tenant still served",
			calls: []call{
				{tenant: "acme", subject: "alice", remaining: 3},               // the tighter quota: principal 3 (tenant 9)
				{tenant: "acme", subject: "alice", mutate: true, remaining: 1}, // a mutation costs 2
				{tenant: "acme", subject: "alice", rest: true, remaining: 0},   // REST charges the same bucket
				{tenant: "acme", subject: "alice", refusedBy: "principal:alice", remaining: 0},
				{tenant: "acme", subject: "alice", rest: true, refusedBy: "principal:alice", remaining: 0},
				{tenant: "acme", subject: "alice", mutate: true, rest: true, refusedBy: "principal:alice", remaining: 0},
				{tenant: "acme", subject: "bob", remaining: 3},
				{tenant: "acme", subject: "bob", rest: true, mutate: true, remaining: 1},
				{tenant: "acme", subject: "bob", rest: true, remaining: 0},
				// The tenant was charged 8 units (refusals cost nothing): a third principal has 2 left.
				{tenant: "acme", subject: "carol", mutate: true, remaining: 0},
			},
		},
		{
			name: "the tenant's quota bounds the sum of its principals",
			calls: []call{
				{tenant: "globex", subject: "u1", mutate: true, remaining: 2},
				{tenant: "globex", subject: "u1", mutate: true, remaining: 0},
				{tenant: "globex", subject: "u2", mutate: true, rest: true, remaining: 2},
				{tenant: "globex", subject: "u2", mutate: true, remaining: 0},
				{tenant: "globex", subject: "u3", remaining: 1}, // the tenant's 1 left is now the tighter
				{tenant: "globex", subject: "u3", rest: true, remaining: 0},
				{tenant: "globex", subject: "u4", refusedBy: "tenant:globex", remaining: 0},
				{tenant: "globex", subject: "u4", rest: true, refusedBy: "tenant:globex", remaining: 0},
				{tenant: "globex", subject: "u3", refusedBy: "tenant:globex", remaining: 0},
				// Another tenant, and the same subject in it, are untouched.
				{tenant: "initech", subject: "u1", mutate: true, remaining: 2},
			},
		},
		{
			name:      "Redis stopped: local limits, counted, never closed",
			stopRedis: true,
			calls: []call{
				// The in-process buckets start full: failing open is the point, within the same quotas.
				{tenant: "umbrella", subject: "dave", remaining: 3},
				{tenant: "umbrella", subject: "dave", rest: true, mutate: true, remaining: 1},
				{tenant: "umbrella", subject: "dave", remaining: 0},
				{tenant: "umbrella", subject: "dave", refusedBy: "principal:dave", remaining: unchecked},
				{tenant: "umbrella", subject: "dave", rest: true, refusedBy: "principal:dave", remaining: unchecked},
				{tenant: "umbrella", subject: "erin", remaining: 3},
				{tenant: "umbrella", subject: "erin", rest: true, remaining: 2},
				// acme's buckets were in Redis; locally acme starts afresh.
				{tenant: "acme", subject: "alice", remaining: 3},
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.stopRedis {
				if got := p.metric(t, "platform_ratelimit_fallback_total"); got != 0 {
					t.Fatalf("platform_ratelimit_fallback_total %v with Redis up, want 0", got)
				}
				p.redis.Stop()
			}
			for i, c := range tc.calls {
				check(t, i, c, p.do(t, c))
			}
			if tc.stopRedis {
				if got := p.metric(t, "platform_ratelimit_fallback_total"); got != float64(len(tc.calls)) {
					t.Errorf("platform_ratelimit_fallback_total %v, want %d (every call decided locally)", got, len(tc.calls))
				}
				if got := p.metric(t, "platform_ratelimit_redis_up"); got != 0 {
					t.Errorf("platform_ratelimit_redis_up %v, want 0", got)
				}
				p.redis.Start() // the gateway's other Redis users, and its graceful stop, find it again
			}
		})
	}
	for _, m := range []string{`platform_ratelimit_decisions_total{result="limited",scope="principal"}`, `platform_ratelimit_decisions_total{result="limited",scope="tenant"}`} {
		if got := p.metric(t, m); got < 3 {
			t.Errorf("%s = %v, want ≥ 3", m, got)
		}
	}
}
