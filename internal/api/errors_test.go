package api_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/app/apptest"
	"github.com/msgplatform/platform/internal/testenv"
)

// With MongoDB down and the circuit breaker still closed, a read fails with the driver's server-selection
// timeout: the store's transient test makes it UNAVAILABLE over gRPC and 503 over REST (it used to be
// DEADLINE_EXCEEDED and 504), so clients retry. The caller's membership comes from the cache, so the
// request gets past authorization to the handler's own read.
func TestStoreDownIsUnavailable(t *testing.T) {
	mongo := testenv.StartMongoServer(t)
	cfg := testenv.Config(t, map[string]string{"KAFKA_BROKERS": testenv.Kafka(t), "MONGO_URI": mongo.URI(), "REDIS_URL": testenv.Redis(t)})
	p := apptest.Start(t, cfg, gatewayOnly, slog.New(slog.NewTextHandler(io.Discard, nil)))
	conn, err := grpc.NewClient(p.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	convs := platformv1.NewConversationServiceClient(conn)
	alice := testenv.Token(t, "alice", "t1")
	c, err := convs.CreateConversation(as(alice), &platformv1.CreateConversationRequest{Title: "chat"})
	if err != nil {
		t.Fatal(err)
	}
	id := c.GetConversation().GetId()
	if _, err := convs.GetConversation(as(alice), &platformv1.GetConversationRequest{ConversationId: id}); err != nil {
		t.Fatal(err) // also puts alice's membership in the caches
	}

	mongo.Stop()
	ctx, cancel := context.WithTimeout(as(alice), 30*time.Second)
	defer cancel()
	if _, err := convs.GetConversation(ctx, &platformv1.GetConversationRequest{ConversationId: id}); code(err) != codes.Unavailable {
		t.Errorf("gRPC GetConversation with MongoDB down = %v, want UNAVAILABLE", err)
	}
	req, _ := http.NewRequest(http.MethodGet, "http://"+p.HTTP+"/v1/conversations/"+id, nil)
	req.Header.Set("Authorization", "Bearer "+alice)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("REST GET /v1/conversations/{id} with MongoDB down = %d, want 503", resp.StatusCode)
	}
	mongo.Start()
}
