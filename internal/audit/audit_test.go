package audit_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/audit"
	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/authz"
	"github.com/msgplatform/platform/internal/requestid"
	"github.com/msgplatform/platform/internal/testenv"
)

// tokens maps the bearer tokens of the tests to their principals.
var tokens = map[string]auth.Principal{
	"tok-alice":   {Subject: "alice", TenantID: "t1", Roles: []string{"user"}},
	"tok-svc":     {Subject: "svc-bot", TenantID: "t1", Roles: []string{"service"}},
	"tok-oscar":   {Subject: "oscar", TenantID: "t1", Roles: []string{"operator"}},
	"tok-pat":     {Subject: "pat", TenantID: "t0", Roles: []string{"platform_operator"}},
	"tok-both":    {Subject: "bea", TenantID: "t1", Roles: []string{"user", "operator"}},
	"tok-nobody":  {Subject: "nobody", TenantID: "t1"},
	"tok-manyrol": {Subject: "m", TenantID: "t1", Roles: strings.Split(strings.Repeat("r,", 40)+strings.Repeat("x", 200), ",")},
}

type verifier struct{}

func (verifier) Verify(token string) (auth.Principal, error) {
	p, ok := tokens[token]
	if !ok {
		return auth.Principal{}, errors.New("unknown token")
	}
	return p, nil
}

// chain is the part of the gateway's chain the audit depends on: authentication (which puts the rule and
// the principal in the context), then the audit; the handler stands for the access check and the RPC.
type chain struct {
	access *authz.Interceptor
	rec    *audit.Recorder
	logs   *testenv.LockedBuffer
}

func newChain(t *testing.T, level slog.Level) *chain {
	t.Helper()
	s := grpc.NewServer()
	platformv1.RegisterConversationServiceServer(s, platformv1.UnimplementedConversationServiceServer{})
	platformv1.RegisterMessageServiceServer(s, platformv1.UnimplementedMessageServiceServer{})
	platformv1.RegisterDeadLetterServiceServer(s, platformv1.UnimplementedDeadLetterServiceServer{})
	platformv1.RegisterHealthServiceServer(s, platformv1.UnimplementedHealthServiceServer{})
	access := authz.NewInterceptor(verifier{}, nil)
	if err := access.LoadRules(s.GetServiceInfo()); err != nil {
		t.Fatal(err)
	}
	logs := &testenv.LockedBuffer{}
	return &chain{access: access, logs: logs,
		rec: audit.New(slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: level})))}
}

// incoming is the context of a call by token, as the server sees it.
func incoming(token string) context.Context {
	md := metadata.Pairs("x-forwarded-for", "203.0.113.7")
	if token != "" {
		md.Append("authorization", "Bearer "+token)
	}
	ctx := metadata.NewIncomingContext(context.Background(), md)
	ctx = peer.NewContext(ctx, &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}})
	return requestid.With(ctx, "req-1")
}

// unary runs a unary call through the chain; handler stands for the access check and the RPC.
func (c *chain) unary(t *testing.T, token, method string, req proto.Message, handler grpc.UnaryHandler) error {
	t.Helper()
	info := &grpc.UnaryServerInfo{FullMethod: method}
	rec := c.rec.UnaryServerInterceptor()
	_, err := c.access.AuthenticateUnary()(incoming(token), req, info, func(ctx context.Context, req any) (any, error) {
		return rec(ctx, req, info, handler)
	})
	return err
}

func answer(err error) grpc.UnaryHandler {
	return func(context.Context, any) (any, error) { return nil, err }
}

// events returns the audit events written so far, decoded.
func (c *chain) events(t *testing.T) []map[string]any {
	t.Helper()
	return auditEvents(t, c.logs.String())
}

func auditEvents(t *testing.T, logs string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		if line == "" {
			continue
		}
		var ev map[string]any
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("not JSON: %q: %v", line, err)
		}
		if ev["msg"] == audit.Message {
			out = append(out, ev)
		}
	}
	return out
}

const (
	svcConv = "/platform.v1.ConversationService/"
	svcMsg  = "/platform.v1.MessageService/"
	svcDLQ  = "/platform.v1.DeadLetterService/"
)

