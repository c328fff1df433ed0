package gateway

import (
	"bytes"
	"context"
	"errors"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/grpc-ecosystem/grpc-gateway/v2/utilities"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/apidocs"
)

// Server-sent events for StreamMessages. grpc-gateway streams newline-delimited JSON, which a browser's
// EventSource cannot read; a request of the stream route that accepts text/event-stream is answered here
// instead, through the same gRPC client connection as every REST call (so authentication, quotas, audit
// and the access check all run), as one event per item:
//
//	id: <resume point: the newest message id the stream has delivered>
//	event: <the item's type, e.g. EVENT_TYPE_MESSAGE_PERSISTED>
//	data: <the StreamMessagesResponse as protojson>
//
// with a `: keep-alive` comment after every quiet keepAlive, and an `event: error` whose data is the
// google.rpc.Status as JSON when the call ends with an error after it started (before, the answer is the
// error's HTTP status and JSON body, as for any REST call). The Last-Event-ID header (a browser sends it
// when it reconnects) resumes like after_message_id.
//
// Browsers cannot give an EventSource an Authorization header: on this route only, and only with
// Accept: text/event-stream, the bearer token may come as the `access_token` query parameter (RFC 6750
// §2.3). It is moved into the Authorization header and removed from the URL before anything else sees
// the request, so it is never logged, parsed or forwarded as a parameter.

const (
	streamMethod  = apidocs.EventStreamMethod
	streamPattern = "/v1/conversations/{conversation_id}/messages:stream"
	// defaultKeepAlive is the period of the keep-alive comment: below the idle timeouts of common proxies
	// and load balancers (30–60 s).
	defaultKeepAlive = 15 * time.Second
	// sseRetry is the reconnection delay the stream asks EventSource clients to wait.
	sseRetry = 2 * time.Second
	// accessTokenParam is the query parameter carrying the bearer token of a browser's event stream.
	accessTokenParam = apidocs.AccessTokenParam
)

// StreamStartedHeader is the header metadata StreamMessages sends once its stream is authorized and
// subscribed (api.StreamStartedHeader): the REST stream answers 200 on it. Other header metadata does not
// tell, since a refused call sends the headers its interceptors set before its error.
const StreamStartedHeader = "x-stream-started"

// sseEventError is the event type of the error that ends an event stream.
const sseEventError = "error"

// sseMarshal is how items and errors become `data:`: protojson as the REST gateway writes it.
var sseMarshal = protojson.MarshalOptions{EmitUnpopulated: true}

// sseStreams serves StreamMessages as server-sent events.
type sseStreams struct {
	mux       *runtime.ServeMux // set once the mux exists
	client    platformv1.MessageServiceClient
	method    func(r *http.Request) string // the gRPC method of the matched route (restEdge.method)
	keepAlive time.Duration                // ≤ 0: defaultKeepAlive
	// onUnauthenticated hears the refusals of a malformed access_token (the edge hears the others).
	onUnauthenticated func(ctx context.Context, method string, err error)
}

// wantsEventStream reports whether the request accepts text/event-stream.
func wantsEventStream(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept") {
		for _, part := range strings.Split(v, ",") {
			if mt, _, err := mime.ParseMediaType(strings.TrimSpace(part)); err == nil && mt == "text/event-stream" {
				return true
			}
		}
	}
	return false
}

