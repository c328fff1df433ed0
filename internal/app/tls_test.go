package app_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/app"
	"github.com/msgplatform/platform/internal/app/apptest"
	"github.com/msgplatform/platform/internal/testenv"
	"github.com/msgplatform/platform/internal/tlsconfig/tlstest"
)

// tlsProcess is a process started with TLS settings, and its logs.
type tlsProcess struct {
	*apptest.Process
	logs *testenv.LockedBuffer
}

func startTLSProcess(t *testing.T, roles app.Roles, vars map[string]string) *tlsProcess {
	t.Helper()
	mongoURI := testenv.SharedMongo(t)
	env := map[string]string{"MONGO_URI": mongoURI, "MONGO_DATABASE": testenv.MongoDatabase(t, mongoURI), "REDIS_URL": testenv.Redis(t)}
	maps.Copy(env, vars)
	if env["KAFKA_BROKERS"] == "" {
		env["KAFKA_BROKERS"] = testenv.Kafka(t)
	}
	logs := &testenv.LockedBuffer{}
	p := apptest.Start(t, testenv.Config(t, env), roles, slog.New(slog.NewTextHandler(logs, nil)))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("process logs:\n%s", logs.String())
		}
	})
	return &tlsProcess{Process: p, logs: logs}
}

// authed returns a context carrying a user token of alice.
func authed(t *testing.T) context.Context {
	t.Helper()
	tok := testenv.Token(t, "alice", "tls")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
}

func bearer(ctx context.Context) string {
	md, _ := metadata.FromOutgoingContext(ctx)
	return md.Get("authorization")[0]
}

// grpcClient connects to addr with creds; the connection closes when the test ends.
func grpcClient(t *testing.T, addr string, creds credentials.TransportCredentials) platformv1.ConversationServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return platformv1.NewConversationServiceClient(conn)
}

func tlsCreds(roots *x509.CertPool, certs ...tls.Certificate) credentials.TransportCredentials {
	return credentials.NewTLS(&tls.Config{RootCAs: roots, Certificates: certs, MinVersion: tls.VersionTLS12})
}

// httpsClient trusts roots and presents certs; it speaks HTTP/2 when the server offers it.
func httpsClient(roots *x509.CertPool, certs ...tls.Certificate) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{ForceAttemptHTTP2: true,
		TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: certs, MinVersion: tls.VersionTLS12}}}
}

