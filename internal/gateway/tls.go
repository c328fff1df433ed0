package gateway

import (
	"crypto/tls"
	"errors"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// grpcServerTLS returns the gRPC server's transport credentials: TLS with opts.GRPCTLS, none (plain
// text) without it.
func grpcServerTLS(opts Options) []grpc.ServerOption {
	if opts.GRPCTLS == nil {
		return nil
	}
	return []grpc.ServerOption{grpc.Creds(credentials.NewTLS(opts.GRPCTLS))}
}

// internalCredentials are the REST gateway's credentials on its connection to the gRPC listener:
// opts.InternalTLS when the listener serves TLS, plain text when it does not.
func internalCredentials(opts Options) (credentials.TransportCredentials, error) {
	if opts.GRPCTLS == nil {
		return insecure.NewCredentials(), nil
	}
	if opts.InternalTLS == nil {
		return nil, errors.New("gateway: GRPCTLS is set without InternalTLS: the REST gateway could not reach the gRPC listener")
	}
	return credentials.NewTLS(opts.InternalTLS), nil
}

// listenHTTPTLS wraps the HTTP listener in TLS when opts.HTTPTLS is set (HTTP/2 when it offers "h2" by ALPN).
func listenHTTPTLS(opts Options, l net.Listener) net.Listener {
	if opts.HTTPTLS == nil {
		return l
	}
	return tls.NewListener(l, opts.HTTPTLS)
}
