// Package audit records who did what. One gRPC interceptor (unary and stream) writes a structured log
// event for every mutating call and every operator call, granted or refused; REST reaches the gRPC server
// through a client connection, so the same interceptor covers it. Whether a call is audited is derived
// from its access rule (authz.RuleFrom), never declared twice: see Audited.
//
// An event is one slog record, msg "audit", with these attributes in this order:
//
//	component      "audit" (route the events by it)
//	audit          true (the same, for pipelines that match on a boolean: audit=true)
//	method         full gRPC method, "/platform.v1.DeadLetterService/GetDeadLetter"
//	permission     the rule's permission, "dlq.read"
//	mutation       whether the permission changes state
//	operator_role  the operator role that grants the call ("operator", "platform_operator"); absent otherwise
//	subject        the token's sub
//	tenant         the token's tenant_id
//	roles          the token's roles
//	resource       group: the rule's conversation and owner fields, and the request's id fields (see resources)
//	stream         "open" or "end" (streams only)
//	code           the gRPC code, "OK", "PERMISSION_DENIED"… (absent on a stream's open event)
//	error          the status message the caller got, unless OK
//	request_id     the call's request id
//	duration_ms    the call's duration (on a stream's end: how long it was open)
//	peer           the TCP peer (for REST: the gateway itself)
//	forwarded_for  x-forwarded-for as the call carried it (REST: the HTTP client), when present
//	detail         group: what the handler added with Add (e.g. how many dead letters a purge removed)
//
// Events are written at INFO whatever the process's LOG_LEVEL: an audit trail is not verbosity. They
// never contain a message body, a payload or a token: only id fields of the request are read. With
// Register, every event is also counted in platform_audit_events_total{permission,result}, result being
// the gRPC code name ("OK", "PERMISSION_DENIED"…) or "open" for a stream's open event.
package audit

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	middleware "github.com/grpc-ecosystem/go-grpc-middleware/v2"
	"github.com/prometheus/client_golang/prometheus"
	rpccode "google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/authz"
	"github.com/msgplatform/platform/internal/observability"
	"github.com/msgplatform/platform/internal/requestid"
)

// Message and Component name the events: msg="audit" component="audit".
const (
	Message   = "audit"
	Component = "audit"
)

// Bounds of what one event carries: ids are bounded by the API already, but an event must never grow
// with a hostile request.
const (
	maxValueLen = 320 // bytes of one resource id or forwarded address (dead-letter ids reach 300)
	maxErrorLen = 512 // bytes of the status message
	maxRoles    = 16  // roles listed
	maxRoleLen  = 64  // bytes of one role
)

// Stream phases.
const (
	StreamOpen = "open"
	StreamEnd  = "end"
)

// Audited reports whether a call under rule by p is recorded: every mutation (rule.Permission.Mutates,
// the one definition quotas share), every call an operator role grants the caller (reads of others'
// data included), and every attempt at a permission only operator roles hold (someone without the role
// asking for dead letters). Public calls are not audited.
func Audited(rule authz.Rule, p auth.Principal) bool {
	if rule.Public || rule.Permission == "" {
		return false
	}
	return rule.Permission.Mutates() || authz.OperatorGrant(p.Roles, rule.Permission) != "" || authz.OperatorOnly(rule.Permission)
}

// Recorder is the audit interceptor (gateway.Interceptors). Chain it after authentication (it reads the
// rule and the principal from the context) and before the access check (so refusals are recorded).
type Recorder struct {
	log    *slog.Logger
	now    func() time.Time
	events *prometheus.CounterVec // nil until Register
}

// New returns a Recorder writing events through logger's handler, whatever its level.
func New(logger *slog.Logger) *Recorder {
	h := alwaysEnabled{logger.Handler()}.WithAttrs([]slog.Attr{slog.String("component", Component), slog.Bool("audit", true)})
	return &Recorder{log: slog.New(h), now: time.Now}
}

// Result of a stream's open event in platform_audit_events_total (it has no code yet).
const resultOpen = "open"

// Register counts every event the Recorder writes in platform_audit_events_total{permission,result} on
// reg (both labels are bounded: the permissions of the matrix, the gRPC codes and "open"). Call it before
// the Recorder serves.
func (r *Recorder) Register(reg prometheus.Registerer) error {
	c, err := observability.Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: observability.Namespace, Name: "audit_events_total",
		Help: "Audit events written (every mutation and every operator call, granted or refused), by permission and result (gRPC code, or open for a stream's open event).",
	}, []string{"permission", "result"}))
	if err != nil {
		return err
	}
	// Zero series for the answers every audited permission can get, so rate() sees 0 rather than nothing.
	for _, p := range authz.Permissions() {
		if p.Mutates() || authz.OperatorOnly(p) {
			c.WithLabelValues(string(p), codeName(codes.OK))
		}
	}
	r.events = c
	return nil
}

