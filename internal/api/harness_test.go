package api_test

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
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/app"
	"github.com/msgplatform/platform/internal/app/apptest"
	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/testenv"
)

// Roles of the processes the tests start: the gateway alone, or with the pipeline (ingest, DLQ processor
// and scheduler, watchers) in the same process, as the devstack runs them.
var (
	gatewayOnly        = app.Roles{Gateway: true}
	gatewayAndPipeline = app.Roles{Gateway: true, Pipeline: true}
)

// gateway is a platform process started through the production composition root (app.Run, by
// apptest.Start) on free ports, over the Kafka at kafka, FerretDB and a real redis-server, with clients
// of each API, handles on its database and its logs.
type gateway struct {
	conn    *grpc.ClientConn
	rest    string // base URL
	metrics string // /metrics URL
	kafka   string
	st      *store.Store
	dlst    *store.DeadLetters
	conv    platformv1.ConversationServiceClient
	msgs    platformv1.MessageServiceClient
	dls     platformv1.DeadLetterServiceClient
	logs    *testenv.LockedBuffer // the process's log lines (text handler)
}

// startGateway starts a process with roles (the gateway's among them) over kafkaAddr; it stops when
// the test ends.
func startGateway(t *testing.T, kafkaAddr string, roles app.Roles) *gateway {
	t.Helper()
	return startGatewayWith(t, kafkaAddr, roles, nil)
}

// startGatewayWith is startGateway with more configuration: vars override the test defaults.
func startGatewayWith(t *testing.T, kafkaAddr string, roles app.Roles, vars map[string]string) *gateway {
	t.Helper()
	mongoURI := testenv.SharedMongo(t)
	db := testenv.MongoDatabase(t, mongoURI)
	env := map[string]string{
		"KAFKA_BROKERS": kafkaAddr, "MONGO_URI": mongoURI, "MONGO_DATABASE": db, "REDIS_URL": testenv.Redis(t),
		"KAFKA_PRODUCE_TIMEOUT": "2s",
	}
	maps.Copy(env, vars)
	cfg := testenv.Config(t, env)
	logs := &testenv.LockedBuffer{}
	p := apptest.Start(t, cfg, roles, slog.New(slog.NewTextHandler(logs, nil)))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("process logs:\n%s", logs.String())
		}
	})

	conn, err := grpc.NewClient(p.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	client, err := store.Connect(context.Background(), mongoURI)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Disconnect(context.Background()) })
	return &gateway{conn: conn, rest: "http://" + p.HTTP, metrics: "http://" + p.Metrics + "/metrics", kafka: kafkaAddr,
		st: store.New(client.Database(db)), dlst: store.NewDeadLetters(client.Database(db)),
		conv: platformv1.NewConversationServiceClient(conn), msgs: platformv1.NewMessageServiceClient(conn),
		dls: platformv1.NewDeadLetterServiceClient(conn), logs: logs}
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
	testenv.Eventually(t, "metric line "+want, 10*time.Second, func() bool {
		resp, err := http.Get(g.metrics)
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, line := range strings.Split(string(b), "\n") {
			if line == want {
				return true
			}
		}
		return false
	})
}