// do sends a REST request and returns the status and body.
func do(t *testing.T, c *http.Client, method, url, authorization string, body any) (*http.Response, []byte, error) {
	t.Helper()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", authorization)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

// servedSerial returns the serial number of the certificate the TLS listener at addr presents now.
func servedSerial(t *testing.T, addr string, cfg *tls.Config) string {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatalf("handshake with %s: %v", addr, err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

// A gateway started with GRPC_TLS_* and HTTP_TLS_* answers gRPC over TLS and HTTPS (HTTP/2), and its REST
// gateway reaches its gRPC listener over TLS; plain-text clients and clients not trusting the CA get
// nothing. Its Kafka clients reach a broker requiring TLS and SCRAM (KAFKA_TLS_*, KAFKA_SASL_*): a
// message sent over HTTPS is produced, consumed by the pipeline and listed over gRPC.
func TestGatewayServesTLS(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "gateway CA")
	grpcCert, grpcKey := ca.Server(t).WriteFiles(t, dir, "grpc")
	httpCert, httpKey := ca.Server(t).WriteFiles(t, dir, "http")
	k := app.StartSecureKafka(t, nil)
	p := startTLSProcess(t, app.Roles{Gateway: true, Pipeline: true}, map[string]string{
		"GRPC_TLS_CERT_FILE": grpcCert, "GRPC_TLS_KEY_FILE": grpcKey,
		"HTTP_TLS_CERT_FILE": httpCert, "HTTP_TLS_KEY_FILE": httpKey,
		"KAFKA_BROKERS": k.Addr, "KAFKA_TLS_ENABLED": "true", "KAFKA_TLS_CA_FILE": k.CA.WriteFile(t, dir, "kafka-ca.pem"),
		"KAFKA_SASL_MECHANISM": "SCRAM-SHA-256", "KAFKA_SASL_USERNAME": k.User, "KAFKA_SASL_PASSWORD": k.Password,
	})
	ctx := authed(t)

	conv, err := grpcClient(t, p.GRPC, tlsCreds(ca.Pool())).CreateConversation(ctx, &platformv1.CreateConversationRequest{Title: "over TLS"})
	if err != nil {
		t.Fatalf("gRPC over TLS: %v", err)
	}
	id := conv.GetConversation().GetId()

	https := httpsClient(ca.Pool())
	resp, body, err := do(t, https, http.MethodPost, "https://"+p.HTTP+"/v1/conversations/"+id+"/messages", bearer(ctx), map[string]string{"body": "over https"})
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("SendMessage over HTTPS: %v %v %s", err, resp, body)
	}
	if resp.ProtoMajor != 2 {
		t.Errorf("HTTPS spoke %s, want HTTP/2", resp.Proto)
	}
	conn, err := grpc.NewClient(p.GRPC, grpc.WithTransportCredentials(tlsCreds(ca.Pool())))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msgs := platformv1.NewMessageServiceClient(conn)
	testenv.Eventually(t, "the message stored by the pipeline (Kafka over TLS and SCRAM)", 0, func() bool {
		r, err := msgs.ListMessages(ctx, &platformv1.ListMessagesRequest{ConversationId: id})
		return err == nil && len(r.GetMessages()) == 1 && r.GetMessages()[0].GetBody() == "over https"
	})
	if resp, body, err := do(t, https, http.MethodGet, "https://"+p.HTTP+"/readyz", "", nil); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("/readyz over HTTPS: %v %v %s (Kafka over TLS should be healthy)", err, resp, body)
	}

	// Plain text gets nothing: gRPC fails, HTTP gets Go's 400 "client sent an HTTP request to an HTTPS server".
	if _, err := grpcClient(t, p.GRPC, insecure.NewCredentials()).CreateConversation(ctx, &platformv1.CreateConversationRequest{Title: "plain"}); err == nil {
		t.Error("a plain-text gRPC client was answered")
	}
	plain := &http.Client{Timeout: 5 * time.Second}
	if resp, body, err := do(t, plain, http.MethodGet, "http://"+p.HTTP+"/v1/conversations/"+id, bearer(ctx), nil); err == nil && resp.StatusCode != http.StatusBadRequest {
		t.Errorf("a plain-text HTTP client was answered %d %s", resp.StatusCode, body)
	}
	// A client not trusting the CA (system roots) refuses the server.
	if _, err := grpcClient(t, p.GRPC, tlsCreds(nil)).CreateConversation(ctx, &platformv1.CreateConversationRequest{Title: "untrusted"}); err == nil {
		t.Error("a gRPC client not trusting the gateway's CA got through")
	}
	if _, _, err := do(t, httpsClient(nil), http.MethodGet, "https://"+p.HTTP+"/healthz", "", nil); err == nil {
		t.Error("an HTTPS client not trusting the gateway's CA got through")
	}
}