// UnaryServerInterceptor records audited unary calls once they are answered.
func (r *Recorder) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		rule, ok := authz.RuleFrom(ctx)
		p, _ := auth.PrincipalFrom(ctx)
		if !ok || !Audited(rule, p) {
			return handler(ctx, req)
		}
		ev := &event{}
		start := r.now()
		resp, err := handler(context.WithValue(ctx, eventKey{}, ev), req)
		r.write(ctx, rule, p, resources(rule, req), "", err, true, r.now().Sub(start), ev)
		return resp, err
	}
}

// StreamServerInterceptor records audited streams when their request arrives (stream="open", before the
// access check decides) and, for operator streams or streams that end in an error, when they end
// (stream="end", with the code). A stream that ends before any request arrived has only its end event.
func (r *Recorder) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx := ss.Context()
		rule, ok := authz.RuleFrom(ctx)
		p, _ := auth.PrincipalFrom(ctx)
		if !ok || !Audited(rule, p) {
			return handler(srv, ss)
		}
		ev := &event{}
		start := r.now()
		wrapped := &auditedStream{WrappedServerStream: middleware.WrapServerStream(ss)}
		wrapped.WrappedContext = context.WithValue(ctx, eventKey{}, ev)
		wrapped.onFirst = func(req any) []any {
			ids := resources(rule, req)
			r.write(ctx, rule, p, ids, StreamOpen, nil, false, 0, nil)
			return ids
		}
		err := handler(srv, wrapped)
		opened, ids := wrapped.state()
		if !opened || err != nil || authz.OperatorGrant(p.Roles, rule.Permission) != "" || authz.OperatorOnly(rule.Permission) {
			r.write(ctx, rule, p, ids, StreamEnd, err, true, r.now().Sub(start), ev)
		}
		return err
	}
}

// auditedStream names the stream's resources from its first request.
type auditedStream struct {
	*middleware.WrappedServerStream
	onFirst func(req any) []any

	mu     sync.Mutex // RecvMsg may run on another goroutine than the handler's return
	opened bool
	ids    []any
}

func (s *auditedStream) RecvMsg(m any) error {
	err := s.WrappedServerStream.RecvMsg(m)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.opened {
		s.opened = true
		s.ids = s.onFirst(m)
	}
	return nil
}

// state returns whether a request arrived, and the resources it named.
func (s *auditedStream) state() (bool, []any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.opened, s.ids
}

// write emits one event. withResult adds the code (and error) and the duration.
func (r *Recorder) write(ctx context.Context, rule authz.Rule, p auth.Principal, ids []any, phase string, err error,
	withResult bool, took time.Duration, ev *event) {
	attrs := make([]slog.Attr, 0, 18)
	attrs = append(attrs,
		slog.String("method", rule.Method),
		slog.String("permission", string(rule.Permission)),
		slog.Bool("mutation", rule.Permission.Mutates()))
	if op := authz.OperatorGrant(p.Roles, rule.Permission); op != "" {
		attrs = append(attrs, slog.String("operator_role", op))
	}
	attrs = append(attrs,
		slog.String("subject", clip(p.Subject, maxValueLen)),
		slog.String("tenant", clip(p.TenantID, maxValueLen)),
		slog.Any("roles", rolesOf(p.Roles)),
		slog.Group("resource", ids...))
	if phase != "" {
		attrs = append(attrs, slog.String("stream", phase))
	}
	result := resultOpen
	if withResult {
		st := status.Convert(err)
		result = codeName(st.Code())
		attrs = append(attrs, slog.String("code", result))
		if st.Code() != codes.OK {
			attrs = append(attrs, slog.String("error", clip(st.Message(), maxErrorLen)))
		}
	}
	attrs = append(attrs, slog.String("request_id", requestid.From(ctx)))
	if withResult {
		attrs = append(attrs, slog.Float64("duration_ms", float64(took.Microseconds())/1000))
	}
	if pr, ok := peer.FromContext(ctx); ok && pr.Addr != nil {
		attrs = append(attrs, slog.String("peer", pr.Addr.String()))
	}
	if xff := metadata.ValueFromIncomingContext(ctx, "x-forwarded-for"); len(xff) > 0 {
		attrs = append(attrs, slog.String("forwarded_for", clip(strings.Join(xff, ", "), maxValueLen)))
	}
	if detail := ev.take(); len(detail) > 0 {
		attrs = append(attrs, slog.Group("detail", detail...))
	}
	// A cancelled call is still recorded: the event is written on a context that cannot be cancelled.
	r.log.LogAttrs(context.WithoutCancel(ctx), slog.LevelInfo, Message, attrs...)
	if r.events != nil {
		r.events.WithLabelValues(string(rule.Permission), result).Inc()
	}
}

