package tlsconfig

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync/atomic"
)

// Client is the TLS of an outgoing connection (the Kafka clients'): servers are verified against the CA
// bundle in Files.CAFile, or the system roots without one; Files.CertFile and Files.KeyFile, when set,
// are the client certificate for mutual TLS. Both reload like a listener's.
//
// Every connection gets a tls.Config of its own (Config, Dialer), holding the material current when it
// is dialled, so crypto/tls verifies the server itself: the chain to a root, server-auth usage and the
// name or IP address dialled. (A shared config with a VerifyConnection callback cannot do the last:
// crypto/tls does not tell the callback an IP address that was dialled, and brokers often advertise one.)
type Client struct {
	cur atomic.Pointer[material] // the files' material; never nil
}

// Client loads a client's TLS files (none is fine: system roots, no client certificate) and reloads
// them from then on. name labels the metrics and logs ("kafka").
func (r *Reloader) Client(name string, f Files) (*Client, error) {
	if (f.CertFile == "") != (f.KeyFile == "") {
		return nil, fmt.Errorf("%s_CERT_FILE and %s_KEY_FILE: set both or neither", f.Setting, f.Setting)
	}
	c := &Client{}
	c.cur.Store(&material{})
	if f.CertFile == "" && f.CAFile == "" {
		return c, nil // system roots, no client certificate: no file to watch
	}
	if err := r.add(&endpoint{name: name, files: f, caName: f.Setting + "_CA_FILE", install: func(m *material) { c.cur.Store(m) }}); err != nil {
		return nil, err
	}
	return c, nil
}

// Config returns the tls.Config of one connection to serverName (a DNS name or an IP address, which
// the server's certificate must name), with the CA bundle and client certificate current now.
func (c *Client) Config(serverName string) *tls.Config {
	m := c.cur.Load()
	cfg := &tls.Config{MinVersion: minVersion, ServerName: serverName, RootCAs: m.cas}
	if m.cert != nil {
		cfg.Certificates = []tls.Certificate{*m.cert}
	}
	return cfg
}

// Dialer returns a dial function with net.Dialer's DialContext signature (what kgo.Dialer takes) that
// connects through d and then shakes hands with Config(the host dialled).
func (c *Client) Dialer(d *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("tls dial %s: %w", addr, err)
		}
		return (&tls.Dialer{NetDialer: d, Config: c.Config(host)}).DialContext(ctx, network, addr)
	}
}
