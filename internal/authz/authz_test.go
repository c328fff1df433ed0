package authz_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/authz"
	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/testenv"
)

const (
	tenant, otherTenant = "t1", "t2"
	conv, otherConv     = "01CONVERSATIONT1000000000", "01CONVERSATIONT2000000000"
	msgByMia            = "01MESSAGEBYMIA00000000000A"
)

var secret = []byte("authz-test-secret-0123456789abcdef-0123456789")

// Callers of the table: every kind the issue names.
var callers = []struct {
	name string
	p    *auth.Principal // nil: no token
}{
	{"anonymous", nil},
	{"member", &auth.Principal{Subject: "mia", TenantID: tenant, Roles: []string{"user"}}},
	{"non-member", &auth.Principal{Subject: "nina", TenantID: tenant, Roles: []string{"user"}}},
	{"viewer", &auth.Principal{Subject: "vic", TenantID: tenant, Roles: []string{"user"}}},
	{"admin", &auth.Principal{Subject: "adam", TenantID: tenant, Roles: []string{"user"}}},
	{"owner", &auth.Principal{Subject: "olivia", TenantID: tenant, Roles: []string{"user"}}},
	{"service", &auth.Principal{Subject: "svc-bot", TenantID: tenant, Roles: []string{"service"}}},
	{"operator", &auth.Principal{Subject: "oscar", TenantID: tenant, Roles: []string{"operator"}}},
	{"other-tenant", &auth.Principal{Subject: "tara", TenantID: otherTenant, Roles: []string{"user"}}},
}

// Expected codes per RPC, in the order of callers. OK means the call got past authorization.
const (
	ok = codes.OK
	u  = codes.Unauthenticated
	pd = codes.PermissionDenied
	nf = codes.NotFound
)

var expected = map[string][]codes.Code{
	//                                     anon member non-mem viewer admin owner service operator other-tenant
	"ConversationService/CreateConversation": {u, ok, ok, ok, ok, ok, pd, pd, ok},
	"ConversationService/ListConversations":  {u, ok, ok, ok, ok, ok, pd, pd, ok},
	"ConversationService/GetConversation":    {u, ok, pd, ok, ok, ok, ok, pd, nf},
	"ConversationService/UpdateConversation": {u, pd, pd, pd, ok, ok, pd, pd, nf},
	"ConversationService/DeleteConversation": {u, pd, pd, pd, pd, ok, pd, pd, nf},
	"ConversationService/AddMember":          {u, pd, pd, pd, ok, ok, pd, pd, nf},
	"ConversationService/RemoveMember":       {u, ok, pd, pd, ok, ok, pd, pd, nf}, // removes "mia": herself
	"ConversationService/ListMembers":        {u, ok, pd, ok, ok, ok, pd, pd, nf},
	"MessageService/SendMessage":             {u, ok, pd, pd, ok, ok, ok, pd, nf},
	"MessageService/ListMessages":            {u, ok, pd, ok, ok, ok, ok, pd, nf},
	"MessageService/GetMessage":              {u, ok, pd, ok, ok, ok, ok, pd, nf},
	"MessageService/UpdateMessage":           {u, ok, pd, pd, pd, pd, pd, pd, nf}, // mia's message: author only
	"MessageService/DeleteMessage":           {u, ok, pd, pd, ok, ok, pd, pd, nf}, // author, or owner/admin
	"MessageService/StreamMessages":          {u, ok, pd, ok, ok, ok, ok, pd, nf},
	"MessageService/MarkRead":                {u, ok, pd, ok, ok, ok, ok, pd, nf},
	"DeadLetterService/ListDeadLetters":      {u, pd, pd, pd, pd, pd, pd, ok, pd},
	"DeadLetterService/GetDeadLetter":        {u, pd, pd, pd, pd, pd, pd, ok, pd},
	"DeadLetterService/RetryDeadLetter":      {u, pd, pd, pd, pd, pd, pd, ok, pd},
	"DeadLetterService/RetryDeadLetters":     {u, pd, pd, pd, pd, pd, pd, ok, pd},
	"DeadLetterService/PurgeDeadLetter":      {u, pd, pd, pd, pd, pd, pd, ok, pd},
	"DeadLetterService/PurgeDeadLetters":     {u, pd, pd, pd, pd, pd, pd, ok, pd},
	"DeadLetterService/GetDeadLetterStats":   {u, pd, pd, pd, pd, pd, pd, ok, pd},
	"HealthService/GetHealth":                {ok, ok, ok, ok, ok, ok, ok, ok, ok},
}

