package latency

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/timestamppb"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/authz"
	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/testenv"
)

// AuthzResult is authz_latency_ratio and the two p50s behind it.
type AuthzResult struct {
	Ratio               float64 // median over rounds of p50(authorized) / p50(no interceptors); goal ≤ 1.10
	P50AuthorizedMicros float64 // GetConversation as a member through the access interceptor, warm cache
	P50PlainMicros      float64 // the same handler on a server without interceptors
	Rounds, Calls       int
}

// MeasureAuthz measures what the access interceptor adds to a unary call: GetConversation as a member
// through authz.Interceptor (the production chain's access interceptor: bearer JWT verification and the
// membership lookup through the real MembershipCache on redis-server, warmed, its invalidation
// subscription up), against the same handler on an identical gRPC server with no interceptor, both over
// loopback gRPC. The handler itself does no I/O, so the ratio isolates the interceptor's cost.
func MeasureAuthz(tb testing.TB, rounds, calls int) (AuthzResult, error) {
	s, err := newAuthzSetup(tb)
	if err != nil {
		return AuthzResult{}, err
	}
	return s.measure(rounds, calls)
}

func (s *authzSetup) measure(rounds, calls int) (AuthzResult, error) {
	req := &platformv1.GetConversationRequest{ConversationId: s.conversation}
	p, err := alternate(rounds, calls,
		func() error { _, err := s.authorized.GetConversation(s.member, req); return err },
		func() error { _, err := s.plain.GetConversation(context.Background(), req); return err },
	)
	if err != nil {
		return AuthzResult{}, fmt.Errorf("measure authz: %w", err)
	}
	return AuthzResult{Ratio: p.Ratio, P50AuthorizedMicros: p.P50A, P50PlainMicros: p.P50B, Rounds: rounds, Calls: calls}, nil
}

// authzSetup is the two servers of MeasureAuthz and what a test needs to check them.
type authzSetup struct {
	authorized, plain platformv1.ConversationServiceClient
	member, nonMember context.Context // outgoing contexts carrying each caller's bearer token
	conversation      string
	cache             *authz.MembershipCache
	reg               *prometheus.Registry
}

const (
	benchTenant    = "bench-tenant"
	benchMember    = "bench-member"
	benchNonMember = "bench-outsider"
)

func newAuthzSetup(tb testing.TB) (*authzSetup, error) {
	tb.Helper()
	ctx := context.Background()
	uri := testenv.SharedMongo(tb)
	client, err := store.Connect(ctx, uri)
	if err != nil {
		return nil, fmt.Errorf("connect mongodb: %w", err)
	}
	tb.Cleanup(func() { _ = client.Disconnect(context.Background()) })
	st := store.New(client.Database(testenv.MongoDatabase(tb, uri)))
	if err := st.EnsureIndexes(ctx); err != nil {
		return nil, fmt.Errorf("mongodb indexes: %w", err)
	}
	s := &authzSetup{conversation: "01BENCHCONVERSATION0000000", reg: prometheus.NewRegistry()}
	if _, err := st.Conversations.Create(ctx, store.Conversation{ID: s.conversation, TenantID: benchTenant, Title: "bench", CreatorID: benchMember},
		[]store.Member{{TenantID: benchTenant, ConversationID: s.conversation, UserID: benchMember, Role: store.RoleMember}}); err != nil {
		return nil, fmt.Errorf("seed conversation: %w", err)
	}

	opts, err := redis.ParseURL(testenv.Redis(tb))
	if err != nil {
		return nil, err
	}
	rdb := redis.NewClient(opts)
	tb.Cleanup(func() { _ = rdb.Close() })
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	dir := authz.StoreDirectory{Store: st}
	if s.cache, err = authz.NewMembershipCache(rdb, dir, authz.CacheConfig{}, s.reg, logger); err != nil {
		return nil, err
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.cache.Run(runCtx); close(done) }()
	tb.Cleanup(func() { stop(); <-done })
	authorizer, err := authz.NewAuthorizer(s.cache, dir, s.reg)
	if err != nil {
		return nil, err
	}
	secret := []byte(rand.Text() + rand.Text())
	verifier, err := auth.NewVerifier(auth.Config{HMACSecret: secret})
	if err != nil {
		return nil, err
	}
	access := authz.NewInterceptor(verifier, authorizer)

	authConn, err := serve(tb, func(gs *grpc.Server) error { return access.LoadRules(gs.GetServiceInfo()) }, grpc.ChainUnaryInterceptor(access.AuthenticateUnary(), access.AuthorizeUnary()))
	if err != nil {
		return nil, err
	}
	plainConn, err := serve(tb, nil)
	if err != nil {
		return nil, err
	}
	s.authorized = platformv1.NewConversationServiceClient(authConn)
	s.plain = platformv1.NewConversationServiceClient(plainConn)
	for _, c := range []struct {
		ctx *context.Context
		sub string
	}{{&s.member, benchMember}, {&s.nonMember, benchNonMember}} {
		tok, err := auth.MintHS256(secret, auth.Principal{Subject: c.sub, TenantID: benchTenant, Roles: []string{"user"}}, time.Hour, "", "")
		if err != nil {
			return nil, err
		}
		*c.ctx = metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
	}

	// Warm: the subscription up (so the in-process cache is in use), then one call fills the caches.
	deadline := time.Now().Add(10 * time.Second)
	for !s.cache.Subscribed() {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("membership cache invalidation subscription not up after 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := s.authorized.GetConversation(s.member, &platformv1.GetConversationRequest{ConversationId: s.conversation}); err != nil {
		return nil, fmt.Errorf("warm-up call as a member: %w", err)
	}
	return s, nil
}

// serve starts a gRPC server with the fixed handler and returns a client connection to it.
func serve(tb testing.TB, beforeServe func(*grpc.Server) error, opts ...grpc.ServerOption) (*grpc.ClientConn, error) {
	gs := grpc.NewServer(opts...)
	platformv1.RegisterConversationServiceServer(gs, fixedConversations{})
	if beforeServe != nil {
		if err := beforeServe(gs); err != nil {
			return nil, err
		}
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go func() { _ = gs.Serve(lis) }()
	tb.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	tb.Cleanup(func() { _ = conn.Close() })
	return conn, nil
}

// fixedConversations answers GetConversation with a fixed conversation and no I/O.
type fixedConversations struct {
	platformv1.UnimplementedConversationServiceServer
}

var fixedTime = timestamppb.New(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))

func (fixedConversations) GetConversation(_ context.Context, req *platformv1.GetConversationRequest) (*platformv1.GetConversationResponse, error) {
	return &platformv1.GetConversationResponse{Conversation: &platformv1.Conversation{
		Id: req.GetConversationId(), Title: "bench", CreatorId: benchMember, MemberCount: 1,
		CreateTime: fixedTime, UpdateTime: fixedTime,
	}}, nil
}
