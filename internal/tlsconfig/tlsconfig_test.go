package tlsconfig_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/msgplatform/platform/internal/testenv"
	"github.com/msgplatform/platform/internal/tlsconfig"
	"github.com/msgplatform/platform/internal/tlsconfig/tlstest"
)

// env is a Reloader with its metrics registry and log.
type env struct {
	r   *tlsconfig.Reloader
	reg *prometheus.Registry
	log *testenv.LockedBuffer
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{reg: prometheus.NewRegistry(), log: &testenv.LockedBuffer{}}
	var err error
	if e.r, err = tlsconfig.New(e.reg, slog.New(slog.NewTextHandler(e.log, nil))); err != nil {
		t.Fatal(err)
	}
	return e
}

// run runs the Reloader's loop (polling every poll, reloading on what hup delivers) until the test ends.
func (e *env) run(t *testing.T, poll time.Duration, hup <-chan os.Signal) {
	t.Helper()
	e.r.PollInterval = poll
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = e.r.Run(ctx, hup); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

// metric is testenv.Metric over the listener's registry.
func (e *env) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	return testenv.Metric(t, e.reg, name, labels...)
}

// tlsWait bounds the waits for a reload to be noticed (it asserts nothing about time).
const tlsWait = 10 * time.Second

// serveGRPC serves the "grpc" listener's configuration, from a certificate of ca written to dir (where
// the test rotates it), on a loopback port: what the rotation tests start from. It returns the files, the
// certificate first served and the address.
func (e *env) serveGRPC(t *testing.T, ca *tlstest.CA, dir string) (tlsconfig.Files, *tlstest.Leaf, string) {
	t.Helper()
	files, first := serverFiles(t, dir, ca)
	s, err := e.r.Server("grpc", files)
	if err != nil {
		t.Fatal(err)
	}
	return files, first, serve(t, s.Config())
}

// serve accepts TLS connections with cfg on a loopback port until the test ends: each completes the
// handshake, then gets one byte and is closed. It returns the address.
func serve(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := tls.Server(c, cfg)
				_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
				if tc.Handshake() == nil {
					_, _ = tc.Write([]byte{1})
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// dial connects to addr with cfg and returns the certificate the server presented. A handshake the
// server refuses fails here too: with TLS 1.3 the client learns of it on its first read.
func dial(t *testing.T, addr string, cfg *tls.Config) (*x509.Certificate, error) {
	t.Helper()
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: cfg}
	return readOne(d.DialContext(context.Background(), "tcp", addr))
}

func readOne(c net.Conn, err error) (*x509.Certificate, error) {
	if err != nil {
		return nil, err
	}
	defer c.Close()
	tc := c.(*tls.Conn)
	_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(tc, make([]byte, 1)); err != nil {
		return nil, err
	}
	return tc.ConnectionState().PeerCertificates[0], nil
}

// clientTo is a client trusting ca, dialling "localhost", with the given certificates.
func clientTo(ca *tlstest.CA, certs ...tls.Certificate) *tls.Config {
	return &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost", Certificates: certs, MinVersion: tls.VersionTLS12}
}

// served returns the serial number of the certificate the server at addr presents now.
func served(t *testing.T, addr string, cfg *tls.Config) string {
	t.Helper()
	cert, err := dial(t, addr, cfg)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	return cert.SerialNumber.String()
}

// serverFiles writes a CA-signed server certificate to dir and returns the Files naming it.
func serverFiles(t *testing.T, dir string, ca *tlstest.CA) (tlsconfig.Files, *tlstest.Leaf) {
	t.Helper()
	leaf := ca.Server(t)
	cert, key := leaf.WriteFiles(t, dir, "server")
	return tlsconfig.Files{Setting: "GRPC_TLS", CertFile: cert, KeyFile: key}, leaf
}

// The listener's config serves the certificate of the files, with its expiry in a metric.
func TestServerServesTheCertificate(t *testing.T) {
	e := newEnv(t)
	ca := tlstest.NewCA(t, "test CA")
	files, leaf := serverFiles(t, t.TempDir(), ca)
	s, err := e.r.Server("grpc", files)
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, s.Config("http/1.1"))
	if got := served(t, addr, clientTo(ca)); got != leaf.Cert.SerialNumber.String() {
		t.Errorf("served serial %s, want %s", got, leaf.Cert.SerialNumber)
	}
	if !s.Leaf().Equal(leaf.Cert) {
		t.Error("Leaf() is not the certificate of the files")
	}
	if got, want := e.metric(t, "platform_tls_certificate_expiry_timestamp_seconds", "listener", "grpc"), float64(leaf.Cert.NotAfter.Unix()); got != want {
		t.Errorf("expiry metric %v, want %v", got, want)
	}
	// Without a client CA, no client certificate is asked for: plain server-authenticated TLS.
	if _, err := dial(t, addr, clientTo(ca)); err != nil {
		t.Errorf("a client without a certificate was refused without a client CA: %v", err)
	}
	if !e.r.Watching() {
		t.Error("Watching() = false with a listener")
	}
}