// requestFor fills every field an access rule or a REST route reads.
func requestFor(md protoreflect.MethodDescriptor) proto.Message {
	mt, err := protoregistry.GlobalTypes.FindMessageByName(md.Input().FullName())
	if err != nil {
		panic(err)
	}
	m := mt.New().Interface()
	set := map[string]string{
		"conversation_id": conv, "message_id": msgByMia, "user_id": "mia", "id": "dl-1", "title": "t", "body": "b",
	}
	fill(m.ProtoReflect(), set)
	return m
}

func fill(m protoreflect.Message, set map[string]string) {
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		f := fields.Get(i)
		switch {
		case f.Kind() == protoreflect.StringKind && f.Cardinality() != protoreflect.Repeated:
			name := string(f.Name())
			if m.Descriptor().Name() == "Conversation" && name == "id" {
				m.Set(f, protoreflect.ValueOfString(conv))
			} else if m.Descriptor().Name() == "Message" && name == "id" {
				m.Set(f, protoreflect.ValueOfString(msgByMia))
			} else if v, ok := set[name]; ok {
				m.Set(f, protoreflect.ValueOfString(v))
			}
		case f.Kind() == protoreflect.MessageKind && !f.IsList() && !f.IsMap() &&
			(f.Message().Name() == "Conversation" || f.Message().Name() == "Message"):
			fill(m.Mutable(f).Message(), set)
		}
	}
}

type harness struct {
	st       *store.Store
	conn     *grpc.ClientConn
	rest     string
	mongo    *testenv.MongoServer
	redisSrv *testenv.RedisServer
	cache    *authz.MembershipCache
	access   *authz.Interceptor
	reg      *prometheus.Registry
}

func newHarness(t testing.TB) *harness {
	t.Helper()
	return newHarnessWith(t, authz.CacheConfig{}, "")
}

// newHarnessWith builds the harness with a cache configuration and, when redisAddr is not empty, with
// the cache talking to Redis at that address (e.g. through a proxy) instead of the harness's own.
func newHarnessWith(t testing.TB, cfg authz.CacheConfig, redisAddr string) *harness {
	t.Helper()
	ctx := context.Background()
	h := &harness{mongo: testenv.StartMongoServer(t), redisSrv: testenv.StartRedisServer(t), reg: prometheus.NewRegistry()}
	client, err := store.Connect(ctx, h.mongo.URI())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Disconnect(context.Background()) })
	h.st = store.New(client.Database("authz"))
	if err := h.st.EnsureIndexes(ctx); err != nil {
		t.Fatal(err)
	}
	seed(t, h.st)

	opts, err := redis.ParseURL(h.redisSrv.URL())
	if err != nil {
		t.Fatal(err)
	}
	opts.MaxRetries = -1 // a stopped Redis must fail fast in the fallback tests
	if redisAddr != "" {
		opts.Addr = redisAddr
	}
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { _ = rdb.Close() })
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	dir := authz.StoreDirectory{Store: h.st}
	h.cache, err = authz.NewMembershipCache(rdb, dir, cfg, h.reg, logger)
	if err != nil {
		t.Fatal(err)
	}
	authorizer, err := authz.NewAuthorizer(h.cache, dir, h.reg)
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := auth.NewVerifier(auth.Config{HMACSecret: secret})
	if err != nil {
		t.Fatal(err)
	}
	access := authz.NewInterceptor(verifier, authorizer)
	h.access = access
	gs := grpc.NewServer(
		grpc.ChainUnaryInterceptor(access.AuthenticateUnary(), access.AuthorizeUnary()),
		grpc.ChainStreamInterceptor(access.AuthenticateStream(), access.AuthorizeStream()),
	)
	for _, sd := range []grpc.ServiceDesc{platformv1.ConversationService_ServiceDesc, platformv1.MessageService_ServiceDesc,
		platformv1.DeadLetterService_ServiceDesc, platformv1.HealthService_ServiceDesc} {
		desc := succeeding(sd)
		gs.RegisterService(&desc, struct{}{})
	}
	if err := access.LoadRules(gs.GetServiceInfo()); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	h.conn, err = grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.conn.Close() })

	// REST reaches the same server through grpc-gateway, as in production.
	mux := runtime.NewServeMux()
	for _, reg := range []func(context.Context, *runtime.ServeMux, *grpc.ClientConn) error{
		platformv1.RegisterConversationServiceHandler, platformv1.RegisterMessageServiceHandler,
		platformv1.RegisterDeadLetterServiceHandler, platformv1.RegisterHealthServiceHandler,
	} {
		if err := reg(ctx, mux, h.conn); err != nil {
			t.Fatal(err)
		}
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	h.rest = srv.URL
	return h
}