// codeName is the canonical name of a gRPC code ("PERMISSION_DENIED"), as the README's tables write it.
func codeName(c codes.Code) string {
	if n, ok := rpccode.Code_name[int32(c)]; ok {
		return n
	}
	return c.String()
}

// resources names what a call is about: the rule's conversation and owner fields (under their paths,
// "conversation.id"), then every singular string field of the request whose name is id or name or ends
// in _id, and the same fields of its singular message fields one level down ("filter.tenant_id").
// Values are clipped; nothing else of the request (bodies, metadata, titles) is read.
func resources(rule authz.Rule, req any) []any {
	msg, ok := req.(proto.Message)
	if !ok || msg == nil {
		return nil
	}
	var out []any
	seen := map[string]bool{}
	add := func(key, v string) {
		if v == "" || seen[key] {
			return
		}
		seen[key] = true
		out = append(out, slog.String(key, clip(v, maxValueLen)))
	}
	for _, path := range [][]protoreflect.Name{rule.ConversationField, rule.OwnerField} {
		if len(path) > 0 {
			add(joinPath(path), authz.StringAt(msg, path))
		}
	}
	m := msg.ProtoReflect()
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		f := fields.Get(i)
		switch {
		case f.Cardinality() == protoreflect.Repeated:
		case f.Kind() == protoreflect.StringKind && idField(f.Name()):
			add(string(f.Name()), m.Get(f).String())
		case f.Kind() == protoreflect.MessageKind && m.Has(f):
			inner := m.Get(f).Message()
			innerFields := inner.Descriptor().Fields()
			for j := range innerFields.Len() {
				g := innerFields.Get(j)
				if g.Cardinality() != protoreflect.Repeated && g.Kind() == protoreflect.StringKind && idField(g.Name()) {
					add(string(f.Name())+"."+string(g.Name()), inner.Get(g).String())
				}
			}
		}
	}
	return out
}

func idField(name protoreflect.Name) bool {
	return name == "id" || name == "name" || strings.HasSuffix(string(name), "_id")
}

func joinPath(path []protoreflect.Name) string {
	parts := make([]string, len(path))
	for i, p := range path {
		parts[i] = string(p)
	}
	return strings.Join(parts, ".")
}

// clip bounds s to max bytes of valid UTF-8, saying how long it was when it had to cut.
func clip(s string, limit int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= limit {
		return s
	}
	cut := limit
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…(" + strconv.Itoa(len(s)) + " bytes)"
}

// rolesOf bounds the roles claim the way clip bounds a value: a token is signed, not small.
func rolesOf(roles []string) []string {
	out := make([]string, 0, min(len(roles), maxRoles))
	for i, r := range roles {
		if i == maxRoles {
			out = append(out, "…("+strconv.Itoa(len(roles))+" roles)")
			break
		}
		out = append(out, clip(r, maxRoleLen))
	}
	return out
}

// eventKey carries the *event of an audited call in its context.
type eventKey struct{}

// event collects what the handler adds to its call's audit event.
type event struct {
	mu     sync.Mutex
	detail []any
}

func (e *event) take() []any {
	if e == nil {
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.detail
}

// Add attaches domain detail only the handler knows (how many dead letters a purge removed, whose dead
// letter was read) to the audit event of the call in ctx, under "detail". It does nothing when the call
// is not audited, so handlers call it unconditionally. Never add bodies, payloads or tokens.
func Add(ctx context.Context, attrs ...slog.Attr) {
	ev, ok := ctx.Value(eventKey{}).(*event)
	if !ok {
		return
	}
	ev.mu.Lock()
	defer ev.mu.Unlock()
	for _, a := range attrs {
		ev.detail = append(ev.detail, a)
	}
}

// alwaysEnabled passes every record to its handler whatever the handler's level: LOG_LEVEL=warn must
// not silence the audit trail. slog's handlers filter by level only in Enabled, never in Handle.
type alwaysEnabled struct{ slog.Handler }

func (alwaysEnabled) Enabled(context.Context, slog.Level) bool { return true }

func (h alwaysEnabled) WithAttrs(attrs []slog.Attr) slog.Handler {
	return alwaysEnabled{h.Handler.WithAttrs(attrs)}
}

func (h alwaysEnabled) WithGroup(name string) slog.Handler {
	return alwaysEnabled{h.Handler.WithGroup(name)}
}