func TestUnaryEvents(t *testing.T) {
	denied := status.Error(codes.PermissionDenied, "role member may not member.add")
	long := strings.Repeat("é", 400) // 800 bytes
	for _, tc := range []struct {
		name    string
		token   string
		method  string
		req     proto.Message
		handler grpc.UnaryHandler
		want    map[string]any // nil: no event; keys absent from the event are written as nil
	}{
		{
			name: "a user's mutation", token: "tok-alice", method: svcMsg + "SendMessage",
			req: &platformv1.SendMessageRequest{ConversationId: "c1", Body: "the secret body", ClientMessageId: "k1",
				Metadata: map[string]string{"x_id": "meta"}},
			handler: answer(nil),
			want: map[string]any{"component": "audit", "level": "INFO", "method": svcMsg + "SendMessage", "permission": "message.send",
				"mutation": true, "operator_role": nil, "subject": "alice", "tenant": "t1", "roles": []any{"user"},
				"resource": map[string]any{"conversation_id": "c1", "client_message_id": "k1"}, "code": "OK", "error": nil,
				"request_id": "req-1", "peer": "127.0.0.1:40000", "forwarded_for": "203.0.113.7", "stream": nil, "detail": nil},
		},
		{
			name: "a refused mutation", token: "tok-alice", method: svcConv + "AddMember",
			req:     &platformv1.AddMemberRequest{ConversationId: "c1", UserId: "bob", Role: platformv1.MemberRole_MEMBER_ROLE_OWNER},
			handler: answer(denied),
			want: map[string]any{"method": svcConv + "AddMember", "permission": "member.add", "mutation": true,
				"resource": map[string]any{"conversation_id": "c1", "user_id": "bob"}, "code": "PERMISSION_DENIED",
				"error": "role member may not member.add"},
		},
		{
			name: "an invalid mutation", token: "tok-alice", method: svcConv + "CreateConversation",
			req:     &platformv1.CreateConversationRequest{Title: "private title", MemberIds: []string{"bob"}},
			handler: answer(status.Error(codes.InvalidArgument, "title: 1-200 characters")),
			want: map[string]any{"permission": "conversation.create", "resource": nil, "code": "INVALID_ARGUMENT",
				"error": "title: 1-200 characters"},
		},
		{
			name: "nested rule field, not the title", token: "tok-alice", method: svcConv + "UpdateConversation",
			req:     &platformv1.UpdateConversationRequest{Conversation: &platformv1.Conversation{Id: "c1", Title: "private title"}},
			handler: answer(nil),
			want:    map[string]any{"resource": map[string]any{"conversation.id": "c1"}, "code": "OK"},
		},
		{
			name: "owner field of a delete", token: "tok-alice", method: svcMsg + "DeleteMessage",
			req:     &platformv1.DeleteMessageRequest{ConversationId: "c1", MessageId: "m1"},
			handler: answer(status.Error(codes.NotFound, "message not found")),
			want:    map[string]any{"resource": map[string]any{"conversation_id": "c1", "message_id": "m1"}, "code": "NOT_FOUND"},
		},
		{
			name: "a service's mutation", token: "tok-svc", method: svcMsg + "SendMessage",
			req: &platformv1.SendMessageRequest{ConversationId: "c1", Body: "x"}, handler: answer(nil),
			want: map[string]any{"subject": "svc-bot", "roles": []any{"service"}, "operator_role": nil},
		},
		{
			name: "an operator's read", token: "tok-oscar", method: svcDLQ + "GetDeadLetter",
			req: &platformv1.GetDeadLetterRequest{Id: "messages.inbound-0-7-1"},
			handler: func(ctx context.Context, _ any) (any, error) {
				audit.Add(ctx, slog.String("dead_letter_tenant", "t1"))
				return nil, nil
			},
			want: map[string]any{"permission": "dlq.read", "mutation": false, "operator_role": "operator", "subject": "oscar",
				"resource": map[string]any{"id": "messages.inbound-0-7-1"}, "code": "OK",
				"detail": map[string]any{"dead_letter_tenant": "t1"}},
		},
		{
			name: "a platform operator's read of another tenant", token: "tok-pat", method: svcDLQ + "ListDeadLetters",
			req:     &platformv1.ListDeadLettersRequest{Filter: &platformv1.DeadLetterFilter{TenantId: "t2", ErrorContains: "secret"}},
			handler: answer(nil),
			want: map[string]any{"operator_role": "platform_operator", "tenant": "t0",
				"resource": map[string]any{"filter.tenant_id": "t2"}},
		},
		{
			name: "an operator's purge", token: "tok-oscar", method: svcDLQ + "PurgeDeadLetters",
			req: &platformv1.PurgeDeadLettersRequest{All: true},
			handler: func(ctx context.Context, _ any) (any, error) {
				audit.Add(ctx, slog.Int64("purged", 3))
				return nil, nil
			},
			want: map[string]any{"permission": "dlq.write", "mutation": true, "operator_role": "operator",
				"detail": map[string]any{"purged": float64(3)}},
		},
		{
			name: "a user asking for dead letters", token: "tok-alice", method: svcDLQ + "ListDeadLetters",
			req:     &platformv1.ListDeadLettersRequest{},
			handler: answer(status.Error(codes.PermissionDenied, "permission dlq.read requires one of the platform roles that grant it")),
			want:    map[string]any{"permission": "dlq.read", "operator_role": nil, "code": "PERMISSION_DENIED"},
		},
		{
			name: "a caller with no role asking for stats", token: "tok-nobody", method: svcDLQ + "GetDeadLetterStats",
			req: &platformv1.GetDeadLetterStatsRequest{TenantId: "t2"}, handler: answer(status.Error(codes.PermissionDenied, "no")),
			want: map[string]any{"roles": []any{}, "resource": map[string]any{"tenant_id": "t2"}},
		},
		{
			name: "an operator who is also a user creates a conversation as a user", token: "tok-both", method: svcConv + "CreateConversation",
			req: &platformv1.CreateConversationRequest{Title: "t"}, handler: answer(nil),
			want: map[string]any{"operator_role": nil, "mutation": true},
		},
		{
			name: "ids are clipped", token: "tok-alice", method: svcConv + "RemoveMember",
			req: &platformv1.RemoveMemberRequest{ConversationId: "c1", UserId: long}, handler: answer(nil),
			want: map[string]any{"resource": map[string]any{"conversation_id": "c1",
				"user_id": strings.Repeat("é", 160) + "…(800 bytes)"}},
		},
		{
			name: "roles are bounded", token: "tok-manyrol", method: svcConv + "CreateConversation",
			req: &platformv1.CreateConversationRequest{Title: "t"}, handler: answer(nil),
			want: map[string]any{"roles": append(repeatAny("r", 16), "…(41 roles)")},
		},
		{name: "a user's read", token: "tok-alice", method: svcConv + "GetConversation",
			req: &platformv1.GetConversationRequest{ConversationId: "c1"}, handler: answer(nil)},
		{name: "a user's list", token: "tok-alice", method: svcMsg + "ListMessages",
			req: &platformv1.ListMessagesRequest{ConversationId: "c1"}, handler: answer(nil)},
		{name: "a refused read", token: "tok-alice", method: svcMsg + "GetMessage",
			req: &platformv1.GetMessageRequest{ConversationId: "c1", MessageId: "m1"}, handler: answer(status.Error(codes.PermissionDenied, "no"))},
		{name: "a service's read", token: "tok-svc", method: svcMsg + "GetMessage",
			req: &platformv1.GetMessageRequest{ConversationId: "c1", MessageId: "m1"}, handler: answer(nil)},
		{name: "an operator's conversation read is a user's read", token: "tok-both", method: svcConv + "ListConversations",
			req: &platformv1.ListConversationsRequest{}, handler: answer(nil)},
		{name: "a public call", token: "", method: "/platform.v1.HealthService/GetHealth",
			req: &platformv1.GetHealthRequest{}, handler: answer(nil)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newChain(t, slog.LevelInfo)
			if err := c.unary(t, tc.token, tc.method, tc.req, tc.handler); err != nil && tc.want != nil && tc.want["code"] == "OK" {
				t.Fatalf("call failed: %v", err)
			}
			evs := c.events(t)
			if tc.want == nil {
				if len(evs) != 0 {
					t.Fatalf("%d audit events, want none: %v", len(evs), evs)
				}
				return
			}
			if len(evs) != 1 {
				t.Fatalf("%d audit events, want 1:\n%s", len(evs), c.logs.String())
			}
			checkEvent(t, evs[0], tc.want)
			if _, ok := evs[0]["duration_ms"].(float64); !ok {
				t.Errorf("duration_ms = %v, want a number", evs[0]["duration_ms"])
			}
			for _, secret := range []string{"secret", "private title", "meta", tc.token} {
				if secret != "" && strings.Contains(c.logs.String(), secret) {
					t.Errorf("the event contains %q: %s", secret, c.logs.String())
				}
			}
		})
	}
}