// succeeding returns a copy of sd whose handlers decode the request, run the interceptor and succeed:
// whatever code a call gets comes from authentication and authorization alone.
func succeeding(sd grpc.ServiceDesc) grpc.ServiceDesc {
	out := sd
	out.HandlerType = (*any)(nil)
	out.Methods = nil
	out.Streams = nil
	svc, _ := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(sd.ServiceName))
	methods := svc.(protoreflect.ServiceDescriptor).Methods()
	for _, m := range sd.Methods {
		md := methods.ByName(protoreflect.Name(m.MethodName))
		full := "/" + sd.ServiceName + "/" + m.MethodName
		out.Methods = append(out.Methods, grpc.MethodDesc{MethodName: m.MethodName,
			Handler: func(srv any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
				req := newMessage(md.Input())
				if err := dec(req); err != nil {
					return nil, err
				}
				h := func(context.Context, any) (any, error) { return newMessage(md.Output()), nil }
				if icpt == nil {
					return h(ctx, req)
				}
				return icpt(ctx, req, &grpc.UnaryServerInfo{Server: srv, FullMethod: full}, h)
			}})
	}
	for _, s := range sd.Streams {
		md := methods.ByName(protoreflect.Name(s.StreamName))
		s.Handler = func(_ any, stream grpc.ServerStream) error { return stream.RecvMsg(newMessage(md.Input())) }
		out.Streams = append(out.Streams, s)
	}
	return out
}

func newMessage(d protoreflect.MessageDescriptor) proto.Message {
	mt, err := protoregistry.GlobalTypes.FindMessageByName(d.FullName())
	if err != nil {
		panic(err)
	}
	return mt.New().Interface()
}