// credentials runs before the edge's token check: on an event stream request it moves the
// access_token query parameter into the Authorization header and out of the URL. Anywhere else on the
// stream route the parameter is refused rather than ignored.
func (s *sseStreams) credentials(next runtime.HandlerFunc) runtime.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request, params map[string]string) {
		if s.method(r) != streamMethod || !strings.Contains(r.URL.RawQuery, accessTokenParam) {
			next(w, r, params)
			return
		}
		q := r.URL.Query()
		tokens, ok := q[accessTokenParam]
		if !ok {
			next(w, r, params)
			return
		}
		r = r.Clone(r.Context())
		q.Del(accessTokenParam)
		r.URL.RawQuery = q.Encode()
		r.RequestURI = r.URL.RequestURI()
		var err error
		switch {
		case !wantsEventStream(r):
			err = status.Error(codes.InvalidArgument, "the access_token query parameter is accepted on server-sent event streams only (Accept: text/event-stream); send an Authorization header")
		case len(tokens) != 1 || tokens[0] == "":
			err = status.Error(codes.Unauthenticated, "give the access_token query parameter once, not empty")
		case r.Header.Get("Authorization") != "":
			err = status.Error(codes.InvalidArgument, "give the token either in the Authorization header or as access_token, not both")
		}
		if err != nil {
			if status.Code(err) == codes.Unauthenticated && s.onUnauthenticated != nil {
				s.onUnauthenticated(r.Context(), streamMethod, err)
			}
			s.fail(r.Context(), w, r, err)
			return
		}
		r.Header.Set("Authorization", "Bearer "+tokens[0])
		next(w, r, params)
	}
}

// serve runs after the edge's checks: the stream route's event stream requests are answered here, its
// other requests go on to grpc-gateway (newline-delimited JSON).
func (s *sseStreams) serve(next runtime.HandlerFunc) runtime.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request, params map[string]string) {
		switch {
		case s.method(r) != streamMethod:
			next(w, r, params)
		case wantsEventStream(r):
			s.stream(w, r, params)
		default:
			// streamStarted writes the status once the call starts; an error after that must not
			// write it again.
			next(&firstStatus{ResponseWriter: w}, r, params)
		}
	}
}

func (s *sseStreams) fail(ctx context.Context, w http.ResponseWriter, r *http.Request, err error) {
	_, out := runtime.MarshalerForRequest(s.mux, r)
	runtime.HTTPError(ctx, s.mux, out, w, r, err)
}

// streamRequest builds the gRPC request as grpc-gateway would (query parameters, then the path's
// conversation id); Last-Event-ID, when sent, is the resume point.
func streamRequest(r *http.Request, params map[string]string) (*platformv1.StreamMessagesRequest, error) {
	req := &platformv1.StreamMessagesRequest{}
	if err := runtime.PopulateQueryParameters(req, r.URL.Query(), utilities.NewDoubleArray([][]string{{"conversation_id"}})); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "%v", err)
	}
	req.ConversationId = params["conversation_id"]
	if id := strings.TrimSpace(r.Header.Get("Last-Event-ID")); id != "" {
		req.AfterMessageId = id
	}
	return req, nil
}

type recvResult struct {
	item *platformv1.StreamMessagesResponse
	err  error
}

