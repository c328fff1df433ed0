// Package testenv starts real servers for tests, each on a free loopback port and stopped by t.Cleanup:
// Kafka (kfake), MongoDB wire protocol (FerretDB on SQLite) and Redis (a real redis-server process).
//
// Mongo and Redis can be stopped and started again on the same port (StartMongoServer, StartRedisServer)
// so tests can simulate outages. Tests that only need a database should prefer SharedMongo plus
// MongoDatabase: one FerretDB per test binary, a fresh database per test.
package testenv

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/msgplatform/platform/internal/embedded"
	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/kafka"
)

// startTimeout bounds how long any server may take to become ready.
const startTimeout = 15 * time.Second

// FreeAddr returns a 127.0.0.1:port that was free a moment ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testenv: find a free port: %v", err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatalf("testenv: find a free port: %v", err)
	}
	return addr
}

// Kafka starts a single-broker kfake cluster with every platform topic seeded and returns its address.
func Kafka(t testing.TB) string {
	t.Helper()
	k, err := embedded.StartKafka("127.0.0.1:0", kafka.Topics)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(k.Close)
	return k.Addr()
}

// MongoServer is a FerretDB server owned by one test, which may stop and restart it. Its data lives in a
// t.TempDir(), so it survives a restart. Stop and Start call t.Fatal on failure, so call them from the
// test's goroutine.
type MongoServer struct {
	t   testing.TB
	dir string

	mu   sync.Mutex
	addr string // fixed after the first start
	uri  string
	srv  *embedded.Mongo // nil while stopped
}

// StartMongoServer starts FerretDB on a free loopback port; t.Cleanup stops it.
func StartMongoServer(t testing.TB) *MongoServer {
	t.Helper()
	m := &MongoServer{t: t, dir: t.TempDir(), addr: "127.0.0.1:0"}
	m.Start()
	t.Cleanup(m.Stop)
	return m
}

// Mongo starts a FerretDB server for this test and returns its mongodb:// URI.
func Mongo(t testing.TB) string {
	t.Helper()
	return StartMongoServer(t).URI()
}

// URI returns the server's mongodb:// URI; it stays the same across Stop and Start.
func (m *MongoServer) URI() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.uri
}

// Start starts the server again on the same port and data directory; it does nothing if it is running.
func (m *MongoServer) Start() {
	m.t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.srv != nil {
		return
	}
	logger := slog.New(slog.NewTextHandler(m.t.Output(), nil))
	srv, err := embedded.StartMongo(context.Background(), m.addr, m.dir, logger)
	if err != nil {
		m.t.Fatalf("testenv: start mongo on %s: %v", m.addr, err)
	}
	m.srv, m.uri = srv, srv.URI()
	m.addr = strings.TrimSuffix(strings.TrimPrefix(m.uri, "mongodb://"), "/")
}

// Stop stops the server, dropping every client connection; it does nothing if it is stopped.
func (m *MongoServer) Stop() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.srv != nil {
		m.srv.Close()
		m.srv = nil
	}
}

var shared struct {
	once sync.Once
	srv  *embedded.Mongo
	err  error
}

// SharedMongo returns the URI of a FerretDB server shared by every test in this test binary, started on
// first use, with its files in a folder of the OS temp dir. Pair it with MongoDatabase so tests do not see each other's data,
// and never stop it (use StartMongoServer for outages). It lives until the test binary exits, so goleak
// users should ignore its goroutines or use Mongo instead.
func SharedMongo(t testing.TB) string {
	t.Helper()
	shared.once.Do(func() {
		// Outlives any one test, so it cannot log through t.
		logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
		// Outlives every test, so it cannot use t.TempDir; the folder stays in the OS temp dir.
		dir, err := os.MkdirTemp("", "platform-testenv-mongo-")
		if err != nil {
			shared.err = err
			return
		}
		shared.srv, shared.err = embedded.StartMongo(context.Background(), "127.0.0.1:0", dir, logger)
	})
	if shared.err != nil {
		t.Fatalf("testenv: start shared mongo: %v", shared.err)
	}
	return shared.srv.URI()
}

var (
	dbSeq        atomic.Int64
	dbNameUnsafe = regexp.MustCompile(`[^a-z0-9_]+`)
)

// MongoDatabase returns a database name no other test in this binary uses, derived from the test's name,
// and drops that database in t.Cleanup (best effort) so a shared server does not grow.
func MongoDatabase(t testing.TB, uri string) string {
	t.Helper()
	suffix := "_" + strconv.FormatInt(dbSeq.Add(1), 10)
	base := "t_" + strings.Trim(dbNameUnsafe.ReplaceAllString(strings.ToLower(t.Name()), "_"), "_")
	// FerretDB accepts at most 63 characters from [a-zA-Z0-9_-].
	if max := 63 - len(suffix); len(base) > max {
		base = base[:max]
	}
	name := base + suffix
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		client, err := mongo.Connect(options.Client().ApplyURI(uri).SetServerSelectionTimeout(2 * time.Second))
		if err != nil {
			t.Logf("testenv: drop database %s: %v", name, err)
			return
		}
		defer func() { _ = client.Disconnect(ctx) }()
		if err := client.Database(name).Drop(ctx); err != nil {
			t.Logf("testenv: drop database %s: %v", name, err)
		}
	})
	return name
}

