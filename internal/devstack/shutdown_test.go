package devstack_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/testenv"
)

const shutdownSecret = "shutdown-test-secret-0123456789abcdef-0123"

// process is the platform (gateway + pipeline) running as a separate OS process, on external test servers.
type process struct {
	cmd  *exec.Cmd
	grpc string
	http string
	done chan error
}

func startProcess(t *testing.T, bin string, env []string) *process {
	t.Helper()
	p := &process{grpc: testenv.FreeAddr(t), http: testenv.FreeAddr(t), done: make(chan error, 1)}
	p.cmd = exec.Command(bin)
	p.cmd.Env = append(os.Environ(), append(env, "GRPC_ADDR="+p.grpc, "HTTP_ADDR="+p.http, "METRICS_ADDR="+testenv.FreeAddr(t))...)
	logf, err := os.Create(filepath.Join(t.TempDir(), "platform.log"))
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("process log:\n%s", b)
		}
	})
	testenv.Eventually(t, "the process to become ready", 60*time.Second, func() bool {
		resp, err := http.Get("http://" + p.http + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return p
}

// TestGracefulShutdownLosesNothing sends SIGTERM to a separately started platform process under continuous
// SendMessage load: readiness turns 503 before the listeners close, every call either succeeds or fails with
// UNAVAILABLE, the process exits 0, and after a restart every message that was answered OK is stored.
func TestGracefulShutdownLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the platform binary; not in -short mode")
	}
	bin := filepath.Join(t.TempDir(), "devstack")
	if out, err := exec.Command("go", "build", "-o", bin, "../../services/devstack").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	mongoURI := testenv.Mongo(t)
	db := testenv.MongoDatabase(t, mongoURI)
	env := []string{"KAFKA_BROKERS=" + testenv.Kafka(t), "MONGO_URI=" + mongoURI, "MONGO_DATABASE=" + db,
		"REDIS_URL=" + testenv.Redis(t), "AUTH_HMAC_SECRET=" + shutdownSecret, "SHUTDOWN_DRAIN_DELAY=1s",
		"SHUTDOWN_TIMEOUT=15s", "HEALTH_CHECK_INTERVAL=200ms", "LOG_LEVEL=warn",
		// One sender as fast as it can: quotas would refuse it, and this test is about shutdown.
		"RATE_LIMIT_PRINCIPAL_RPS=0", "RATE_LIMIT_TENANT_RPS=0"}
	p := startProcess(t, bin, env)

	tok, err := auth.MintHS256([]byte(shutdownSecret), auth.Principal{Subject: "alice", TenantID: "t1", Roles: []string{"user"}}, time.Hour, "", "")
	if err != nil {
		t.Fatal(err)
	}
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
	conn, err := grpc.NewClient(p.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c, err := platformv1.NewConversationServiceClient(conn).CreateConversation(ctx, &platformv1.CreateConversationRequest{Title: "load"})
	if err != nil {
		t.Fatal(err)
	}
	conv := c.GetConversation().GetId()
	msgs := platformv1.NewMessageServiceClient(conn)

	// Readiness watcher: when did /readyz first answer 503, and when did the listener first refuse?
	var mu sync.Mutex
	var first503, firstRefused time.Time
	stopWatch := make(chan struct{})
	go func() {
		for {
			select {
			case <-stopWatch:
				return
			default:
			}
			resp, err := http.Get("http://" + p.http + "/readyz")
			mu.Lock()
			switch {
			case err != nil && firstRefused.IsZero():
				firstRefused = time.Now()
			case err == nil && resp.StatusCode == http.StatusServiceUnavailable && first503.IsZero():
				first503 = time.Now()
			}
			mu.Unlock()
			if err == nil {
				resp.Body.Close()
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()

	// Load: senders keep going until the process is gone.
	var accepted sync.Map
	unexpected := make(chan error, 100)
	stopLoad := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stopLoad:
					return
				default:
				}
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				r, err := msgs.SendMessage(cctx, &platformv1.SendMessageRequest{ConversationId: conv, Body: fmt.Sprintf("w%d-%d", w, i)})
				cancel()
				switch status.Code(err) {
				case codes.OK:
					accepted.Store(r.GetMessageId(), true)
				case codes.Unavailable:
					time.Sleep(5 * time.Millisecond)
				default:
					unexpected <- err
					return
				}
			}
		}()
	}
	time.Sleep(1500 * time.Millisecond)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		var exit *exec.ExitError
		if errors.As(err, &exit) || err != nil {
			t.Errorf("exit after SIGTERM: %v, want status 0", err)
		}
	case <-time.After(45 * time.Second):
		t.Fatal("process still running 45s after SIGTERM")
	}
	close(stopLoad)
	wg.Wait()
	close(stopWatch)
	close(unexpected)
	for err := range unexpected {
		t.Errorf("SendMessage during shutdown failed with %v; want OK or UNAVAILABLE", err)
	}
	mu.Lock()
	if first503.IsZero() || (!firstRefused.IsZero() && !first503.Before(firstRefused)) {
		t.Errorf("readiness 503 at %v, listener refused at %v: readiness must flip first", first503, firstRefused)
	}
	mu.Unlock()

	var ids []string
	accepted.Range(func(k, _ any) bool { ids = append(ids, k.(string)); return true })
	if len(ids) == 0 {
		t.Fatal("no SendMessage succeeded before the signal")
	}
	// Restart: the pipeline resumes from its committed offsets and stores whatever was accepted.
	startProcess(t, bin, env)
	client, err := store.Connect(context.Background(), mongoURI)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Disconnect(context.Background())
	coll := client.Database(db).Collection(store.MessagesCollection)
	testenv.Eventually(t, fmt.Sprintf("all %d accepted messages stored", len(ids)), 60*time.Second, func() bool {
		n, err := coll.CountDocuments(context.Background(), bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}})
		return err == nil && n == int64(len(ids))
	})
	t.Logf("%d messages accepted under load across SIGTERM; all stored after restart", len(ids))
}
