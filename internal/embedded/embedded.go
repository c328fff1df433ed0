// Package embedded starts in-process stand-ins for the platform's infrastructure: a Kafka broker (kfake),
// a MongoDB-wire server (FerretDB on SQLite) and Redis (miniredis). The dev stack (services/devstack) and
// tests use it; production binaries must never import it, so they do not link FerretDB, kfake or miniredis.
//
// Every server listens on exactly the address it is given; port 0 picks a free port, and the real
// address is available from the returned handle.
package embedded

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"sync"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
	"github.com/alicebob/miniredis/v2"
	"github.com/twmb/franz-go/pkg/kfake"
)

// KafkaPartitions is how many partitions each seeded topic gets.
const KafkaPartitions = 6

// Kafka is a single-broker in-memory Kafka cluster.
type Kafka struct {
	cluster *kfake.Cluster
	addr    string
}

// StartKafka starts one kfake broker listening on addr (host:port) with topics seeded, KafkaPartitions each.
func StartKafka(addr string, topics []string) (*Kafka, error) {
	// kfake always asks to listen on 127.0.0.1:<port>. To honour the host as well, listen ourselves and hand
	// kfake that listener through ListenFn. The broker advertises its listener's Addr() in metadata, so a
	// wildcard bind (":9092", "0.0.0.0:9092") is reported as loopback, an address clients can dial.
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("kafka: listen on %s: %w", addr, err)
	}
	adv := advertisedListener{Listener: ln, addr: dialableAddr(ln.Addr())}
	var once sync.Once
	listen := func(network, address string) (net.Listener, error) {
		var l net.Listener
		once.Do(func() { l = adv })
		if l != nil {
			return l, nil
		}
		return net.Listen(network, address) // only reached if brokers are added later
	}

	opts := []kfake.Opt{kfake.NumBrokers(1), kfake.ListenFn(listen)}
	if len(topics) > 0 {
		opts = append(opts, kfake.SeedTopics(KafkaPartitions, topics...))
	}
	var cluster *kfake.Cluster
	// The broker's goroutines inherit the label, so a CPU profile of a process embedding it (tests,
	// benchmarks, the devstack) tells its cost apart: go tool pprof -tagfocus component=kfake.
	pprof.Do(context.Background(), pprof.Labels("component", "kfake"), func(context.Context) {
		cluster, err = kfake.NewCluster(opts...)
	})
	if err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("kafka: start kfake: %w", err)
	}
	return &Kafka{cluster: cluster, addr: adv.addr.String()}, nil
}

// Addr returns the broker's host:port, suitable for KAFKA_BROKERS.
func (k *Kafka) Addr() string { return k.addr }

// Close stops the broker; its data is lost.
func (k *Kafka) Close() { k.cluster.Close() }

