package gateway

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/encoding/protojson"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/ratelimit"
	"github.com/msgplatform/platform/internal/requestid"
)

// newRESTGateway returns the grpc-gateway mux. It reaches the gRPC server over a client connection
// (never RegisterXxxHandlerServer, which would skip the interceptors), so REST and gRPC share auth,
// logging and metrics.
func newRESTGateway(ctx context.Context, grpcTarget string, metrics *restMetrics, edge *restEdge, sse *sseStreams, creds credentials.TransportCredentials, extra ...grpc.DialOption) (http.Handler, *grpc.ClientConn, error) {
	conn, err := grpc.NewClient(grpcTarget, append([]grpc.DialOption{grpc.WithTransportCredentials(creds),
		// The largest legal response (a page of the largest messages) must come through.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxResponseBytes))}, extra...)...)
	if err != nil {
		return nil, nil, fmt.Errorf("gateway connection to %s: %w", grpcTarget, err)
	}
	mux := runtime.NewServeMux(
		// protojson with lowerCamelCase names and enum names; unknown fields are a 400, not silently
		// dropped, so a typo in a request body is caught.
		runtime.WithMarshalerOption(runtime.MIMEWildcard, &runtime.HTTPBodyMarshaler{Marshaler: &runtime.JSONPb{
			MarshalOptions:   protojson.MarshalOptions{EmitUnpopulated: true},
			UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
		}}),
		runtime.WithIncomingHeaderMatcher(incomingHeader),
		runtime.WithOutgoingHeaderMatcher(outgoingHeader),
		// Streams send their headers as soon as the gRPC call has (once it is authorized), not with the
		// first item; server-sent events (sse.go) take the stream route's text/event-stream requests.
		runtime.WithForwardResponseOption(streamStarted),
		runtime.WithMiddlewares(metrics.middleware, sse.credentials, edge.middleware, sse.serve),
	)
	edge.mux = mux
	sse.mux, sse.client = mux, platformv1.NewMessageServiceClient(conn)
	for _, register := range []func(context.Context, *runtime.ServeMux, *grpc.ClientConn) error{
		platformv1.RegisterConversationServiceHandler,
		platformv1.RegisterMessageServiceHandler,
		platformv1.RegisterDeadLetterServiceHandler,
		platformv1.RegisterHealthServiceHandler,
	} {
		if err := register(ctx, mux, conn); err != nil {
			_ = conn.Close()
			return nil, nil, fmt.Errorf("register REST handlers: %w", err)
		}
	}
	return mux, conn, nil
}

// incomingHeader forwards X-Request-Id to gRPC metadata besides the defaults (Authorization arrives as
// `authorization`, as grpc-gateway always does).
func incomingHeader(key string) (string, bool) {
	if strings.EqualFold(key, requestid.Header) {
		return requestid.Header, true
	}
	return runtime.DefaultHeaderMatcher(key)
}

// outgoingHeader returns the request id as X-Request-Id and the quota's metadata (ratelimit.Header*) as
// X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset and, on a refusal (RESOURCE_EXHAUSTED, a
// 429), Retry-After; other gRPC headers keep the Grpc-Metadata- prefix.
func outgoingHeader(key string) (string, bool) {
	if key == StreamStartedHeader { // the stream's start is the response's status
		return "", false
	}
	if key == requestid.Header {
		return "X-Request-Id", true
	}
	if h, ok := rateLimitHeaders[key]; ok {
		return h, true
	}
	return runtime.MetadataHeaderPrefix + key, true
}

// rateLimitHeaders are the HTTP names of the quota's response metadata.
var rateLimitHeaders = map[string]string{
	ratelimit.HeaderLimit:      "X-RateLimit-Limit",
	ratelimit.HeaderRemaining:  "X-RateLimit-Remaining",
	ratelimit.HeaderReset:      "X-RateLimit-Reset",
	ratelimit.HeaderRetryAfter: "Retry-After",
}