func repeatAny(s string, n int) []any {
	out := make([]any, n)
	for i := range out {
		out[i] = s
	}
	return out
}

// checkEvent compares the fields of want (nil: must be absent) with ev.
func checkEvent(t *testing.T, ev, want map[string]any) {
	t.Helper()
	for k, w := range want {
		got, present := ev[k]
		if w == nil {
			if present {
				t.Errorf("%s = %v, want it absent", k, got)
			}
			continue
		}
		gj, _ := json.Marshal(got)
		wj, _ := json.Marshal(w)
		if !bytes.Equal(gj, wj) {
			t.Errorf("%s = %s, want %s", k, gj, wj)
		}
	}
}

// The audit trail does not depend on the log level: LOG_LEVEL=error still records every audited call.
func TestEventsIgnoreTheLogLevel(t *testing.T) {
	c := newChain(t, slog.LevelError)
	if err := c.unary(t, "tok-alice", svcMsg+"SendMessage", &platformv1.SendMessageRequest{ConversationId: "c1", Body: "b"}, answer(nil)); err != nil {
		t.Fatal(err)
	}
	evs := c.events(t)
	if len(evs) != 1 || evs[0]["level"] != "INFO" {
		t.Fatalf("audit events at LOG_LEVEL=error: %v", evs)
	}
}

