package gateway

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"time"
	"unicode/utf8"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/authz"
	"github.com/msgplatform/platform/internal/envelope"
)

// Limits of the HTTP edge.
const (
	// bodyTimeout bounds how long a client may take to send a request body once its headers are in: a
	// slow upload holds a goroutine and a buffer, so it is cut off rather than waited for.
	bodyTimeout = 10 * time.Second
	// readHeaderTimeout and idleTimeout bound a connection that sends nothing useful.
	readHeaderTimeout = 10 * time.Second
	idleTimeout       = 2 * time.Minute
	// maxHeaderBytes bounds a request's headers (a bearer token is a few KiB at most).
	maxHeaderBytes = 64 << 10
	// maxResponseBytes is what the REST gateway's connection accepts from the gRPC server: above the
	// largest legal response, a page of the largest messages (pages are capped by bytes too, see
	// store.MaxPageBytes, so this is a backstop).
	maxResponseBytes = 16 << 20
)

// Limits of the gRPC edge.
const (
	// maxConcurrentStreams bounds the calls one connection runs at once (HTTP/2 SETTINGS).
	maxConcurrentStreams = 256
	// handshakeTimeout bounds a new connection's handshake (TLS and HTTP/2 preface).
	handshakeTimeout = 10 * time.Second
	// keepaliveMinTime is the most often a client may ping; more often is a GOAWAY (too_many_pings).
	keepaliveMinTime = 10 * time.Second
	// maxConnectionIdle closes a connection that ran no call for this long; clients reconnect on demand.
	maxConnectionIdle = 5 * time.Minute
)

// transportLimits are the gRPC server's limits on what clients send and hold: the size of a request
// (envelope.MaxRequestBytes, the same bound as REST bodies), calls per connection, ping rate, idle
// connections and handshake time.
func transportLimits() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(envelope.MaxRequestBytes),
		grpc.MaxConcurrentStreams(maxConcurrentStreams),
		grpc.ConnectionTimeout(handshakeTimeout),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: keepaliveMinTime, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: maxConnectionIdle, Time: time.Minute, Timeout: 20 * time.Second}),
	}
}

// restEdge guards every REST call before grpc-gateway decodes anything: a call to a method that is not
// public needs a valid bearer token first (an anonymous caller never gets a schema error, nor makes the
// gateway read a body); path and query must be UTF-8; the body is read whole, at most
// envelope.MaxRequestBytes within bodyTimeout, and a larger one is 413 without being decoded. The gRPC
// interceptors then check everything again: this is the REST edge's cost control, not the access check.
type restEdge struct {
	mux      *runtime.ServeMux // set once the mux exists (its error handler writes the errors)
	routes   map[string]string // "VERB /path/{var}" → gRPC full method
	verifier authz.TokenVerifier
	isPublic func(method string) bool
	// onUnauthenticated hears of every REST call refused for want of a valid token.
	onUnauthenticated func(ctx context.Context, method string, err error)
	bodyTimeout       time.Duration // 0: the default, bodyTimeout
}

func (e *restEdge) middleware(next runtime.HandlerFunc) runtime.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request, params map[string]string) {
		ctx := r.Context()
		method := e.method(r)
		if !e.isPublic(method) {
			token, err := auth.TokenFromValues(r.Header.Values("Authorization"))
			if err == nil {
				_, err = e.verifier.Verify(token)
			}
			if err != nil {
				if e.onUnauthenticated != nil {
					e.onUnauthenticated(ctx, method, err)
				}
				e.fail(w, r, status.Error(codes.Unauthenticated, err.Error()))
				return
			}
		}
		if err := checkUTF8(r, params); err != nil {
			e.fail(w, r, status.Error(codes.InvalidArgument, err.Error()))
			return
		}
		if err := readBody(w, r, cmp.Or(e.bodyTimeout, bodyTimeout)); err != nil {
			e.fail(w, r, err)
			return
		}
		next(w, r, params)
	}
}

// method returns the gRPC method the matched route calls ("" when unknown, which is not public).
func (e *restEdge) method(r *http.Request) string {
	p, ok := runtime.HTTPPattern(r.Context())
	if !ok {
		return ""
	}
	return e.routes[r.Method+" "+normalizePattern(p.String())]
}

// fail answers err and abandons what is left of the body: net/http would otherwise read (up to 256 KiB
// of) it before answering, so a slow or anonymous client could hold the answer, and a goroutine, as long
// as it likes. The connection closes after the answer.
func (e *restEdge) fail(w http.ResponseWriter, r *http.Request, err error) {
	if r.Body != nil && r.Body != http.NoBody {
		_ = http.NewResponseController(w).SetReadDeadline(time.Now()) // an unread rest is not waited for
		_ = r.Body.Close()
		w.Header().Set("Connection", "close")
	}
	_, out := runtime.MarshalerForRequest(e.mux, r)
	runtime.HTTPError(r.Context(), e.mux, out, w, r, err)
}

// checkUTF8 refuses path parameters and query values that are not UTF-8: they become proto strings,
// which must be.
func checkUTF8(r *http.Request, params map[string]string) error {
	for name, v := range params {
		if !utf8.ValidString(v) {
			return fmt.Errorf("path parameter %s is not valid UTF-8", name)
		}
	}
	for name, vs := range r.URL.Query() {
		if !utf8.ValidString(name) {
			return errors.New("a query parameter name is not valid UTF-8")
		}
		for _, v := range vs {
			if !utf8.ValidString(v) {
				return fmt.Errorf("query parameter %s is not valid UTF-8", name)
			}
		}
	}
	return nil
}

