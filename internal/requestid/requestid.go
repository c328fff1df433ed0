// Package requestid gives every call a request id: the caller's `x-request-id` when it sends a sane one,
// else a fresh ULID. The id travels in the context, back to the caller as a response header, and (as
// later work lands) into Kafka headers and stored documents, so one call can be traced end to end.
package requestid

import (
	"context"
	"crypto/rand"

	middleware "github.com/grpc-ecosystem/go-grpc-middleware/v2"
	"github.com/oklog/ulid/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// Header is the metadata key (and, through the gateway, the HTTP header) carrying the id.
const Header = "x-request-id"

const maxLen = 128

type ctxKey struct{}

// From returns the request id of ctx, or "".
func From(ctx context.Context) string {
	id, _ := ctx.Value(ctxKey{}).(string)
	return id
}

// With returns ctx carrying id.
func With(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// New returns a fresh id.
func New() string { return ulid.MustNew(ulid.Now(), rand.Reader).String() }

// fromMetadata takes the caller's id if it is short printable ASCII; anything else could be a log
// injection attempt, so it is replaced.
func fromMetadata(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get(Header) {
		if valid(v) {
			return v
		}
	}
	return New()
}

func valid(s string) bool {
	if s == "" || len(s) > maxLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// UnaryServerInterceptor attaches the request id to the context and the response header.
func UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		id := fromMetadata(ctx)
		_ = grpc.SetHeader(ctx, metadata.Pairs(Header, id))
		return handler(With(ctx, id), req)
	}
}

// StreamServerInterceptor attaches the request id to the stream's context and header.
func StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		id := fromMetadata(ss.Context())
		_ = ss.SetHeader(metadata.Pairs(Header, id))
		wrapped := middleware.WrapServerStream(ss)
		wrapped.WrappedContext = With(ss.Context(), id)
		return handler(srv, wrapped)
	}
}