// Mongo is an embedded FerretDB (MongoDB wire protocol) backed by SQLite files in a directory.
//
// Clients reach FerretDB through a small TCP relay owned by Mongo rather than FerretDB's own listener:
// FerretDB keeps already open connections serving for up to 3 s after it is told to stop, so Close would
// neither be prompt nor look like an outage. The relay drops every client connection at once.
type Mongo struct {
	ln     net.Listener
	uri    string
	cancel context.CancelFunc
	done   chan struct{} // closed when FerretDB's Run and the relay have returned

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// ferretNewMu serialises ferretdb.New, which writes package-level state (version info) unguarded.
var ferretNewMu sync.Mutex

// StartMongo starts FerretDB with the SQLite handler, keeping data in dataDir (created if missing), and
// serving the MongoDB wire protocol on addr, with its SQLite files in dataDir. A server started
// again on the same dataDir sees the data written before Close. Only FerretDB's error-level logs reach
// logger (a nil logger discards them): at warning level it dumps whole wire messages for every command it
// does not implement, e.g. the driver's endSessions on each Disconnect.
//
// ctx only bounds start-up: the server runs until Close, so a caller can cancel its context on SIGTERM and
// still drain in-flight work into the store before closing it.
func StartMongo(ctx context.Context, addr, dataDir string, logger *slog.Logger) (*Mongo, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("mongo: start: %w", err)
	}
	// No in-memory mode: FerretDB's in-memory SQLite has a single connection, and every update waits on
	// it forever.
	if dataDir == "" {
		return nil, errors.New("mongo: a data directory is required")
	}
	var sqliteURL string
	{
		abs, err := filepath.Abs(dataDir)
		if err != nil {
			return nil, fmt.Errorf("mongo: data dir: %w", err)
		}
		if err := os.MkdirAll(abs, 0o750); err != nil {
			return nil, fmt.Errorf("mongo: data dir: %w", err)
		}
		// Built with url.URL so that '?', '#' or '%' in the path cannot be read as URI syntax.
		sqliteURL = (&url.URL{Scheme: "file", Path: filepath.ToSlash(abs) + "/"}).String()
	}

	ferretLog := slog.New(slog.DiscardHandler)
	if logger != nil {
		ferretLog = slog.New(minLevelHandler{Handler: logger.Handler(), min: slog.LevelError}).With("component", "ferretdb")
	}

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("mongo: listen on %s: %w", addr, err)
	}

	ferretNewMu.Lock()
	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: "127.0.0.1:0"}, // private; clients use the relay on addr
		Logger:    ferretLog,
		Handler:   "sqlite",
		SQLiteURL: sqliteURL,
	})
	ferretNewMu.Unlock()
	if err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("mongo: start ferretdb: %w", err)
	}
	// ferretdb.New has already bound its listener, so MongoDBURI does not block here.
	backendURI, err := url.Parse(f.MongoDBURI())
	if err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("mongo: ferretdb uri: %w", err)
	}
	backend := backendURI.Host

	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx)) // keeps ctx's values, not its cancellation
	m := &Mongo{
		ln:     ln,
		uri:    (&url.URL{Scheme: "mongodb", Host: dialableAddr(ln.Addr()).String(), Path: "/"}).String(),
		cancel: cancel,
		done:   make(chan struct{}),
		conns:  make(map[net.Conn]struct{}),
	}
	ferretDone := make(chan struct{})
	// FerretDB's goroutines (one per connection) and the relay's inherit the label, so a CPU profile of a
	// process embedding it tells its cost apart: go tool pprof -tagfocus component=ferretdb.
	labels := pprof.Labels("component", "ferretdb")
	go pprof.Do(runCtx, labels, func(ctx context.Context) {
		defer close(ferretDone)
		if err := f.Run(ctx); err != nil && logger != nil {
			logger.Warn("ferretdb stopped with an error", "err", err)
		}
	})
	m.wg.Add(1)
	go pprof.Do(runCtx, labels, func(context.Context) { m.acceptLoop(backend) })
	go func() {
		<-ferretDone
		m.wg.Wait()
		close(m.done)
	}()
	return m, nil
}

// URI returns a mongodb:// URI for this server.
func (m *Mongo) URI() string { return m.uri }

// Close drops every client connection, stops FerretDB and waits until it has stopped and released its
// SQLite files, so a new server may start on the same address and directory right away.
func (m *Mongo) Close() {
	m.mu.Lock()
	if !m.closed {
		m.closed = true
		_ = m.ln.Close()
		for c := range m.conns {
			_ = c.Close()
		}
	}
	m.mu.Unlock()
	m.cancel()
	<-m.done
}

func (m *Mongo) acceptLoop(backend string) {
	defer m.wg.Done()
	for {
		client, err := m.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // transient (e.g. EMFILE): back off instead of spinning
			continue
		}
		server, err := net.Dial("tcp", backend)
		if err != nil {
			_ = client.Close()
			continue
		}
		if !m.track(client, server) {
			return
		}
		m.wg.Add(1)
		go m.relay(client, server)
	}
}

// track registers both ends so Close can drop them; it reports false (and closes them) once closed.
func (m *Mongo) track(conns ...net.Conn) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		for _, c := range conns {
			_ = c.Close()
		}
		return false
	}
	for _, c := range conns {
		m.conns[c] = struct{}{}
	}
	return true
}

