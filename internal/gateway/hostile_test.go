package gateway_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/testenv"
)

// hostileRSSBound is the most the gateway process may hold (VmHWM, its peak resident memory) while the
// attack runs: a few times its idle size. Without the edge's limits one 100 MiB body alone went past it.
const hostileRSSBound = 128 << 20

// TestHostileClients runs the production gateway binary and attacks it from one principal of one tenant
// — hundreds of streams, slow and oversized bodies, a flood of calls, anonymous health watches — while a
// principal of another tenant keeps calling. The gateway's peak memory stays under hostileRSSBound and
// the other principal is served throughout.
func TestHostileClients(t *testing.T) {
	mongoURI := testenv.SharedMongo(t)
	grpcAddr, httpAddr := testenv.FreeAddr(t), testenv.FreeAddr(t)
	cmd := exec.Command(testenv.Binary(t, "services/gateway"))
	cmd.Env = append(os.Environ(),
		"KAFKA_BROKERS="+testenv.Kafka(t), "MONGO_URI="+mongoURI, "MONGO_DATABASE="+testenv.MongoDatabase(t, mongoURI),
		"REDIS_URL="+testenv.Redis(t), "KAFKA_SIGNING_KEYS="+testenv.SigningKeysSpec, "AUTH_HMAC_SECRET="+testenv.TestHMACSecret,
		"GRPC_ADDR="+grpcAddr, "HTTP_ADDR="+httpAddr, "METRICS_ADDR="+testenv.FreeAddr(t), "LOG_LEVEL=warn",
		"SHUTDOWN_DRAIN_DELAY=0s", "STREAM_MAX_PER_PRINCIPAL=16",
		// The attacker's quota; the other tenant's principal stays well inside its own.
		"RATE_LIMIT_PRINCIPAL_RPS=50", "RATE_LIMIT_PRINCIPAL_BURST=100", "RATE_LIMIT_TENANT_RPS=200", "RATE_LIMIT_TENANT_BURST=400")
	var logs testenv.LockedBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("gateway logs:\n%s", logs.String())
		}
	})
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	testenv.Eventually(t, "the gateway serving", time.Minute, func() bool {
		resp, err := http.Get("http://" + httpAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil && resp.StatusCode == http.StatusOK
	})
	convs, msgs := platformv1.NewConversationServiceClient(conn), platformv1.NewMessageServiceClient(conn)
	mallory, alice := testenv.Token(t, "mallory", "t-evil"), testenv.Token(t, "alice", "t-good")
	evilConv, err := convs.CreateConversation(as(mallory), &platformv1.CreateConversationRequest{Title: "x"})
	if err != nil {
		t.Fatal(err)
	}
	idle := vm(t, cmd.Process.Pid, "VmRSS")

	ctx, stop := context.WithTimeout(context.Background(), 12*time.Second)
	defer stop()
	var wg sync.WaitGroup
	var refusedStreams, refusedFlood, refusedBodies, refusedWatches atomic.Int64
	attack := func(n int, f func(i int)) {
		for i := range n {
			wg.Go(func() { f(i) })
		}
	}
	// 300 streams from one principal: STREAM_MAX_PER_PRINCIPAL are held, the rest refused.
	attack(300, func(int) {
		s, err := msgs.StreamMessages(as(mallory, ctx), &platformv1.StreamMessagesRequest{ConversationId: evilConv.GetConversation().GetId()})
		if err == nil {
			_, err = s.Recv()
		}
		if status.Code(err) == codes.ResourceExhausted {
			refusedStreams.Add(1)
		}
	})
	// 300 anonymous health watches: 64 held.
	health := healthpb.NewHealthClient(conn)
	attack(300, func(int) {
		w, err := health.Watch(ctx, &healthpb.HealthCheckRequest{})
		for err == nil {
			_, err = w.Recv()
		}
		if status.Code(err) == codes.ResourceExhausted {
			refusedWatches.Add(1)
		}
	})
	// 40 slow bodies (a byte a second: cut off after 10 s) and 40 oversized ones (100 MiB announced, sent as fast as taken),
	// half of each anonymous.
	attack(80, func(i int) {
		tok := ""
		if i%2 == 0 {
			tok = mallory
		}
		if postRaw(ctx, httpAddr, tok, i < 40) {
			refusedBodies.Add(1)
		}
	})
	// A flood of calls from 16 connections' worth of goroutines.
	attack(16, func(int) {
		for ctx.Err() == nil {
			_, err := convs.ListConversations(as(mallory, ctx), &platformv1.ListConversationsRequest{})
			if status.Code(err) == codes.ResourceExhausted {
				refusedFlood.Add(1)
			}
		}
	})

	// Meanwhile alice, of another tenant, calls ten times a second; every call must succeed.
	var served, failed int
	var worst time.Duration
	for tick := time.NewTicker(100 * time.Millisecond); ctx.Err() == nil; <-tick.C {
		start := time.Now()
		// Generous: the attack and the test share two cores here; the point is that alice is served.
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := convs.ListConversations(as(alice, cctx), &platformv1.ListConversationsRequest{})
		cancel()
		if err != nil {
			failed++
			t.Logf("alice: %v", err)
		} else {
			served++
		}
		worst = max(worst, time.Since(start))
	}
	wg.Wait()
	peak := vm(t, cmd.Process.Pid, "VmHWM")
	t.Logf("gateway RSS idle %d MiB, peak %d MiB (bound %d MiB); alice served %d, failed %d, slowest %s; refused: "+
		"streams %d, health watches %d, bodies %d, flood calls %d", idle>>20, peak>>20, hostileRSSBound>>20,
		served, failed, worst.Round(time.Millisecond), refusedStreams.Load(), refusedWatches.Load(), refusedBodies.Load(), refusedFlood.Load())
	if peak > hostileRSSBound {
		t.Errorf("peak RSS %d MiB, over the bound of %d MiB", peak>>20, hostileRSSBound>>20)
	}
	// Each call waits for the one before: a slow machine serves fewer, but every one must succeed.
	if failed > 0 || served < 20 {
		t.Errorf("the other tenant's principal: %d served, %d failed", served, failed)
	}
	if refusedStreams.Load() < 300-16 || refusedWatches.Load() < 300-64 || refusedFlood.Load() == 0 || refusedBodies.Load() < 60 {
		t.Errorf("limits did not hold: refused streams %d, watches %d, flood calls %d, bodies %d",
			refusedStreams.Load(), refusedWatches.Load(), refusedFlood.Load(), refusedBodies.Load())
	}
}

