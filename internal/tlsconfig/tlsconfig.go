// Package tlsconfig builds the *tls.Config of the platform's listeners (gRPC, HTTP) and of its Kafka
// clients from PEM files, and keeps them current: certificates and CA bundles are read again when their
// files change (polled) and on demand (Reload, which the composition root calls on SIGHUP). A reload
// that fails (unreadable file, bad PEM, a key that does not match) keeps what was loaded before and
// says so in the log and in platform_tls_reloads_total{result="failure"}. Listeners and clients never
// restart: every handshake uses the material current when it starts (a listener's GetConfigForClient, a
// client's per-dial config), so new connections see the new certificate and open ones keep theirs.
package tlsconfig

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/msgplatform/platform/internal/observability"
)

// DefaultPollInterval is how often Run looks at the files. Reading three small files is cheap, and a
// rotated certificate is served within seconds.
const DefaultPollInterval = 5 * time.Second

// minVersion is the oldest protocol version offered or accepted: TLS 1.2 (HTTP/2 requires it too).
const minVersion = tls.VersionTLS12

// Files are the PEM files of one TLS endpoint.
type Files struct {
	// Setting is the prefix of the environment variables that named the files, so errors name what to
	// fix: "GRPC_TLS" stands for GRPC_TLS_CERT_FILE, GRPC_TLS_KEY_FILE and GRPC_TLS_CLIENT_CA_FILE (a
	// client's CA is <Setting>_CA_FILE).
	Setting string
	// CertFile holds the certificate, followed by its intermediates; KeyFile its private key. A server
	// needs both; a client may have neither (no client certificate).
	CertFile, KeyFile string
	// CAFile: for a server, the CA bundle its clients' certificates must chain to (mutual TLS; empty:
	// no client certificates); for a client, the CA bundle verifying the server (empty: system roots).
	CAFile string
}

// material is what the files held when last loaded successfully.
type material struct {
	cert *tls.Certificate // nil for a client without a certificate; Leaf is set
	cas  *x509.CertPool   // nil without CAFile
}

// endpoint is one watched set of files and what to do with what they hold.
type endpoint struct {
	name    string // the metric label: "grpc", "http", "kafka"
	files   Files
	caName  string // the CA file's setting: <Setting>_CLIENT_CA_FILE for a server, <Setting>_CA_FILE for a client
	install func(*material)
	// seen is the fingerprint of the files (or of the error reading them) at the last attempt, so a poll
	// tries a changed set once, and a broken one is not reported again until it changes.
	seen [sha256.Size]byte
}

// Reloader loads the TLS material of a process's endpoints and reloads it. It is a
// prometheus.Collector of platform_tls_reloads_total and platform_tls_certificate_expiry_timestamp_seconds.
type Reloader struct {
	logger *slog.Logger
	// PollInterval is how often Run looks at the files; DefaultPollInterval when zero. Set it before Run.
	PollInterval time.Duration

	reloads *prometheus.CounterVec
	expiry  *prometheus.GaugeVec

	mu        sync.Mutex // serialises loads: polls, Reload and new endpoints
	endpoints []*endpoint
}

// New returns a Reloader with no endpoint yet, logging to logger. Its metrics are registered with reg;
// with a nil reg, register the Reloader (a prometheus.Collector) later.
func New(reg prometheus.Registerer, logger *slog.Logger) (*Reloader, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &Reloader{
		logger: logger,
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: observability.Namespace, Subsystem: "tls", Name: "reloads_total",
			Help: "Reloads of TLS certificates and CA bundles after their files changed or on request, by endpoint (listener grpc, http, or the kafka client) and result (success, failure: the previous material stays).",
		}, []string{"listener", "result"}),
		expiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: observability.Namespace, Subsystem: "tls", Name: "certificate_expiry_timestamp_seconds",
			Help: "When the certificate an endpoint presents now expires (its NotAfter), as a Unix time.",
		}, []string{"listener"}),
	}
	if reg != nil {
		if err := reg.Register(r); err != nil {
			return nil, fmt.Errorf("register tls metrics: %w", err)
		}
	}
	return r, nil
}

// Describe implements prometheus.Collector.
func (r *Reloader) Describe(ch chan<- *prometheus.Desc) {
	r.reloads.Describe(ch)
	r.expiry.Describe(ch)
}

// Collect implements prometheus.Collector.
func (r *Reloader) Collect(ch chan<- prometheus.Metric) {
	r.reloads.Collect(ch)
	r.expiry.Collect(ch)
}

// Watching reports whether any endpoint has files to reload.
func (r *Reloader) Watching() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.endpoints) > 0
}

