package api_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/testenv"
)

// The edge's limits on what one request may be, over both transports, through the production process.
func TestEdgeRequestLimits(t *testing.T) {
	g := startGateway(t, testenv.Kafka(t), gatewayOnly)
	alice := testenv.Token(t, "alice", "t1")
	conv := newConversation(t, g, alice)

	t.Run("gRPC", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			id   string
			want codes.Code
		}{
			{"id over 128 bytes", strings.Repeat("c", 129), codes.InvalidArgument},
			{"id of 3 MB: over the request limit", strings.Repeat("c", 3<<20), codes.ResourceExhausted},
			{"invalid id characters", "c\x01", codes.InvalidArgument},
		} {
			_, err := g.conv.GetConversation(as(alice), &platformv1.GetConversationRequest{ConversationId: tc.id})
			if status.Code(err) != tc.want {
				t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
			}
		}
	})

	// The largest legal SendMessage in JSON: a body and metadata whose every character escapes to six bytes.
	meta := map[string]string{}
	for i := range envelope.MaxMetadata {
		meta[fmt.Sprintf("%s%02d", strings.Repeat("k", envelope.MaxMetadataKey-2), i)] = strings.Repeat("\x01", envelope.MaxMetadataValue)
	}
	largest, err := json.Marshal(map[string]any{"body": strings.Repeat("\x01", envelope.MaxBodyBytes), "metadata": meta,
		"client_message_id": strings.Repeat("m", envelope.MaxClientMessageIDBytes)})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("largest legal SendMessage: %d bytes of JSON (limit %d)", len(largest), envelope.MaxRequestBytes)
	sendPath := "/v1/conversations/" + conv + "/messages"
	for _, tc := range []struct {
		name, method, path, body string
		want                     int
	}{
		{"largest legal request is accepted", "POST", sendPath, string(largest), http.StatusOK},
		{"over the request limit is 413", "POST", sendPath, `{"body":"` + strings.Repeat("x", envelope.MaxRequestBytes) + `"}`, http.StatusRequestEntityTooLarge},
		{"invalid UTF-8 in the path is 400", "GET", "/v1/conversations/%FF%FE", "", http.StatusBadRequest},
		{"long id in the path is 400", "GET", "/v1/conversations/" + strings.Repeat("c", 129), "", http.StatusBadRequest},
	} {
		code, out := restCall(t, g, alice, tc.method, tc.path, tc.body)
		if code != tc.want {
			t.Errorf("REST %s: got %d %v, want %d", tc.name, code, out, tc.want)
		}
	}

	// A URL longer than the header limit is refused by the HTTP server itself.
	resp, err := http.Get(g.rest + "/v1/conversations/" + strings.Repeat("c", 100<<10))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("100 KiB URL: got %d, want 431", resp.StatusCode)
	}
}