// Every event carries audit=true and is counted by permission and result once the Recorder is registered.
func TestEventsAreCounted(t *testing.T) {
	c := newChain(t, slog.LevelInfo)
	reg := prometheus.NewRegistry()
	if err := c.rec.Register(reg); err != nil {
		t.Fatal(err)
	}
	get := &platformv1.GetDeadLetterRequest{Id: "messages.inbound-0-7-1"}
	_ = c.unary(t, "tok-oscar", svcDLQ+"GetDeadLetter", get, answer(nil))
	_ = c.unary(t, "tok-alice", svcDLQ+"GetDeadLetter", get, answer(status.Error(codes.PermissionDenied, "no")))
	_ = c.unary(t, "tok-alice", svcMsg+"GetMessage", &platformv1.GetMessageRequest{ConversationId: "c1", MessageId: "m1"}, answer(nil))
	evs := c.events(t)
	if len(evs) != 2 || evs[0]["audit"] != true || evs[1]["audit"] != true {
		t.Fatalf("events: %v", evs)
	}
	// The user's read of a message is not audited, so not counted; every audited permission starts at 0.
	got := counts(t, reg)
	for key, n := range map[string]float64{
		"dlq.read OK": 1, "dlq.read PERMISSION_DENIED": 1, "dlq.write OK": 0, "message.send OK": 0, "member.add OK": 0,
	} {
		if v, ok := got[key]; !ok || v != n {
			t.Errorf("platform_audit_events_total{%s} = %v (present %v), want %v", key, v, ok, n)
		}
	}
	for key := range got {
		if strings.HasPrefix(key, "message.read ") || strings.HasPrefix(key, "conversation.read ") {
			t.Errorf("a series for a permission never audited: %s", key)
		}
	}
}

// counts returns platform_audit_events_total by "permission result".
func counts(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		if f.GetName() != "platform_audit_events_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			out[labels["permission"]+" "+labels["result"]] = m.GetCounter().GetValue()
		}
	}
	return out
}

// A call refused for want of a valid token never reaches the audit (it is counted by the gateway);
// Add outside an audited call does nothing.
func TestUnauthenticatedAndUnaudited(t *testing.T) {
	c := newChain(t, slog.LevelInfo)
	err := c.unary(t, "tok-forged", svcMsg+"SendMessage", &platformv1.SendMessageRequest{ConversationId: "c1"}, answer(nil))
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("forged token: %v", err)
	}
	audit.Add(context.Background(), slog.String("x", "y"))
	if evs := c.events(t); len(evs) != 0 {
		t.Fatalf("audit events: %v", evs)
	}
}

// fakeStream is a server stream whose one request is req.
type fakeStream struct {
	grpc.ServerStream
	ctx  context.Context
	req  proto.Message
	sent int
}

