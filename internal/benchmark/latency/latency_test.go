package latency

import (
	"context"
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/testenv"
)

// The authorized path really authorizes: every measured call is an allow decision of the authorizer, served
// by the in-process cache, and a non-member or an anonymous caller is refused on the very same path,
// while the plain server answers anyone.
func TestMeasureAuthzGoesThroughAuthorization(t *testing.T) {
	s, err := newAuthzSetup(t)
	if err != nil {
		t.Fatal(err)
	}
	before := testenv.Metric(t, s.reg, "platform_authz_decisions_total", "permission", "conversation.read", "result", "allow")
	l1Before := testenv.Metric(t, s.reg, "platform_membership_cache_lookups_total", "result", "local_hit")
	const rounds, calls = 3, 20
	res, err := s.measure(rounds, calls)
	if err != nil {
		t.Fatal(err)
	}
	if res.Ratio <= 0 || res.P50AuthorizedMicros <= 0 || res.P50PlainMicros <= 0 {
		t.Fatalf("result = %+v", res)
	}
	authorized := float64(rounds*calls + 5) // the measured calls and alternate's warm-up
	if got := testenv.Metric(t, s.reg, "platform_authz_decisions_total", "permission", "conversation.read", "result", "allow") - before; got != authorized {
		t.Errorf("allow decisions during the measurement = %v, want %v (one per authorized call)", got, authorized)
	}
	if got := testenv.Metric(t, s.reg, "platform_membership_cache_lookups_total", "result", "local_hit") - l1Before; got != authorized {
		t.Errorf("in-process cache hits = %v, want %v: the cache was not warm", got, authorized)
	}

	req := &platformv1.GetConversationRequest{ConversationId: s.conversation}
	if _, err := s.authorized.GetConversation(s.nonMember, req); status.Code(err) != codes.PermissionDenied {
		t.Errorf("non-member on the authorized path: %v, want PermissionDenied", err)
	}
	if _, err := s.authorized.GetConversation(context.Background(), req); status.Code(err) != codes.Unauthenticated {
		t.Errorf("no token on the authorized path: %v, want Unauthenticated", err)
	}
	if _, err := s.plain.GetConversation(s.nonMember, req); err != nil {
		t.Errorf("plain server: %v, want no interceptor at all", err)
	}
}

func TestMeasureAuthz(t *testing.T) {
	res, err := MeasureAuthz(t, 2, 10)
	if err != nil {
		t.Fatal(err)
	}
	if res.Ratio <= 0 || res.Rounds != 2 || res.Calls != 10 {
		t.Fatalf("result = %+v", res)
	}
}

// Both paths hit the same gateway, conversation and token; REST goes through authorization too.
func TestMeasureRESTvsGRPC(t *testing.T) {
	g, err := newGateway(t)
	if err != nil {
		t.Fatal(err)
	}
	const l1Hits = `platform_membership_cache_lookups_total{result="local_hit"}`
	before, err := g.metric(l1Hits)
	if err != nil {
		t.Fatal(err)
	}
	res, err := g.measure(2, 10)
	if err != nil {
		t.Fatal(err)
	}
	// Every measured call (both protocols, warm-up included) is authorized from the warm in-process cache.
	if after, err := g.metric(l1Hits); err != nil || after-before != 2*(2*10+5) {
		t.Errorf("in-process membership hits during the measurement = %v (%v), want %d", after-before, err, 2*(2*10+5))
	}
	if res.Ratio <= 0 || res.P50RESTMicros <= 0 || res.P50GRPCMicros <= 0 {
		t.Fatalf("result = %+v", res)
	}
	body, err := g.getREST(g.member)
	if err != nil || !strings.Contains(string(body), `"id":"`+g.conversation+`"`) {
		t.Errorf("REST answer = %s, %v; want the conversation", body, err)
	}
	if id, err := g.getGRPC(g.member); err != nil || id != g.conversation {
		t.Errorf("gRPC answer = %q, %v", id, err)
	}
	var se *statusError
	if _, err := g.getREST(g.other); !errors.As(err, &se) || se.code != 403 {
		t.Errorf("REST as a non-member: %v, want HTTP 403", err)
	}
	if _, err := g.getGRPC(g.other); status.Code(err) != codes.PermissionDenied {
		t.Errorf("gRPC as a non-member: %v, want PermissionDenied", err)
	}
	if _, err := g.getREST(""); !errors.As(err, &se) || se.code != 401 {
		t.Errorf("REST without a token: %v, want HTTP 401", err)
	}
}

// BenchmarkAuthzOverhead reports authz_latency_ratio (goal ≤ 1.10); run with -benchtime 1x.
func BenchmarkAuthzOverhead(b *testing.B) {
	for range b.N {
		res, err := MeasureAuthz(b, 11, 400)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(res.Ratio, "authz_latency_ratio")
		b.ReportMetric(res.P50AuthorizedMicros, "p50_authorized_µs")
		b.ReportMetric(res.P50PlainMicros, "p50_no_interceptors_µs")
	}
}

// BenchmarkRESTvsGRPC reports rest_vs_grpc_latency_ratio (goal ≤ 2.0); run with -benchtime 1x.
func BenchmarkRESTvsGRPC(b *testing.B) {
	for range b.N {
		res, err := MeasureRESTvsGRPC(b, 9, 200)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(res.Ratio, "rest_vs_grpc_latency_ratio")
		b.ReportMetric(res.P50RESTMicros, "p50_rest_µs")
		b.ReportMetric(res.P50GRPCMicros, "p50_grpc_µs")
	}
}

// The unread-list measurement lists every conversation with its exact unread count (it fails otherwise).
func TestMeasureUnreadListCountsRight(t *testing.T) {
	res, err := MeasureUnreadList(t, 12, 5, 5)
	if err != nil {
		t.Fatal(err)
	}
	if res.P50Millis <= 0 || res.Conversations != 12 {
		t.Fatalf("result = %+v", res)
	}
}

// BenchmarkUnreadList is list_conversations_unread_p50_ms alone: go test -run '^$' -bench UnreadList.
func BenchmarkUnreadList(b *testing.B) {
	res, err := MeasureUnreadList(b, 200, 50, 50)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(res.P50Millis, "p50_ms")
	b.ReportMetric(res.P90Millis, "p90_ms")
}

// The traced gateway exports spans to the sink, every path answers, and the result carries what the
// harness reports.
func TestMeasureTracing(t *testing.T) {
	res, err := MeasureTracing(t, 1, 20)
	if err != nil {
		t.Fatal(err)
	}
	// At least the server span of each traced call: REST/gRPC, the three comparisons, their warm-ups.
	if minSpans := int64(4 * 20); res.SpansExported < minSpans {
		t.Errorf("%d spans exported, want at least %d", res.SpansExported, minSpans)
	}
	for name, p := range map[string]Pair{"REST vs gRPC": {Ratio: res.RESTvsGRPC.Ratio, P50A: res.RESTvsGRPC.P50RESTMicros, P50B: res.RESTvsGRPC.P50GRPCMicros},
		"get gRPC": res.GetGRPC, "get REST": res.GetREST, "send": res.Send} {
		if p.Ratio <= 0 || p.P50A <= 0 || p.P50B <= 0 {
			t.Errorf("%s: %+v, want every figure measured", name, p)
		}
	}
}