// RedisServer is a Redis server owned by one test, which may stop and restart it on the same port.
// It is a real redis-server process when one is on PATH. Otherwise it is miniredis, with a t.Log notice;
// but when CI=true the test fails instead, because CI must exercise the real server. Data does not survive
// a restart (no persistence), as with a cache restarting. Stop and Start call t.Fatal on failure, so call
// them from the test's goroutine.
type RedisServer struct {
	t    testing.TB
	bin  string // redis-server path; empty means miniredis
	dir  string // working directory of redis-server
	addr string

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{} // closed when cmd has exited
	mini    *embedded.Redis
	running bool
}

// StartRedisServer starts Redis on a free loopback port; t.Cleanup stops it.
func StartRedisServer(t testing.TB) *RedisServer {
	t.Helper()
	r := &RedisServer{t: t}
	bin, err := exec.LookPath("redis-server")
	switch {
	case err == nil:
		r.bin, r.dir = bin, t.TempDir()
	case isCI():
		t.Fatalf("testenv: redis-server not found on PATH (%v); CI=true requires the real Redis, install it (e.g. apt-get install redis-server)", err)
	default:
		t.Log("testenv: redis-server not found on PATH; falling back to miniredis (CI=true would fail here)")
	}

	// A port that was free can be taken before redis-server binds it; only the first start may move.
	for attempt := 1; ; attempt++ {
		r.addr = FreeAddr(t)
		err := r.start()
		if err == nil {
			break
		}
		if attempt == 3 {
			t.Fatalf("testenv: start redis: %v", err)
		}
	}
	t.Cleanup(r.Stop)
	return r
}

// Redis starts Redis for this test and returns its redis:// URL.
func Redis(t testing.TB) string {
	t.Helper()
	return StartRedisServer(t).URL()
}

// URL returns redis://host:port/0; it stays the same across Stop and Start.
func (r *RedisServer) URL() string { return "redis://" + r.addr + "/0" }

// Addr returns the server's host:port.
func (r *RedisServer) Addr() string { return r.addr }

// Start starts the server again on the same port; it does nothing if it is running.
func (r *RedisServer) Start() {
	r.t.Helper()
	if err := r.start(); err != nil {
		r.t.Fatalf("testenv: restart redis: %v", err)
	}
}

// Stop kills the server, as a crash would; it does nothing if it is stopped.
func (r *RedisServer) Stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.running {
		return
	}
	r.running = false
	if r.mini != nil {
		r.mini.Close()
		r.mini = nil
		return
	}
	_ = r.cmd.Process.Kill()
	<-r.exited
}

func (r *RedisServer) start() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.running {
		return nil
	}
	if r.bin == "" {
		mini, err := embedded.StartRedis(r.addr)
		if err != nil {
			return err
		}
		r.mini, r.running = mini, true
		return nil
	}

	_, port, err := net.SplitHostPort(r.addr)
	if err != nil {
		return fmt.Errorf("redis address %q: %w", r.addr, err)
	}
	out := &LockedBuffer{}
	cmd := exec.Command(r.bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	cmd.Dir = r.dir // keep any file it might write out of the source tree
	cmd.Stdout, cmd.Stderr = out, out
	killWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("run %s: %w", r.bin, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()

	deadline := time.Now().Add(startTimeout)
	for {
		select {
		case <-exited:
			return fmt.Errorf("redis-server on %s exited: %s", r.addr, strings.TrimSpace(out.String()))
		default:
		}
		if pingRedis(r.addr) {
			break
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exited
			return fmt.Errorf("redis-server on %s did not answer PING within %v: %s", r.addr, startTimeout, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The PONG could have come from another process holding the port; ours would then exit on bind.
	select {
	case <-exited:
		return fmt.Errorf("redis-server on %s exited: %s", r.addr, strings.TrimSpace(out.String()))
	case <-time.After(20 * time.Millisecond):
	}
	r.cmd, r.exited, r.running = cmd, exited, true
	return nil
}

// pingRedis reports whether a Redis server on addr answers PING with PONG (not, e.g., -LOADING).
func pingRedis(addr string) bool {
	conn, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return false
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	return err == nil && strings.TrimSpace(line) == "+PONG"
}

func isCI() bool {
	ci, _ := strconv.ParseBool(os.Getenv("CI"))
	return ci
}

// LockedBuffer collects a child process's output (or any log written from several goroutines); exec
// copies into it from its own goroutine.
type LockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *LockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *LockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// SigningKeysSpec is the KAFKA_SIGNING_KEYS of test configurations; SigningKeys are the same keys.
const SigningKeysSpec = "test=platform-test-signing-secret-0123456789abcdef"

// SigningKeys returns the keys of SigningKeysSpec, to sign records a test produces as the gateway would.
func SigningKeys(t testing.TB) *envelope.Keys {
	t.Helper()
	k, err := envelope.ParseKeys(SigningKeysSpec)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return k
}
