package tlsconfig

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"sync/atomic"
	"time"
)

// Server is a listener's TLS: its certificate and, with a client CA, mutual TLS (every client must
// present a certificate that chains to that CA). Both reload while the listener runs.
//
// The process's own connection to the listener (the REST gateway dials its gRPC listener on loopback)
// gets through without weakening that for anyone else; see InternalClient.
type Server struct {
	name string

	mu       sync.Mutex // serialises install and InternalClient
	state    atomic.Pointer[serverState]
	internal atomic.Pointer[tls.Certificate] // the ephemeral client identity; nil until InternalClient
}

// serverState is what every new handshake uses.
type serverState struct {
	cert *tls.Certificate
	// clientCAs verify client certificates: the configured CA bundle, plus the ephemeral internal
	// certificate once there is one. Nil: no client certificates asked for.
	clientCAs *x509.CertPool
	// configured is the bundle as loaded, kept to rebuild clientCAs.
	configured *x509.CertPool
	// prevLeaf is the leaf served before the last reload: the internal client accepts it too, so a
	// handshake racing a reload does not fail.
	prevLeaf *x509.Certificate
}

// Server loads a listener's certificate (and client CA, for mutual TLS) and reloads them from then on.
// name labels the metrics and logs ("grpc", "http"). It fails when the files cannot be read or parsed.
func (r *Reloader) Server(name string, f Files) (*Server, error) {
	if f.CertFile == "" || f.KeyFile == "" {
		return nil, fmt.Errorf("%s_CERT_FILE and %s_KEY_FILE: a TLS listener needs both", f.Setting, f.Setting)
	}
	s := &Server{name: name}
	if err := r.add(&endpoint{name: name, files: f, caName: f.Setting + "_CLIENT_CA_FILE", install: s.install}); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) install(m *material) {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := &serverState{cert: m.cert, configured: m.cas}
	if prev := s.state.Load(); prev != nil {
		next.prevLeaf = prev.cert.Leaf
	}
	next.clientCAs = s.clientCAs(m.cas)
	s.state.Store(next)
}

// clientCAs is the configured bundle plus the internal certificate, if any. Called with mu held.
func (s *Server) clientCAs(configured *x509.CertPool) *x509.CertPool {
	internal := s.internal.Load()
	if configured == nil || internal == nil {
		return configured
	}
	pool := configured.Clone()
	pool.AddCert(internal.Leaf)
	return pool
}

// Config returns the listener's tls.Config, offering protos by ALPN ("h2", "http/1.1"; gRPC's
// credentials add "h2" themselves). Each handshake gets the certificate and client CAs current at that
// moment (GetConfigForClient), so a reload needs no restart.
func (s *Server) Config(protos ...string) *tls.Config {
	return &tls.Config{
		MinVersion: minVersion,
		NextProtos: protos,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.state.Load().cert, nil
		},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			st := s.state.Load()
			c := &tls.Config{
				MinVersion:       minVersion,
				NextProtos:       protos,
				Certificates:     []tls.Certificate{*st.cert},
				VerifyConnection: s.verifyClient,
			}
			if st.clientCAs != nil {
				c.ClientAuth, c.ClientCAs = tls.RequireAndVerifyClientCert, st.clientCAs
			}
			return c, nil
		},
	}
}

// Leaf returns the certificate the listener presents to new handshakes.
func (s *Server) Leaf() *x509.Certificate { return s.state.Load().cert.Leaf }

// verifyClient runs after the standard verification of the client's certificate. A chain that ends at
// the internal certificate must be that very certificate (only this process holds its key, so nothing
// else can chain to it; this makes "exactly that certificate" explicit).
func (s *Server) verifyClient(cs tls.ConnectionState) error {
	internal := s.internal.Load()
	if internal == nil || len(cs.PeerCertificates) == 0 {
		return nil
	}
	for _, chain := range cs.VerifiedChains {
		if root := chain[len(chain)-1]; root.Equal(internal.Leaf) && !cs.PeerCertificates[0].Equal(internal.Leaf) {
			return errors.New("tls: a client certificate chains to the internal certificate without being it")
		}
	}
	return nil
}

// InternalClient returns the tls.Config with which this process dials its own listener (the REST
// gateway's connection to the gRPC listener on 127.0.0.1).
//
// The design: the dial goes to loopback, where no SAN of a real certificate has to match, and no
// configured CA has to have signed anything the process could present. So instead of names and CAs:
//   - the client checks that the server presents exactly the leaf this Server serves (or served just
//     before the latest reload): it talks to this very process, whatever the certificate's names;
//   - for mutual TLS, the process makes an ephemeral client key and self-signed certificate at start-up,
//     in memory only (never on disk, never logged), and the listener's client verification accepts a
//     chain to the configured client CA or exactly that certificate. Nobody else holds the key, so no
//     other client gains anything; other clients still need a certificate from the configured CA.
//
// Call it before serving: the listener accepts the internal certificate from then on.
func (s *Server) InternalClient() (*tls.Config, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	internal := s.internal.Load()
	if internal == nil {
		var err error
		if internal, err = ephemeralClientCert(s.name); err != nil {
			return nil, err
		}
		s.internal.Store(internal)
		st := *s.state.Load()
		st.clientCAs = s.clientCAs(st.configured)
		s.state.Store(&st)
	}
	return &tls.Config{
		MinVersion: minVersion,
		// No name or CA to check on loopback: VerifyConnection pins the served leaf instead.
		InsecureSkipVerify: true, //nolint:gosec // verified by verifySelf
		VerifyConnection:   s.verifySelf,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return internal, nil
		},
	}, nil
}

// verifySelf accepts the server only if it presented the leaf this Server serves (or served before the
// latest reload).
func (s *Server) verifySelf(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tls: the listener presented no certificate")
	}
	st := s.state.Load()
	got := cs.PeerCertificates[0].Raw
	if bytes.Equal(got, st.cert.Leaf.Raw) || (st.prevLeaf != nil && bytes.Equal(got, st.prevLeaf.Raw)) {
		return nil
	}
	return fmt.Errorf("tls: the %s listener presented a certificate this process does not serve (serial %s)", s.name, cs.PeerCertificates[0].SerialNumber)
}

// ephemeralClientCert makes a P-256 key and a self-signed client certificate for it. It is not a CA
// (it cannot sign others) and is valid for ten years: it lives as long as the process, and only the
// process knows it.
func ephemeralClientCert(listener string) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("internal %s client key: %w", listener, err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("internal %s client certificate serial: %w", listener, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "platform internal " + listener + " client (ephemeral)"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("internal %s client certificate: %w", listener, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("internal %s client certificate: %w", listener, err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}