// Replacing the files rotates the served certificate without a restart: the poll notices the change.
func TestRotationWhenTheFilesChange(t *testing.T) {
	e := newEnv(t)
	ca := tlstest.NewCA(t, "test CA")
	dir := t.TempDir()
	_, old, addr := e.serveGRPC(t, ca, dir)
	e.run(t, 20*time.Millisecond, nil)
	if got := served(t, addr, clientTo(ca)); got != old.Cert.SerialNumber.String() {
		t.Fatalf("served %s before the rotation, want %s", got, old.Cert.SerialNumber)
	}

	next := ca.Server(t)
	next.WriteFiles(t, dir, "server")
	testenv.Eventually(t, "the new certificate served", tlsWait, func() bool { return served(t, addr, clientTo(ca)) == next.Cert.SerialNumber.String() })
	if n := e.metric(t, "platform_tls_reloads_total", "listener", "grpc", "result", "success"); n != 1 {
		t.Errorf("reloads success = %v, want 1", n)
	}
	if n := e.metric(t, "platform_tls_reloads_total", "listener", "grpc", "result", "failure"); n != 0 {
		t.Errorf("reloads failure = %v, want 0", n)
	}
	if got, want := e.metric(t, "platform_tls_certificate_expiry_timestamp_seconds", "listener", "grpc"), float64(next.Cert.NotAfter.Unix()); got != want {
		t.Errorf("expiry metric %v, want %v (the new certificate's)", got, want)
	}
	if log := e.log.String(); !strings.Contains(log, "TLS certificates reloaded") || !strings.Contains(log, next.Cert.SerialNumber.String()) {
		t.Errorf("the reload was not logged with the new serial:\n%s", log)
	}
}

// A reload request (SIGHUP, delivered to Run) rotates at once, without waiting for a poll; Reload does
// the same when called.
func TestRotationOnSignalAndReload(t *testing.T) {
	e := newEnv(t)
	ca := tlstest.NewCA(t, "test CA")
	dir := t.TempDir()
	_, old, addr := e.serveGRPC(t, ca, dir)
	hup := make(chan os.Signal, 1)
	e.run(t, time.Hour, hup) // no poll within the test

	next := ca.Server(t)
	next.WriteFiles(t, dir, "server")
	if got := served(t, addr, clientTo(ca)); got != old.Cert.SerialNumber.String() {
		t.Fatalf("served %s before the signal, want the old %s (no poll yet)", got, old.Cert.SerialNumber)
	}
	hup <- syscall.SIGHUP
	testenv.Eventually(t, "the new certificate served after SIGHUP", tlsWait, func() bool { return served(t, addr, clientTo(ca)) == next.Cert.SerialNumber.String() })
	if !strings.Contains(e.log.String(), "signal=hangup") {
		t.Errorf("the signal was not logged:\n%s", e.log.String())
	}

	third := ca.Server(t)
	third.WriteFiles(t, dir, "server")
	if err := e.r.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := served(t, addr, clientTo(ca)); got != third.Cert.SerialNumber.String() {
		t.Errorf("served %s after Reload, want %s", got, third.Cert.SerialNumber)
	}
}

