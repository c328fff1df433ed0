package authz_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/testenv"
)

// BenchmarkUnaryInterceptor is the CPU cost and allocations of the access interceptor alone, in process
// (no network), for a member with a warm cache: token cache hit, in-process membership hit. The latency
// ratio against a call without interceptors is measured by internal/benchmark/latency (MeasureAuthz).
func BenchmarkUnaryInterceptor(b *testing.B) {
	h := newHarness(b)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.cache.Run(ctx); close(done) }()
	b.Cleanup(func() { stop(); <-done })
	testenv.Eventually(b, "the invalidation subscription", 10*time.Second, h.cache.Subscribed)
	authn, authorize := h.access.AuthenticateUnary(), h.access.AuthorizeUnary()
	// The two interceptors chained as the gateway chains them: authenticate, then authorize.
	icpt := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		return authn(ctx, req, info, func(ctx context.Context, req any) (any, error) {
			return authorize(ctx, req, info, handler)
		})
	}
	in := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+token(b, &mia)))
	req := &platformv1.GetConversationRequest{ConversationId: conv}
	info := &grpc.UnaryServerInfo{FullMethod: platformv1.ConversationService_GetConversation_FullMethodName}
	handler := func(context.Context, any) (any, error) { return nil, nil }
	if _, err := icpt(in, req, info, handler); err != nil { // warms both caches
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := icpt(in, req, info, handler); err != nil {
			b.Fatal(err)
		}
	}
}