func (m *Mongo) relay(client, server net.Conn) {
	defer m.wg.Done()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		// Either side ending ends the pair, as it would with a direct connection.
		_ = dst.Close()
		_ = src.Close()
		done <- struct{}{}
	}
	go pipe(server, client)
	go pipe(client, server)
	<-done
	<-done
	m.mu.Lock()
	delete(m.conns, client)
	delete(m.conns, server)
	m.mu.Unlock()
}

// Redis is an in-memory Redis (miniredis).
type Redis struct {
	srv  *miniredis.Miniredis
	stop chan struct{}
	done chan struct{}
}

// ttlTick is how often the embedded Redis moves its keys' TTLs on with the wall clock.
const ttlTick = 50 * time.Millisecond

// StartRedis starts miniredis listening on addr. Its keys expire in real time, as on redis-server:
// miniredis only decreases TTLs when told to, so a goroutine fast-forwards it by the time that passed.
func StartRedis(addr string) (*Redis, error) {
	srv := miniredis.NewMiniRedis()
	if err := srv.StartAddr(addr); err != nil {
		return nil, fmt.Errorf("redis: start miniredis on %s: %w", addr, err)
	}
	r := &Redis{srv: srv, stop: make(chan struct{}), done: make(chan struct{})}
	go r.expire()
	return r, nil
}

func (r *Redis) expire() {
	defer close(r.done)
	tick := time.NewTicker(ttlTick)
	defer tick.Stop()
	last := time.Now()
	for {
		select {
		case <-r.stop:
			return
		case now := <-tick.C:
			r.srv.FastForward(now.Sub(last))
			last = now
		}
	}
}

// Addr returns the server's host:port.
func (r *Redis) Addr() string { return r.srv.Addr() }

// URL returns a redis:// URL for database 0, as REDIS_URL expects.
func (r *Redis) URL() string { return "redis://" + r.srv.Addr() + "/0" }

// Close stops the server; its data is lost.
func (r *Redis) Close() {
	close(r.stop)
	<-r.done
	r.srv.Close()
}

// dialableAddr returns a, where an unspecified (wildcard) IP is replaced by loopback, so it can be
// handed to clients.
func dialableAddr(a net.Addr) net.Addr {
	tcp, ok := a.(*net.TCPAddr)
	if !ok || !tcp.IP.IsUnspecified() {
		return a
	}
	// A "[::]" bind normally accepts IPv4 too, and 127.0.0.1 works even where IPv6 is disabled.
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: tcp.Port}
}

// advertisedListener reports addr instead of the bound address; kfake advertises Addr() to clients.
type advertisedListener struct {
	net.Listener
	addr net.Addr
}

func (l advertisedListener) Addr() net.Addr { return l.addr }

// minLevelHandler drops records below min, whatever the wrapped handler's own level.
//
// WithAttrs and WithGroup are recorded, not applied: FerretDB derives a logger with the SQL text and
// arguments of every statement it runs (fsql), and a text or JSON handler formats those attributes
// eagerly, which cost about 7 % of the CPU of a bulk insert, for records that are then dropped. They
// are applied to the wrapped handler only when a record passes the level.
type minLevelHandler struct {
	slog.Handler
	min slog.Level
	ops []handlerOp // WithAttrs and WithGroup calls not yet applied, in order
}

// handlerOp is one recorded WithAttrs (attrs) or WithGroup (group) call.
type handlerOp struct {
	attrs []slog.Attr
	group string
}

func (h minLevelHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h minLevelHandler) Handle(ctx context.Context, r slog.Record) error {
	inner := h.Handler
	for _, op := range h.ops {
		if op.attrs != nil {
			inner = inner.WithAttrs(op.attrs)
		} else {
			inner = inner.WithGroup(op.group)
		}
	}
	return inner.Handle(ctx, r)
}

func (h minLevelHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(attrs) == 0 {
		return h
	}
	return h.with(handlerOp{attrs: slices.Clone(attrs)})
}

func (h minLevelHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return h.with(handlerOp{group: name})
}

func (h minLevelHandler) with(op handlerOp) minLevelHandler {
	h.ops = append(slices.Clip(h.ops), op)
	return h
}