// postRaw sends a POST of a body too slow (a byte a second) or too large (100 MiB announced), with tok
// if set, and reports whether the gateway refused it (401, 408 or 413) before ctx ends.
func postRaw(ctx context.Context, addr, tok string, slow bool) bool {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	defer conn.Close()
	size := 100 << 20
	if slow {
		size = 1000
	}
	head := fmt.Sprintf("POST /v1/conversations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n", size)
	if tok != "" {
		head += "Authorization: Bearer " + tok + "\r\n"
	}
	if _, err := io.WriteString(conn, head+"\r\n"); err != nil {
		return false
	}
	go func() {
		chunk := make([]byte, 64<<10)
		if slow {
			chunk = chunk[:1]
		}
		for sent := 0; sent < size && ctx.Err() == nil; sent += len(chunk) {
			if _, err := conn.Write(chunk); err != nil {
				return
			}
			if slow {
				time.Sleep(time.Second)
			}
		}
	}()
	deadline, _ := ctx.Deadline()
	_ = conn.SetReadDeadline(deadline)
	line, err := bufio.NewReader(conn).ReadString('\n')
	return err == nil && slices.ContainsFunc([]string{" 401 ", " 408 ", " 413 "}, func(c string) bool { return strings.Contains(line, c) })
}

// vm returns a memory figure of /proc/pid/status (VmRSS, VmHWM) in bytes.
func vm(t *testing.T, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Skipf("no /proc here: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// as calls with tok, within ctx if given.
func as(tok string, ctx ...context.Context) context.Context {
	parent := context.Background()
	if len(ctx) > 0 {
		parent = ctx[0]
	}
	return metadata.AppendToOutgoingContext(parent, "authorization", "Bearer "+tok)
}
