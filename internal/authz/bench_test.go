package authz_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
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
	for deadline := time.Now().Add(10 * time.Second); !h.cache.Subscribed(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatal("invalidation subscription not up")
		}
	}
	icpt := h.access.Unary()
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
