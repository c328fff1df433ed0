package gateway

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/envelope"
)

type tokenIsGood struct{}

func (tokenIsGood) Verify(token string) (auth.Principal, error) {
	if token != "good" {
		return auth.Principal{}, errors.New("bad token")
	}
	return auth.Principal{Subject: "alice", TenantID: "t1", Roles: []string{"user"}}, nil
}

// edgeServer serves a runtime mux guarded by a restEdge: POST /v1/things needs a token and echoes the
// length of the body it got, GET /v1/things/{id} needs one, GET /v1/public does not.
func edgeServer(t *testing.T, bodyTimeout time.Duration) (url string, unauthenticated *int) {
	t.Helper()
	var refused int
	edge := &restEdge{
		routes:   map[string]string{"POST /v1/things": "/svc/Create", "GET /v1/things/{id}": "/svc/Get", "GET /v1/public": "/svc/Public"},
		verifier: tokenIsGood{}, isPublic: func(m string) bool { return m == "/svc/Public" },
		onUnauthenticated: func(context.Context, string, error) { refused++ },
		bodyTimeout:       bodyTimeout,
	}
	mux := runtime.NewServeMux(runtime.WithMiddlewares(edge.middleware))
	edge.mux = mux
	echo := func(w http.ResponseWriter, r *http.Request, _ map[string]string) {
		n, _ := io.Copy(io.Discard, r.Body)
		_, _ = fmt.Fprintf(w, "%d", n)
	}
	for _, route := range [][2]string{{"POST", "/v1/things"}, {"GET", "/v1/things/{id}"}, {"GET", "/v1/public"}} {
		if err := mux.HandlePath(route[0], route[1], echo); err != nil {
			t.Fatal(err)
		}
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL, &refused
}

func TestRESTEdge(t *testing.T) {
	url, refused := edgeServer(t, 0)
	largest := strings.Repeat("x", envelope.MaxRequestBytes)
	tests := []struct {
		name, method, path, token string
		body                      io.Reader
		want                      int
		wantBody                  string // a substring of the answer
	}{
		{"anonymous is 401 before the body", "POST", "/v1/things", "", strings.NewReader(`{"x":1}`), 401, "missing bearer token"},
		{"bad token is 401", "POST", "/v1/things", "bad", strings.NewReader(`{}`), 401, "bad token"},
		{"public route needs no token", "GET", "/v1/public", "", nil, 200, "0"},
		{"largest legal body is read whole", "POST", "/v1/things", "good", strings.NewReader(largest), 200, fmt.Sprint(len(largest))},
		{"one byte over is 413", "POST", "/v1/things", "good", strings.NewReader(largest + "x"), 413, "request body over"},
		{"over, without a declared length, is 413", "POST", "/v1/things", "good",
			io.MultiReader(strings.NewReader(largest), strings.NewReader("x")), 413, "request body over"},
		{"invalid UTF-8 in the path is 400", "GET", "/v1/things/%FF%FE", "good", nil, 400, "UTF-8"},
		{"invalid UTF-8 in the query is 400", "GET", "/v1/things/a?x=%C0", "good", nil, 400, "UTF-8"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, url+tc.path, tc.body)
			if _, multi := tc.body.(interface{ Len() int }); tc.body != nil && !multi {
				req.ContentLength = -1 // a reader of unknown length: sent chunked
			}
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.want || !strings.Contains(string(b), tc.wantBody) {
				t.Fatalf("got %d %s, want %d containing %q", resp.StatusCode, b, tc.want, tc.wantBody)
			}
		})
	}
	if *refused != 2 {
		t.Errorf("unauthenticated calls heard: %d, want 2", *refused)
	}
}

// rawRequest writes head (request line and headers) and then body, slowly if pause > 0, and returns the
// status line of the answer and how long it took to come.
func rawRequest(t *testing.T, url, head string, body []byte, pause time.Duration) (string, time.Duration) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	if _, err := io.WriteString(conn, head); err != nil {
		t.Fatal(err)
	}
	go func() {
		for _, b := range body {
			if _, err := conn.Write([]byte{b}); err != nil {
				return
			}
			time.Sleep(pause)
		}
	}()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	return strings.TrimSpace(line), time.Since(start)
}

// A client announcing 100 MiB gets its answer without sending any of it: 401 without a token, 413 with one.
func TestRESTEdgeAnswersBeforeAHugeBody(t *testing.T) {
	url, _ := edgeServer(t, 0)
	for _, tc := range []struct{ token, want string }{{"", "401"}, {"good", "413"}} {
		head := "POST /v1/things HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 104857600\r\n"
		if tc.token != "" {
			head += "Authorization: Bearer " + tc.token + "\r\n"
		}
		line, took := rawRequest(t, url, head+"\r\n", nil, 0)
		if !strings.Contains(line, " "+tc.want+" ") {
			t.Errorf("token %q: got %q, want %s", tc.token, line, tc.want)
		}
		if took > 5*time.Second {
			t.Errorf("token %q: answered after %s, want at once", tc.token, took)
		}
	}
}

// An anonymous client trickling a small body gets its 401 at once, not once the body is in.
func TestRESTEdgeDoesNotWaitForAnAnonymousBody(t *testing.T) {
	url, _ := edgeServer(t, 0)
	head := "POST /v1/things HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
	line, took := rawRequest(t, url, head, []byte(strings.Repeat("x", 1000)), 50*time.Millisecond)
	if !strings.Contains(line, " 401 ") || took > 5*time.Second {
		t.Fatalf("got %q after %s, want 401 at once", line, took)
	}
}

// A body trickling in slower than the edge's body timeout is cut off with 408.
func TestRESTEdgeCutsASlowBody(t *testing.T) {
	url, _ := edgeServer(t, 300*time.Millisecond)
	head := "POST /v1/things HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer good\r\nContent-Length: 1000\r\n\r\n"
	line, took := rawRequest(t, url, head, []byte(strings.Repeat("x", 1000)), 50*time.Millisecond)
	if !strings.Contains(line, " 408 ") {
		t.Fatalf("got %q after %s, want 408", line, took)
	}
}

// Every REST route of the platform maps to its gRPC method, so the edge knows which need a token.
func TestRESTRoutesCoverEveryBinding(t *testing.T) {
	routes, err := restRoutes(platformServices...)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"POST /v1/conversations": "/" + platformv1.ConversationService_ServiceDesc.ServiceName + "/CreateConversation",
		"GET /v1/health":         "/" + platformv1.HealthService_ServiceDesc.ServiceName + "/GetHealth",
	}
	for route, method := range want {
		if routes[route] != method {
			t.Errorf("route %s → %q, want %q", route, routes[route], method)
		}
	}
	if got := normalizePattern("/v1/conversations/{conversation_id=*}/messages"); got != "/v1/conversations/{conversation_id}/messages" {
		t.Errorf("normalizePattern: %s", got)
	}
}