func (s *fakeStream) Context() context.Context { return s.ctx }

func (s *fakeStream) RecvMsg(m any) error {
	if s.req == nil {
		return io.EOF
	}
	proto.Merge(m.(proto.Message), s.req)
	s.req = nil
	return nil
}

func (s *fakeStream) SendMsg(any) error { s.sent++; return nil }

// Streams: an event when the request arrives (before the access check decides) and, for operator streams
// and streams that fail, one when they end with the code and how long they were open. No stream method is
// audited today (StreamMessages is a read), so the audited ones here borrow a unary method's rule: the rule
// is looked up by method name alone.
func TestStreamEvents(t *testing.T) {
	for _, tc := range []struct {
		name    string
		token   string
		method  string
		req     proto.Message
		result  error
		read    bool
		phases  []string
		lastErr string
	}{
		{name: "operator stream: open and end", token: "tok-oscar", method: svcDLQ + "GetDeadLetter",
			req: &platformv1.GetDeadLetterRequest{Id: "dl-1"}, read: true, phases: []string{"open", "end"}},
		{name: "refused mutation stream: open, then end with the refusal", token: "tok-alice", method: svcMsg + "SendMessage",
			req: &platformv1.SendMessageRequest{ConversationId: "c1", Body: "b"}, read: true,
			result: status.Error(codes.PermissionDenied, "not a member"), phases: []string{"open", "end"}, lastErr: "not a member"},
		{name: "mutation stream: open only", token: "tok-alice", method: svcMsg + "SendMessage",
			req: &platformv1.SendMessageRequest{ConversationId: "c1", Body: "b"}, read: true, phases: []string{"open"}},
		{name: "a stream that ends before its request: end only", token: "tok-alice", method: svcMsg + "SendMessage",
			result: status.Error(codes.Canceled, "gone"), phases: []string{"end"}, lastErr: "gone"},
		{name: "a user's read stream is not audited", token: "tok-alice", method: svcMsg + "StreamMessages",
			req: &platformv1.StreamMessagesRequest{ConversationId: "c1"}, read: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newChain(t, slog.LevelInfo)
			info := &grpc.StreamServerInfo{FullMethod: tc.method, IsServerStream: true}
			rec := c.rec.StreamServerInterceptor()
			ss := &fakeStream{ctx: incoming(tc.token), req: tc.req}
			err := c.access.AuthenticateStream()(nil, ss, info, func(srv any, ss grpc.ServerStream) error {
				return rec(srv, ss, info, func(_ any, ss grpc.ServerStream) error {
					if tc.read {
						if err := ss.RecvMsg(tc.req.ProtoReflect().New().Interface()); err != nil {
							return err
						}
					}
					audit.Add(ss.Context(), slog.String("seen_by", "handler"))
					return tc.result
				})
			})
			if status.Code(err) != status.Code(tc.result) {
				t.Fatalf("stream = %v, want %v", err, tc.result)
			}
			evs := c.events(t)
			if len(evs) != len(tc.phases) {
				t.Fatalf("%d events, want %v:\n%s", len(evs), tc.phases, c.logs.String())
			}
			for i, ev := range evs {
				if ev["stream"] != tc.phases[i] || ev["request_id"] != "req-1" {
					t.Errorf("event %d: stream=%v request_id=%v, want %s", i, ev["stream"], ev["request_id"], tc.phases[i])
				}
				_, hasCode := ev["code"]
				if hasCode != (tc.phases[i] == "end") {
					t.Errorf("event %d (%s): code %v", i, tc.phases[i], ev["code"])
				}
			}
			if len(evs) > 0 && tc.lastErr != "" && evs[len(evs)-1]["error"] != tc.lastErr {
				t.Errorf("end event error = %v, want %q", evs[len(evs)-1]["error"], tc.lastErr)
			}
			if tc.req != nil && len(evs) > 0 && evs[0]["resource"] == nil {
				t.Errorf("open event names no resource: %v", evs[0])
			}
			if len(evs) > 0 && evs[len(evs)-1]["stream"] == "end" {
				if d, _ := evs[len(evs)-1]["detail"].(map[string]any); d["seen_by"] != "handler" {
					t.Errorf("end event lacks the handler's detail: %v", evs[len(evs)-1])
				}
			}
		})
	}
}
