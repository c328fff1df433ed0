package app

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/msgplatform/platform/internal/testenv"
)

// Every repository of a process runs its MongoDB calls through the process's one circuit breaker and
// retry policy: the dead letters too (before, the pipeline process's DLQ store had none).
func TestRepositoriesShareTheGuard(t *testing.T) {
	cfg := testenv.Config(t, map[string]string{"KAFKA_BROKERS": testenv.Kafka(t), "MONGO_URI": testenv.Mongo(t), "REDIS_URL": testenv.Redis(t)})
	c, err := openCore(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.clients.close(context.Background()) }()
	for name, g := range map[string]any{"store": c.store.Guard(), "dead letters": c.deadLetters.Guard()} {
		if g == nil || c.store.Guard().Breaker != c.clients.breaker || c.deadLetters.Guard().Breaker != c.clients.breaker {
			t.Errorf("%s: not behind the process's circuit breaker", name)
		}
	}
}