// stream answers one event stream request.
func (s *sseStreams) stream(w http.ResponseWriter, r *http.Request, params map[string]string) {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	ctx, err := runtime.AnnotateContext(ctx, s.mux, r, streamMethod, runtime.WithHTTPPathPattern(streamPattern))
	if err != nil {
		s.fail(ctx, w, r, err)
		return
	}
	req, err := streamRequest(r, params)
	if err != nil {
		s.fail(ctx, w, r, err)
		return
	}
	call, err := s.client.StreamMessages(ctx, req)
	if err != nil {
		s.fail(ctx, w, r, err)
		return
	}
	header, err := call.Header()
	if err != nil || len(header.Get(StreamStartedHeader)) == 0 {
		// Not started: the call ended before (refused, or cancelled); Recv tells how.
		_, err := call.Recv()
		if errors.Is(err, io.EOF) || ctx.Err() != nil {
			return
		}
		md := runtime.ServerMetadata{HeaderMD: header, TrailerMD: call.Trailer()}
		s.fail(runtime.NewServerMetadataContext(ctx, md), w, r, err)
		return
	}

	h := w.Header()
	for k, vs := range header {
		if name, ok := outgoingHeader(k); ok {
			for _, v := range vs {
				h.Add(name, v)
			}
		}
	}
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // nginx: pass events on as they come
	w.WriteHeader(http.StatusOK)
	sw := &sseWriter{w: w, rc: http.NewResponseController(w), last: req.GetAfterMessageId()}
	if sw.send("retry: "+strconv.FormatInt(sseRetry.Milliseconds(), 10)+"\n\n") != nil {
		return
	}

	items := make(chan recvResult)
	go func() {
		for {
			item, err := call.Recv()
			select {
			case items <- recvResult{item, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	period := s.keepAlive
	if period <= 0 {
		period = defaultKeepAlive
	}
	keepAlive := time.NewTicker(period)
	defer keepAlive.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-keepAlive.C:
			if sw.send(": keep-alive\n\n") != nil {
				return
			}
		case res := <-items:
			switch {
			case errors.Is(res.err, io.EOF):
				return
			case res.err != nil:
				if ctx.Err() == nil {
					_ = sw.event(sseEventError, status.Convert(res.err).Proto())
				}
				return
			}
			if sw.item(res.item) != nil {
				return
			}
			keepAlive.Reset(period)
		}
	}
}

// sseWriter writes events and flushes each.
type sseWriter struct {
	w    http.ResponseWriter
	rc   *http.ResponseController
	last string // resume point: the newest message id delivered (or the one the stream resumed after)
}

func (s *sseWriter) send(text string) error {
	if _, err := io.WriteString(s.w, text); err != nil {
		return err
	}
	return s.rc.Flush()
}

// item writes one stream item. A MESSAGE_PERSISTED item of a newer message moves the resume point
// (ids are time-ordered); every event carries the resume point as its id, so a client resuming from
// the last id it saw (a browser's Last-Event-ID) misses nothing and gets nothing twice, even when the
// last event was the edit or deletion of an older message.
func (s *sseWriter) item(it *platformv1.StreamMessagesResponse) error {
	if id := it.GetMessage().GetId(); it.GetType() == platformv1.EventType_EVENT_TYPE_MESSAGE_PERSISTED && id > s.last {
		s.last = id
	}
	return s.event(it.GetType().String(), it)
}

func (s *sseWriter) event(name string, m proto.Message) error {
	data, err := sseMarshal.Marshal(m)
	if err != nil {
		return err
	}
	var b bytes.Buffer
	if s.last != "" && name != sseEventError {
		b.WriteString("id: " + s.last + "\n")
	}
	b.WriteString("event: " + name + "\n")
	// protojson writes one line; a data field per line keeps the event well-formed whatever it writes.
	for _, line := range bytes.Split(data, []byte("\n")) {
		b.WriteString("data: ")
		b.Write(line)
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	return s.send(b.String())
}

// streamStarted is a forward-response option: grpc-gateway calls it with a nil message when a
// streaming call's headers have arrived, before the first item. It writes the HTTP status and headers
// then, so a newline-delimited JSON client sees the stream start (and proxies see a live response) at
// once, not with the first message. A call that ended before it started has no header metadata: its
// error writes the status.
func streamStarted(ctx context.Context, w http.ResponseWriter, m proto.Message) error {
	if m != nil {
		return nil
	}
	if md, ok := runtime.ServerMetadataFromContext(ctx); !ok || len(md.HeaderMD.Get(StreamStartedHeader)) == 0 {
		return nil
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	if err := http.NewResponseController(w).Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	return nil
}

// firstStatus keeps the first status written: once streamStarted has sent 200, grpc-gateway's
// error path for a stream that fails before its first item writes a status again, which net/http
// would only complain about.
type firstStatus struct {
	http.ResponseWriter
	wrote bool
}

func (f *firstStatus) WriteHeader(code int) {
	if f.wrote {
		return
	}
	f.wrote = true
	f.ResponseWriter.WriteHeader(code)
}

func (f *firstStatus) Write(b []byte) (int, error) {
	f.wrote = true
	return f.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection (Flush, deadlines).
func (f *firstStatus) Unwrap() http.ResponseWriter { return f.ResponseWriter }

// Flush keeps the stream flowing.
func (f *firstStatus) Flush() {
	if fl, ok := f.ResponseWriter.(http.Flusher); ok {
		fl.Flush()
	}
}