// An anonymous caller announcing a 100 MiB body is refused at once, before the gateway reads any of it,
// and is counted, not logged one line per call.
func TestEdgeRefusesAnonymousCallersCheaply(t *testing.T) {
	g := startGateway(t, testenv.Kafka(t), gatewayOnly)

	conn, err := net.Dial("tcp", strings.TrimPrefix(g.rest, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	fmt.Fprintf(conn, "POST /v1/conversations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{\"title\":", 100<<20)
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || !strings.Contains(line, " 401 ") {
		t.Fatalf("100 MiB anonymous POST: got %q, %v; want 401", line, err)
	}
	t.Logf("refused after %s", time.Since(start))

	const calls = 40
	for range calls {
		if _, err := g.conv.ListConversations(context.Background(), &platformv1.ListConversationsRequest{}); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("anonymous gRPC call: %v", err)
		}
		if code, _ := restCall(t, g, "", "GET", "/v1/conversations", ""); code != http.StatusUnauthorized {
			t.Fatalf("anonymous REST call: %d", code)
		}
	}
	waitMetric(t, g, fmt.Sprintf(`platform_unauthenticated_total{transport="grpc"} %d`, calls))
	waitMetric(t, g, fmt.Sprintf(`platform_unauthenticated_total{transport="rest"} %d`, calls+1))
	if n := strings.Count(g.logs.String(), "unauthenticated call refused"); n > 5 {
		t.Errorf("%d log lines for %d refused calls, want a rate-limited few", n, 2*calls+1)
	}
}

// One principal holds at most STREAM_MAX_PER_PRINCIPAL live streams; others are not affected, and a
// closed stream frees its slot. Anonymous health Watch streams are bounded too.
func TestEdgeStreamLimits(t *testing.T) {
	g := startGatewayWith(t, testenv.Kafka(t), gatewayOnly, map[string]string{"STREAM_MAX_PER_PRINCIPAL": "2"})
	alice, bob := testenv.Token(t, "alice", "t1"), testenv.Token(t, "bob", "t1")
	conv := newConversation(t, g, alice, "bob")

	open := func(tok string) (context.CancelFunc, error) {
		ctx, cancel := context.WithCancel(as(tok))
		s, err := g.msgs.StreamMessages(ctx, &platformv1.StreamMessagesRequest{ConversationId: conv})
		if err == nil {
			_, err = s.Header() // the server sends headers once it has subscribed, or the error
		}
		if err == nil {
			return cancel, nil
		}
		cancel()
		return nil, err
	}
	first, err := open(alice)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := open(alice); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(as(alice))
	defer cancel()
	third, err := g.msgs.StreamMessages(ctx, &platformv1.StreamMessagesRequest{ConversationId: conv})
	if err == nil {
		_, err = third.Recv()
	}
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("alice's third stream: %v, want RESOURCE_EXHAUSTED", err)
	}
	if _, err := open(bob); err != nil {
		t.Fatalf("bob, while alice is at her cap: %v", err)
	}
	first()
	testenv.Eventually(t, "alice's slot freed", 10*time.Second, func() bool {
		c, err := open(alice)
		if err == nil {
			c()
		}
		return err == nil
	})

	health := healthpb.NewHealthClient(g.conn)
	var refused error
	for i := range 80 {
		w, err := health.Watch(context.Background(), &healthpb.HealthCheckRequest{})
		if err == nil {
			_, err = w.Recv()
		}
		if err != nil {
			if status.Code(err) != codes.ResourceExhausted || i < 64 {
				t.Fatalf("health Watch %d: %v", i+1, err)
			}
			refused = err
			break
		}
	}
	if refused == nil {
		t.Fatal("80 anonymous health Watch streams were all accepted")
	}
	if _, err := health.Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("health Check while Watch is at its cap: %v", err)
	}
}

// The public health answers carry statuses only; an operator's call also shows the errors, which name
// internal addresses.
func TestEdgeHealthDetailsOnlyForOperators(t *testing.T) {
	redis := testenv.StartRedisServer(t)
	g := startGatewayWith(t, testenv.Kafka(t), gatewayOnly, map[string]string{"REDIS_URL": redis.URL()})
	redis.Stop()
	health := func(tok string) string {
		req, _ := http.NewRequest(http.MethodGet, g.rest+"/v1/health", nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	operator := testenv.Token(t, "ops", "t1", "operator")
	testenv.Eventually(t, "the operator sees redis's error", 20*time.Second, func() bool {
		return strings.Contains(health(operator), redis.Addr())
	})
	for _, tok := range []string{"", testenv.Token(t, "alice", "t1"), "not-a-token"} {
		got := health(tok)
		if strings.Contains(got, redis.Addr()) || strings.Contains(got, "127.0.0.1") || !strings.Contains(got, "redis") {
			t.Errorf("token %.10q: public health shows internals or no redis entry: %s", tok, got)
		}
	}
	resp, err := http.Get(g.rest + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || strings.Contains(string(b), "127.0.0.1") {
		t.Errorf("/readyz with redis down: %d %s", resp.StatusCode, b)
	}
}
