package api_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/config"
	gw "github.com/msgplatform/platform/internal/gateway"
	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/testenv"
)

var secret = "api-test-secret-0123456789abcdef-0123456789"

// gateway is a gateway started through the production wiring (gw.Serve) on free ports, over kfake,
// FerretDB and a real redis-server.
type gateway struct {
	conn    *grpc.ClientConn
	rest    string
	metrics string
	kafka   string
	st      *store.Store
	conv    platformv1.ConversationServiceClient
	msgs    platformv1.MessageServiceClient
}

func startGateway(t *testing.T, kafkaAddr string) *gateway {
	t.Helper()
	mongoURI := testenv.SharedMongo(t)
	db := testenv.MongoDatabase(t, mongoURI)
	vars := map[string]string{
		"GRPC_ADDR": "127.0.0.1:0", "HTTP_ADDR": "127.0.0.1:0", "METRICS_ADDR": "127.0.0.1:0",
		"KAFKA_BROKERS": kafkaAddr, "MONGO_URI": mongoURI, "MONGO_DATABASE": db, "REDIS_URL": testenv.Redis(t),
		"AUTH_HMAC_SECRET": secret, "SHUTDOWN_DRAIN_DELAY": "0s", "SHUTDOWN_TIMEOUT": "5s", "KAFKA_PRODUCE_TIMEOUT": "2s",
		"HEALTH_CHECK_INTERVAL": "1s", "KAFKA_SIGNING_KEYS": testenv.SigningKeysSpec,
	}
	cfg, err := config.Load(func(k string) string { return vars[k] })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan *gw.Server, 1)
	done := make(chan error, 1)
	go func() {
		done <- gw.Serve(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), func(s *gw.Server) { ready <- s })
	}()
	var srv *gw.Server
	select {
	case srv = <-ready:
	case err := <-done:
		t.Fatalf("gateway did not start: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("gateway not ready after 60s")
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("gateway shutdown: %v", err)
		}
	})
	conn, err := grpc.NewClient(srv.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	client, err := store.Connect(context.Background(), mongoURI)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Disconnect(context.Background()) })
	return &gateway{conn: conn, rest: "http://" + srv.HTTPAddr(), metrics: "http://" + srv.MetricsAddr() + "/metrics", kafka: kafkaAddr, st: store.New(client.Database(db)),
		conv: platformv1.NewConversationServiceClient(conn), msgs: platformv1.NewMessageServiceClient(conn)}
}

func mint(t *testing.T, sub, tenant string, roles ...string) string {
	t.Helper()
	if len(roles) == 0 {
		roles = []string{"user"}
	}
	tok, err := auth.MintHS256([]byte(secret), auth.Principal{Subject: sub, TenantID: tenant, Roles: roles}, time.Hour, "", "")
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// as returns a context calling as the token's subject.
func as(tok string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
}

// restCall sends a JSON request through the gateway and decodes the JSON answer.
func restCall(t *testing.T, g *gateway, tok, method, path, body string) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, g.rest+path, rd)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("%s %s: not JSON: %v", method, path, err)
	}
	return resp.StatusCode, out
}

// persist stores messages as the pipeline would.
func persist(t *testing.T, g *gateway, msgs ...store.Message) {
	t.Helper()
	now := time.Now()
	for i := range msgs {
		msgs[i].State = store.MessagePersisted
		if msgs[i].CreateTime.IsZero() {
			msgs[i].CreateTime = now
		}
	}
	if _, _, err := g.st.Messages.InsertMany(context.Background(), msgs); err != nil {
		t.Fatal(err)
	}
}

// waitMetric polls /metrics until a line equals want.
func waitMetric(t *testing.T, g *gateway, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(g.metrics)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			for _, line := range strings.Split(string(b), "\n") {
				if line == want {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("metric line %q not seen within 10s", want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