func seed(t testing.TB, st *store.Store) {
	t.Helper()
	ctx := context.Background()
	members := []store.Member{
		{TenantID: tenant, ConversationID: conv, UserID: "olivia", Role: store.RoleOwner},
		{TenantID: tenant, ConversationID: conv, UserID: "adam", Role: store.RoleAdmin},
		{TenantID: tenant, ConversationID: conv, UserID: "mia", Role: store.RoleMember},
		{TenantID: tenant, ConversationID: conv, UserID: "vic", Role: store.RoleViewer},
	}
	if _, err := st.Conversations.Create(ctx, store.Conversation{ID: conv, TenantID: tenant, Title: "t1 conv", CreatorID: "olivia"}, members); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Conversations.Create(ctx, store.Conversation{ID: otherConv, TenantID: otherTenant, Title: "t2 conv", CreatorID: "tara"},
		[]store.Member{{TenantID: otherTenant, ConversationID: otherConv, UserID: "tara", Role: store.RoleOwner}}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if _, _, err := st.Messages.InsertMany(ctx, []store.Message{{ID: msgByMia, TenantID: tenant, ConversationID: conv,
		SenderID: "mia", Body: "hi", State: store.MessagePersisted, CreateTime: now, PersistTime: now, UpdateTime: now, Version: 1}}); err != nil {
		t.Fatal(err)
	}
}

func token(t testing.TB, p *auth.Principal) string {
	t.Helper()
	if p == nil {
		return ""
	}
	tok, err := auth.MintHS256(secret, *p, time.Hour, "", "")
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestAccessMatrix is the exhaustive table: every platform.v1 RPC × every kind of caller, over gRPC and
// through the REST gateway, with the same expectations. An RPC missing from `expected` fails the test.
func TestAccessMatrix(t *testing.T) {
	h := newHarness(t)
	methods := 0
	protoregistry.GlobalFiles.RangeFilesByPackage("platform.v1", func(fd protoreflect.FileDescriptor) bool {
		for i := 0; i < fd.Services().Len(); i++ {
			svc := fd.Services().Get(i)
			for j := 0; j < svc.Methods().Len(); j++ {
				md := svc.Methods().Get(j)
				methods++
				key := string(svc.Name()) + "/" + string(md.Name())
				want, ok := expected[key]
				if !ok {
					t.Errorf("%s is not in the expectation table: add its row", key)
					continue
				}
				for c, caller := range callers {
					tok := token(t, caller.p)
					t.Run(key+"/"+caller.name+"/grpc", func(t *testing.T) {
						if got := callGRPC(t, h.conn, md, tok); got != want[c] {
							t.Errorf("gRPC %s as %s = %v, want %v", key, caller.name, got, want[c])
						}
					})
					t.Run(key+"/"+caller.name+"/rest", func(t *testing.T) {
						if got, wantHTTP := callREST(t, h.rest, md, tok), runtime.HTTPStatusFromCode(want[c]); got != wantHTTP {
							t.Errorf("REST %s as %s = %d, want %d", key, caller.name, got, wantHTTP)
						}
					})
				}
			}
		}
		return true
	})
	if methods != len(expected) {
		t.Errorf("the table has %d rows for %d RPCs", len(expected), methods)
	}
}

func callGRPC(t *testing.T, conn *grpc.ClientConn, md protoreflect.MethodDescriptor, tok string) codes.Code {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if tok != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}
	full := fmt.Sprintf("/%s/%s", md.Parent().FullName(), md.Name())
	req := requestFor(md)
	if !md.IsStreamingServer() {
		return status.Code(conn.Invoke(ctx, full, req, newMessage(md.Output())))
	}
	stream, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, full)
	if err != nil {
		return status.Code(err)
	}
	if err := stream.SendMsg(req); err != nil {
		return status.Code(err)
	}
	_ = stream.CloseSend()
	for {
		if err := stream.RecvMsg(newMessage(md.Output())); err != nil {
			if errors.Is(err, io.EOF) {
				return codes.OK
			}
			return status.Code(err)
		}
	}
}

// callREST builds the call from the method's google.api.http annotation: path variables from the
// request, the body per the rule.
func callREST(t *testing.T, base string, md protoreflect.MethodDescriptor, tok string) int {
	t.Helper()
	rule := proto.GetExtension(md.Options(), annotations.E_Http).(*annotations.HttpRule)
	var verb, pattern string
	switch p := rule.GetPattern().(type) {
	case *annotations.HttpRule_Get:
		verb, pattern = http.MethodGet, p.Get
	case *annotations.HttpRule_Post:
		verb, pattern = http.MethodPost, p.Post
	case *annotations.HttpRule_Patch:
		verb, pattern = http.MethodPatch, p.Patch
	case *annotations.HttpRule_Delete:
		verb, pattern = http.MethodDelete, p.Delete
	default:
		t.Fatalf("%s: unsupported http rule %v", md.FullName(), rule)
	}
	req := requestFor(md)
	path := pattern
	for strings.Contains(path, "{") {
		i, j := strings.Index(path, "{"), strings.Index(path, "}")
		path = path[:i] + valueAt(req.ProtoReflect(), path[i+1:j]) + path[j+1:]
	}
	var body io.Reader
	switch rule.GetBody() {
	case "":
	case "*":
		b, _ := protojson.Marshal(req)
		body = strings.NewReader(string(b))
	default:
		f := req.ProtoReflect().Descriptor().Fields().ByName(protoreflect.Name(rule.GetBody()))
		b, _ := protojson.Marshal(req.ProtoReflect().Get(f).Message().Interface())
		body = strings.NewReader(string(b))
	}
	r, _ := http.NewRequest(verb, base+path, body)
	if tok != "" {
		r.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatalf("%s %s: %v", verb, path, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

func valueAt(m protoreflect.Message, path string) string {
	parts := strings.Split(path, ".")
	for _, p := range parts[:len(parts)-1] {
		m = m.Get(m.Descriptor().Fields().ByName(protoreflect.Name(p))).Message()
	}
	return m.Get(m.Descriptor().Fields().ByName(protoreflect.Name(parts[len(parts)-1]))).String()
}