// readBody reads the request body into memory, at most envelope.MaxRequestBytes within bodyTimeout, and
// puts it back for grpc-gateway. A declared or actual size over the limit is 413; a body too slow is 408.
func readBody(w http.ResponseWriter, r *http.Request, timeout time.Duration) error {
	if r.Body == nil || r.Body == http.NoBody {
		return nil
	}
	if r.ContentLength > envelope.MaxRequestBytes {
		return tooLarge()
	}
	rc := http.NewResponseController(w)
	if err := rc.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		// Every writer between the server and here must unwrap to the connection, or a slow body is waited for.
		return status.Errorf(codes.Internal, "request body deadline: %v", err)
	}
	var buf bytes.Buffer
	if r.ContentLength > 0 {
		buf.Grow(int(r.ContentLength))
	}
	n, err := buf.ReadFrom(io.LimitReader(r.Body, envelope.MaxRequestBytes+1))
	if n <= envelope.MaxRequestBytes && err == nil {
		_ = rc.SetReadDeadline(time.Time{}) // read whole: the call may take as long as it takes
	}
	switch {
	case n > envelope.MaxRequestBytes:
		return tooLarge()
	case err != nil:
		var ne interface{ Timeout() bool }
		if errors.As(err, &ne) && ne.Timeout() {
			return &runtime.HTTPStatusError{HTTPStatus: http.StatusRequestTimeout,
				Err: status.Errorf(codes.DeadlineExceeded, "request body not received within %s", timeout)}
		}
		return status.Errorf(codes.InvalidArgument, "read request body: %v", err)
	}
	_ = r.Body.Close()
	r.Body = io.NopCloser(&buf)
	return nil
}

func tooLarge() error {
	return &runtime.HTTPStatusError{HTTPStatus: http.StatusRequestEntityTooLarge,
		Err: status.Errorf(codes.ResourceExhausted, "request body over %d bytes", envelope.MaxRequestBytes)}
}

// patternVar matches a captured variable as runtime.Pattern prints it, "{conversation_id=*}".
var patternVar = regexp.MustCompile(`\{([^=}]+)=\*\}`)

// normalizePattern writes a route pattern as the google.api.http rule does: "{conversation_id}".
func normalizePattern(p string) string { return patternVar.ReplaceAllString(p, "{$1}") }

// restRoutes maps each REST route of services ("VERB /path/{var}", from the google.api.http options)
// to the gRPC method it calls.
func restRoutes(services ...string) (map[string]string, error) {
	routes := map[string]string{}
	for _, svc := range services {
		d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(svc))
		if err != nil {
			return nil, fmt.Errorf("service %s: %w", svc, err)
		}
		sd, ok := d.(protoreflect.ServiceDescriptor)
		if !ok {
			return nil, fmt.Errorf("%s is not a service", svc)
		}
		for i := range sd.Methods().Len() {
			md := sd.Methods().Get(i)
			rule, _ := proto.GetExtension(md.Options(), annotations.E_Http).(*annotations.HttpRule)
			if rule == nil {
				continue
			}
			method := "/" + svc + "/" + string(md.Name())
			for _, b := range append([]*annotations.HttpRule{rule}, rule.GetAdditionalBindings()...) {
				verb, path := httpBinding(b)
				if path != "" {
					routes[verb+" "+path] = method
				}
			}
		}
	}
	return routes, nil
}

func httpBinding(b *annotations.HttpRule) (verb, path string) {
	switch p := b.GetPattern().(type) {
	case *annotations.HttpRule_Get:
		return http.MethodGet, p.Get
	case *annotations.HttpRule_Post:
		return http.MethodPost, p.Post
	case *annotations.HttpRule_Put:
		return http.MethodPut, p.Put
	case *annotations.HttpRule_Patch:
		return http.MethodPatch, p.Patch
	case *annotations.HttpRule_Delete:
		return http.MethodDelete, p.Delete
	case *annotations.HttpRule_Custom:
		return p.Custom.GetKind(), p.Custom.GetPath()
	}
	return "", ""
}

// maxHealthWatches bounds the grpc.health.v1 Watch streams open at once: they need no token, so without
// a bound anyone could hold thousands. Probes use Check; Watch is for the few load balancers that follow.
const maxHealthWatches = 64

// boundedHealth is the health service with at most maxHealthWatches Watch streams; more are
// RESOURCE_EXHAUSTED.
type boundedHealth struct {
	healthpb.HealthServer
	watches chan struct{}
}

func newBoundedHealth(hs healthpb.HealthServer) *boundedHealth {
	return &boundedHealth{HealthServer: hs, watches: make(chan struct{}, maxHealthWatches)}
}

func (h *boundedHealth) Watch(req *healthpb.HealthCheckRequest, srv healthpb.Health_WatchServer) error {
	select {
	case h.watches <- struct{}{}:
		defer func() { <-h.watches }()
		return h.HealthServer.Watch(req, srv)
	default:
		return status.Errorf(codes.ResourceExhausted, "at most %d health watches at once; use Check", maxHealthWatches)
	}
}