// A bad new file (garbage, a key of another certificate, a missing file) keeps the old certificate
// served, and says so in platform_tls_reloads_total{result="failure"} and the log; good files recover.
func TestBadFilesKeepTheOldCertificate(t *testing.T) {
	e := newEnv(t)
	ca := tlstest.NewCA(t, "test CA")
	dir := t.TempDir()
	files, old, addr := e.serveGRPC(t, ca, dir)
	e.run(t, 20*time.Millisecond, nil)

	failures := func() float64 {
		return e.metric(t, "platform_tls_reloads_total", "listener", "grpc", "result", "failure")
	}
	other := ca.Server(t)
	for _, bad := range []struct {
		name  string
		write func()
	}{
		{"garbage certificate", func() { tlstest.WriteFile(t, files.CertFile, []byte("not PEM")) }},
		{"certificate of another key", func() { tlstest.WriteFile(t, files.CertFile, other.CertPEM) }},
		{"missing key file", func() {
			if err := os.Remove(files.KeyFile); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		before := failures()
		bad.write()
		testenv.Eventually(t, bad.name+": a failure counted", tlsWait, func() bool { return failures() > before })
		if got := served(t, addr, clientTo(ca)); got != old.Cert.SerialNumber.String() {
			t.Errorf("%s: served %s, want the old %s", bad.name, got, old.Cert.SerialNumber)
		}
		before = failures()
		if err := e.r.Reload(); err == nil || !strings.Contains(err.Error(), "GRPC_TLS_") {
			t.Errorf("%s: Reload() = %v, want an error naming the setting", bad.name, err)
		}
		if n := failures(); n != before+1 {
			t.Errorf("%s: failures after Reload = %v, want %v", bad.name, n, before+1)
		}
	}
	if n := e.metric(t, "platform_tls_reloads_total", "listener", "grpc", "result", "success"); n != 0 {
		t.Errorf("reloads success = %v, want 0: no good file yet", n)
	}
	if log := e.log.String(); !strings.Contains(log, "TLS reload failed; still using the previous certificate") {
		t.Errorf("the failure was not logged:\n%s", log)
	}
	next := ca.Server(t)
	next.WriteFiles(t, dir, "server")
	testenv.Eventually(t, "good files served again", tlsWait, func() bool { return served(t, addr, clientTo(ca)) == next.Cert.SerialNumber.String() })
}

// With a client CA, the listener requires a client certificate it signed (mutual TLS): a client without
// one, or with one from another CA, is refused. A new CA bundle is picked up like a new certificate.
func TestMutualTLS(t *testing.T) {
	e := newEnv(t)
	ca := tlstest.NewCA(t, "server CA")
	clientCA, otherCA := tlstest.NewCA(t, "client CA"), tlstest.NewCA(t, "other CA")
	dir := t.TempDir()
	files, _ := serverFiles(t, dir, ca)
	files.CAFile = clientCA.WriteFile(t, dir, "clients.pem")
	s, err := e.r.Server("grpc", files)
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, s.Config())
	if _, err := dial(t, addr, clientTo(ca)); err == nil {
		t.Error("a client without a certificate was let in")
	}
	if _, err := dial(t, addr, clientTo(ca, otherCA.Client(t, "mallory").TLS(t))); err == nil {
		t.Error("a client with a certificate of another CA was let in")
	}
	if _, err := dial(t, addr, clientTo(ca, clientCA.Client(t, "alice").TLS(t))); err != nil {
		t.Errorf("a client with a certificate of the client CA was refused: %v", err)
	}

	// Rotate the client CA: the other CA's clients get in, the old CA's no longer do.
	otherCA.WriteFile(t, dir, "clients.pem")
	if err := e.r.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := dial(t, addr, clientTo(ca, otherCA.Client(t, "bob").TLS(t))); err != nil {
		t.Errorf("after the CA rotation, a client of the new CA was refused: %v", err)
	}
	if _, err := dial(t, addr, clientTo(ca, clientCA.Client(t, "alice").TLS(t))); err == nil {
		t.Error("after the CA rotation, a client of the old CA was let in")
	}
}

// The process's own client (the REST gateway dialling its gRPC listener on 127.0.0.1) gets through
// mutual TLS with its ephemeral identity, and before and after a rotation; it accepts only the
// listener's own certificate, and its identity lets nobody else in.
func TestInternalClient(t *testing.T) {
	for _, mutual := range []bool{false, true} {
		t.Run(map[bool]string{false: "server TLS", true: "mutual TLS"}[mutual], func(t *testing.T) {
			e := newEnv(t)
			ca := tlstest.NewCA(t, "server CA")
			dir := t.TempDir()
			files, leaf := serverFiles(t, dir, ca)
			if mutual {
				files.CAFile = tlstest.NewCA(t, "client CA").WriteFile(t, dir, "clients.pem")
			}
			s, err := e.r.Server("grpc", files)
			if err != nil {
				t.Fatal(err)
			}
			internal, err := s.InternalClient()
			if err != nil {
				t.Fatal(err)
			}
			addr := serve(t, s.Config())
			// The dial goes to an IP address, which no name of the certificate has to match.
			cert, err := dial(t, addr, internal)
			if err != nil {
				t.Fatalf("the internal client was refused: %v", err)
			}
			if !cert.Equal(leaf.Cert) {
				t.Error("the internal client saw another certificate")
			}

			// After a rotation (and on a second reload, the previous leaf no longer in reach) it still gets in.
			for range 2 {
				ca.Server(t).WriteFiles(t, dir, "server")
				if err := e.r.Reload(); err != nil {
					t.Fatal(err)
				}
				if _, err := dial(t, addr, internal); err != nil {
					t.Fatalf("after a rotation, the internal client was refused: %v", err)
				}
			}

			// It refuses any other server, even one with a certificate of the same CA.
			other := ca.Server(t).TLS(t)
			otherAddr := serve(t, &tls.Config{Certificates: []tls.Certificate{other}, MinVersion: tls.VersionTLS12})
			if _, err := dial(t, otherAddr, internal); err == nil || !strings.Contains(err.Error(), "does not serve") {
				t.Errorf("the internal client accepted another server's certificate: %v", err)
			}

			if mutual {
				// Its certificate on its own, without its key, is useless; and a client presenting its
				// certificate with another key fails the handshake's proof of possession.
				stolen := tls.Certificate{Certificate: internalCert(t, internal).Certificate, PrivateKey: other.PrivateKey}
				if _, err := dial(t, addr, clientTo(ca, stolen)); err == nil {
					t.Error("a client with the internal certificate but another key was let in")
				}
			}
		})
	}
}

func internalCert(t *testing.T, c *tls.Config) *tls.Certificate {
	t.Helper()
	cert, err := c.GetClientCertificate(&tls.CertificateRequestInfo{})
	if err != nil || cert == nil {
		t.Fatalf("internal client certificate: %v", err)
	}
	return cert
}

// A client's TLS (Kafka's) verifies the server against the CA bundle, by the name or IP address dialled,
// presents its certificate for mutual TLS, and picks up a new CA bundle without a restart.
func TestClient(t *testing.T) {
	e := newEnv(t)
	serverCA, clientCA, otherCA := tlstest.NewCA(t, "broker CA"), tlstest.NewCA(t, "client CA"), tlstest.NewCA(t, "other CA")
	dir := t.TempDir()
	cert, key := clientCA.Client(t, "platform").WriteFiles(t, dir, "client")
	files := tlsconfig.Files{Setting: "KAFKA_TLS", CertFile: cert, KeyFile: key, CAFile: serverCA.WriteFile(t, dir, "ca.pem")}
	c, err := e.r.Client("kafka", files)
	if err != nil {
		t.Fatal(err)
	}
	broker := func(ca *tlstest.CA, hosts ...string) string {
		return serve(t, &tls.Config{
			Certificates: []tls.Certificate{ca.Server(t, hosts...).TLS(t)}, MinVersion: tls.VersionTLS12,
			ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clientCA.Pool(),
		})
	}
	dialer := c.Dialer(&net.Dialer{Timeout: 5 * time.Second})
	good := broker(serverCA, "127.0.0.1")
	if _, err := readOne(dialer(context.Background(), "tcp", good)); err != nil {
		t.Errorf("a broker of the CA, dialled by its IP address, was refused: %v", err)
	}
	_, port, _ := net.SplitHostPort(broker(serverCA, "broker.example"))
	if _, err := readOne(dialer(context.Background(), "tcp", net.JoinHostPort("127.0.0.1", port))); err == nil {
		t.Error("a broker whose certificate does not name the address dialled was accepted")
	}
	if _, err := readOne(dialer(context.Background(), "tcp", broker(otherCA, "127.0.0.1"))); err == nil {
		t.Error("a broker of another CA was accepted")
	}

	otherCA.WriteFile(t, dir, "ca.pem")
	if err := e.r.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := readOne(dialer(context.Background(), "tcp", broker(otherCA, "127.0.0.1"))); err != nil {
		t.Errorf("after the CA rotation, a broker of the new CA was refused: %v", err)
	}
	if _, err := readOne(dialer(context.Background(), "tcp", good)); err == nil {
		t.Error("after the CA rotation, a broker of the old CA was accepted")
	}

	// Without a certificate, the broker asking for one refuses the client.
	bare, err := e.r.Client("kafka-bare", tlsconfig.Files{Setting: "KAFKA_TLS", CAFile: files.CAFile})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := readOne(bare.Dialer(&net.Dialer{})(context.Background(), "tcp", broker(otherCA, "127.0.0.1"))); err == nil {
		t.Error("a client without a certificate got through mutual TLS")
	}
}

// Files that cannot be used fail at start, naming the setting to fix.
func TestLoadErrors(t *testing.T) {
	e := newEnv(t)
	ca := tlstest.NewCA(t, "CA")
	dir := t.TempDir()
	cert, key := ca.Server(t).WriteFiles(t, dir, "server")
	notPEM := filepath.Join(dir, "not.pem")
	tlstest.WriteFile(t, notPEM, []byte("hello"))
	for _, tc := range []struct {
		name  string
		files tlsconfig.Files
		want  string
	}{
		{"no key", tlsconfig.Files{Setting: "GRPC_TLS", CertFile: cert}, "GRPC_TLS_CERT_FILE and GRPC_TLS_KEY_FILE"},
		{"missing file", tlsconfig.Files{Setting: "HTTP_TLS", CertFile: filepath.Join(dir, "nope.pem"), KeyFile: key}, "HTTP_TLS_CERT_FILE"},
		{"bad client CA", tlsconfig.Files{Setting: "GRPC_TLS", CertFile: cert, KeyFile: key, CAFile: notPEM}, "GRPC_TLS_CLIENT_CA_FILE"},
		{"key mismatch", tlsconfig.Files{Setting: "GRPC_TLS", CertFile: cert, KeyFile: notPEM}, "GRPC_TLS_CERT_FILE"},
	} {
		if _, err := e.r.Server("grpc", tc.files); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error naming %s", tc.name, err, tc.want)
		}
	}
	if _, err := e.r.Client("kafka", tlsconfig.Files{Setting: "KAFKA_TLS", CAFile: notPEM}); err == nil || !strings.Contains(err.Error(), "KAFKA_TLS_CA_FILE") {
		t.Errorf("bad Kafka CA: %v, want an error naming KAFKA_TLS_CA_FILE", err)
	}
	if e.r.Watching() {
		t.Error("Watching() = true with no endpoint loaded")
	}
}