// add loads e's files for the first time (a failure is returned: the process should not start) and
// watches them from then on.
func (r *Reloader) add(e *endpoint) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	m, sum, err := e.load()
	if err != nil {
		return err
	}
	e.seen = sum
	e.install(m)
	r.observe(e, m)
	for _, result := range []string{"success", "failure"} {
		r.reloads.WithLabelValues(e.name, result) // present at 0, so an alert on failures has a series
	}
	r.endpoints = append(r.endpoints, e)
	return nil
}

// Run looks at the files every PollInterval and reloads those that changed, and reloads every endpoint
// whenever reload delivers (the composition root passes SIGHUP), until ctx ends. It returns nil.
func (r *Reloader) Run(ctx context.Context, reload <-chan os.Signal) error {
	interval := r.PollInterval
	if interval <= 0 {
		interval = DefaultPollInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			_ = r.check(false)
		case sig := <-reload:
			r.logger.Info("reloading TLS certificates", "signal", sig.String())
			_ = r.Reload()
		}
	}
}

// Reload reloads every endpoint now, changed or not. It returns the failures (each endpoint that failed
// keeps its previous material).
func (r *Reloader) Reload() error { return r.check(true) }

// check reloads the endpoints whose files changed since the last attempt, or all of them when force.
func (r *Reloader) check(force bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for _, e := range r.endpoints {
		c, sum, err := e.read()
		if !force && sum == e.seen {
			continue
		}
		e.seen = sum
		var m *material
		if err == nil {
			m, err = e.parse(c)
		}
		if err != nil {
			r.reloads.WithLabelValues(e.name, "failure").Inc()
			r.logger.Error("TLS reload failed; still using the previous certificate", "listener", e.name, "error", err)
			errs = append(errs, err)
			continue
		}
		e.install(m)
		r.observe(e, m)
		r.reloads.WithLabelValues(e.name, "success").Inc()
		attrs := []any{"listener", e.name}
		if m.cert != nil {
			attrs = append(attrs, "serial", m.cert.Leaf.SerialNumber.String(), "subject", m.cert.Leaf.Subject.String(),
				"not_after", m.cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
		}
		r.logger.Info("TLS certificates reloaded", attrs...)
	}
	return errors.Join(errs...)
}

func (r *Reloader) observe(e *endpoint, m *material) {
	if m.cert != nil {
		r.expiry.WithLabelValues(e.name).Set(float64(m.cert.Leaf.NotAfter.Unix()))
	}
}

// contents are an endpoint's files as read; an empty path reads as nil.
type contents struct{ cert, key, ca []byte }

// read reads e's files. The fingerprint covers their contents, or the error reading them, so an
// unchanged set (good or bad) is recognised without parsing it again.
func (e *endpoint) read() (contents, [sha256.Size]byte, error) {
	h := sha256.New()
	var errs []error
	read := func(setting, path string) []byte {
		if path == "" {
			_, _ = fmt.Fprintf(h, "%s:-;", setting)
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			err = fmt.Errorf("%s: %w", setting, err)
			_, _ = fmt.Fprintf(h, "%s:error:%s;", setting, err)
			errs = append(errs, err)
			return nil
		}
		_, _ = fmt.Fprintf(h, "%s:%d:", setting, len(b))
		h.Write(b)
		return b
	}
	c := contents{
		cert: read(e.files.Setting+"_CERT_FILE", e.files.CertFile),
		key:  read(e.files.Setting+"_KEY_FILE", e.files.KeyFile),
		ca:   read(e.caName, e.files.CAFile),
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return c, sum, errors.Join(errs...)
}

// parse turns what read returned into material.
func (e *endpoint) parse(c contents) (*material, error) {
	f := e.files
	certName, keyName := f.Setting+"_CERT_FILE", f.Setting+"_KEY_FILE"
	m := &material{}
	if f.CertFile != "" || f.KeyFile != "" {
		cert, err := tls.X509KeyPair(c.cert, c.key)
		if err != nil {
			return nil, fmt.Errorf("%s %s with %s %s: %w", certName, f.CertFile, keyName, f.KeyFile, err)
		}
		if cert.Leaf == nil { // X509KeyPair sets it; keep the invariant should that ever change
			if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
				return nil, fmt.Errorf("%s %s: %w", certName, f.CertFile, err)
			}
		}
		m.cert = &cert
	}
	if f.CAFile != "" {
		m.cas = x509.NewCertPool()
		if !m.cas.AppendCertsFromPEM(c.ca) {
			return nil, fmt.Errorf("%s %s: no PEM certificate in it", e.caName, f.CAFile)
		}
	}
	return m, nil
}

// load reads and parses e's files.
func (e *endpoint) load() (*material, [sha256.Size]byte, error) {
	c, sum, err := e.read()
	if err != nil {
		return nil, sum, err
	}
	m, err := e.parse(c)
	return m, sum, err
}