// With GRPC_TLS_CLIENT_CA_FILE and HTTP_TLS_CLIENT_CA_FILE, clients need a certificate of that CA
// (mutual TLS): without one, or with one of another CA, they are refused; the REST gateway still
// reaches the gRPC listener. SIGHUP reloads the certificates: new handshakes get the new ones, without
// a restart.
func TestGatewayMutualTLSAndReload(t *testing.T) {
	dir := t.TempDir()
	ca, clientCA, otherCA := tlstest.NewCA(t, "gateway CA"), tlstest.NewCA(t, "client CA"), tlstest.NewCA(t, "other CA")
	grpcCert, grpcKey := ca.Server(t).WriteFiles(t, dir, "grpc")
	httpCert, httpKey := ca.Server(t).WriteFiles(t, dir, "http")
	clientCAFile := clientCA.WriteFile(t, dir, "clients.pem")
	p := startTLSProcess(t, app.Roles{Gateway: true}, map[string]string{
		"GRPC_TLS_CERT_FILE": grpcCert, "GRPC_TLS_KEY_FILE": grpcKey, "GRPC_TLS_CLIENT_CA_FILE": clientCAFile,
		"HTTP_TLS_CERT_FILE": httpCert, "HTTP_TLS_KEY_FILE": httpKey, "HTTP_TLS_CLIENT_CA_FILE": clientCAFile,
	})
	ctx := authed(t)
	alice := clientCA.Client(t, "alice").TLS(t)

	conv, err := grpcClient(t, p.GRPC, tlsCreds(ca.Pool(), alice)).CreateConversation(ctx, &platformv1.CreateConversationRequest{Title: "mutual"})
	if err != nil {
		t.Fatalf("gRPC with a client certificate: %v", err)
	}
	id := conv.GetConversation().GetId()
	for name, creds := range map[string]credentials.TransportCredentials{
		"no client certificate":          tlsCreds(ca.Pool()),
		"a certificate of another CA":    tlsCreds(ca.Pool(), otherCA.Client(t, "mallory").TLS(t)),
		"plain text":                     insecure.NewCredentials(),
		"a server certificate as client": tlsCreds(ca.Pool(), ca.Server(t).TLS(t)),
	} {
		if _, err := grpcClient(t, p.GRPC, creds).GetConversation(ctx, &platformv1.GetConversationRequest{ConversationId: id}); err == nil {
			t.Errorf("gRPC with %s was answered", name)
		}
	}

	// REST: the client's certificate is checked at the HTTP listener, and the REST gateway's own
	// connection passes the gRPC listener's mutual TLS.
	url := "https://" + p.HTTP + "/v1/conversations/" + id
	if resp, body, err := do(t, httpsClient(ca.Pool(), alice), http.MethodGet, url, bearer(ctx), nil); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("HTTPS with a client certificate: %v %v %s", err, resp, body)
	}
	if _, _, err := do(t, httpsClient(ca.Pool()), http.MethodGet, url, bearer(ctx), nil); err == nil {
		t.Error("HTTPS without a client certificate was answered")
	}
	if _, _, err := do(t, httpsClient(ca.Pool(), otherCA.Client(t, "mallory").TLS(t)), http.MethodGet, url, bearer(ctx), nil); err == nil {
		t.Error("HTTPS with a certificate of another CA was answered")
	}

	// Rotate both listeners' certificates and send SIGHUP: new handshakes present the new ones.
	handshake := &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{alice}, MinVersion: tls.VersionTLS12}
	newGRPC, newHTTP := ca.Server(t), ca.Server(t)
	newGRPC.WriteFiles(t, dir, "grpc")
	newHTTP.WriteFiles(t, dir, "http")
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "the new certificates served", 10*time.Second, func() bool {
		return servedSerial(t, p.GRPC, handshake) == newGRPC.Cert.SerialNumber.String() &&
			servedSerial(t, p.HTTP, handshake) == newHTTP.Cert.SerialNumber.String()
	})
	testenv.Eventually(t, "the SIGHUP logged", 10*time.Second, func() bool {
		return strings.Contains(p.logs.String(), "reloading TLS certificates") && strings.Contains(p.logs.String(), "signal=hangup")
	})
	mfs := scrape(t, p.Process)
	for _, listener := range []string{"grpc", "http"} {
		if n := testenv.Series(mfs["platform_tls_reloads_total"], "listener", listener, "result", "success"); n < 1 {
			t.Errorf("platform_tls_reloads_total{listener=%q,result=\"success\"} = %v, want at least 1", listener, n)
		}
		if n := testenv.Series(mfs["platform_tls_certificate_expiry_timestamp_seconds"], "listener", listener); n == 0 {
			t.Errorf("no certificate expiry for %s", listener)
		}
	}
	// New connections work after the rotation, over gRPC and REST.
	if _, err := grpcClient(t, p.GRPC, tlsCreds(ca.Pool(), alice)).GetConversation(ctx, &platformv1.GetConversationRequest{ConversationId: id}); err != nil {
		t.Errorf("gRPC after the rotation: %v", err)
	}
	if resp, body, err := do(t, httpsClient(ca.Pool(), alice), http.MethodGet, url, bearer(ctx), nil); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("HTTPS after the rotation: %v %v %s", err, resp, body)
	}
}

// A process without the gateway serves its health listener (HTTP_ADDR) over TLS too when HTTP_TLS_* are
// set.
func TestPipelineHealthServesTLS(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "pipeline CA")
	cert, key := ca.Server(t).WriteFiles(t, dir, "http")
	p := startTLSProcess(t, app.Roles{Pipeline: true}, map[string]string{"HTTP_TLS_CERT_FILE": cert, "HTTP_TLS_KEY_FILE": key})
	if resp, body, err := do(t, httpsClient(ca.Pool()), http.MethodGet, "https://"+p.HTTP+"/healthz", "", nil); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz over HTTPS: %v %v %s", err, resp, body)
	}
	if resp, _, err := do(t, &http.Client{Timeout: 5 * time.Second}, http.MethodGet, "http://"+p.HTTP+"/healthz", "", nil); err == nil && resp.StatusCode == http.StatusOK {
		t.Error("/healthz answered plain HTTP")
	}
}
