package api_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/testenv"
)

// sseEvent is one server-sent event, or a comment (Comment set, the rest empty).
type sseEvent struct {
	ID, Event, Data, Comment string
	Retry                    string
}

// sseStream reads an event stream in the background, as a browser would parse it.
type sseStream struct {
	resp   *http.Response
	events chan sseEvent
	done   chan error
}

func readSSE(resp *http.Response) *sseStream {
	s := &sseStream{resp: resp, events: make(chan sseEvent, 1024), done: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(resp.Body)
		var ev sseEvent
		var data []string
		for sc.Scan() {
			line := sc.Text()
			if line == "" {
				ev.Data = strings.Join(data, "\n")
				if ev != (sseEvent{}) {
					s.events <- ev
				}
				ev, data = sseEvent{}, nil
				continue
			}
			field, value, _ := strings.Cut(line, ":")
			value = strings.TrimPrefix(value, " ")
			switch field {
			case "":
				s.events <- sseEvent{Comment: value}
			case "id":
				ev.ID = value
			case "event":
				ev.Event = value
			case "data":
				data = append(data, value)
			case "retry":
				ev.Retry = value
			}
		}
		s.done <- sc.Err()
		close(s.events)
	}()
	return s
}

// next returns the next event that is not a comment nor a retry setting.
func (s *sseStream) next(t *testing.T) sseEvent {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-s.events:
			if !ok {
				t.Fatalf("event stream ended: %v", <-s.done)
			}
			if ev.Comment != "" || ev.Event == "" && ev.Data == "" {
				continue
			}
			return ev
		case <-deadline:
			t.Fatal("no event within 10s")
		}
	}
}

// message decodes a message event's data.
func (ev sseEvent) message(t *testing.T) (typ, id, body string) {
	t.Helper()
	var item struct {
		Type    string `json:"type"`
		Message struct {
			ID   string `json:"id"`
			Body string `json:"body"`
		} `json:"message"`
	}
	if err := json.Unmarshal([]byte(ev.Data), &item); err != nil {
		t.Fatalf("event data %q: %v", ev.Data, err)
	}
	return item.Type, item.Message.ID, item.Message.Body
}

// openSSE sends an event stream request; it returns once the response headers are in.
func openSSE(t *testing.T, ctx context.Context, g *gateway, conv string, header http.Header, query url.Values) *http.Response {
	t.Helper()
	u := g.rest + "/v1/conversations/" + conv + "/messages:stream"
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	req.Header.Set("Accept", "text/event-stream")
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = resp.Body.Close() })
	return resp
}

func bearer(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }

func send(t *testing.T, g *gateway, tok, conv, body string) string {
	t.Helper()
	resp, err := g.msgs.SendMessage(as(tok), &platformv1.SendMessageRequest{ConversationId: conv, Body: body})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetMessageId()
}

// waitPersisted waits until the pipeline stored the message.
func waitPersisted(t *testing.T, g *gateway, conv, id string) {
	t.Helper()
	testenv.Eventually(t, "message "+id+" persisted", 10*time.Second, func() bool {
		_, err := g.st.Messages.Get(context.Background(), "t1", conv, id)
		return err == nil
	})
}

// Server-sent events over REST: headers (and the retry setting) as soon as the stream is authorized,
// keep-alive comments while it is quiet, one id/event/data per message, Last-Event-ID resuming with
// every missed message once and in order, the browser's access_token parameter, and errors: before the
// stream starts an HTTP status, after it an `event: error`.
func TestStreamMessagesServerSentEvents(t *testing.T) {
	g := startGatewayWith(t, testenv.Kafka(t), gatewayAndPipeline, map[string]string{"STREAM_KEEPALIVE": "150ms"})
	alice, bob := testenv.Token(t, "alice", "t1"), testenv.Token(t, "bob", "t1")
	conv := newConversation(t, g, alice, "bob")

	ctx, cancel := context.WithCancel(context.Background())
	opened := time.Now()
	resp := openSSE(t, ctx, g, conv, bearer(bob), nil)
	if time.Since(opened) > 5*time.Second || resp.StatusCode != http.StatusOK {
		t.Fatalf("quiet stream: status %d after %s", resp.StatusCode, time.Since(opened))
	}
	for k, want := range map[string]string{"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"} {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if resp.Header.Get("X-Request-Id") == "" {
		t.Error("no X-Request-Id")
	}
	stream := readSSE(resp)
	if ev := <-stream.events; ev.Retry == "" {
		t.Errorf("first event %+v, want the retry setting", ev)
	}
	select {
	case ev := <-stream.events:
		if ev.Comment != "keep-alive" {
			t.Fatalf("quiet stream sent %+v, want a keep-alive comment", ev)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("no keep-alive comment on a quiet stream")
	}

	var sent []string
	for _, body := range []string{"one", "two"} {
		sent = append(sent, send(t, g, alice, conv, body))
	}
	for i, body := range []string{"one", "two"} {
		ev := stream.next(t)
		typ, id, got := ev.message(t)
		if ev.Event != "EVENT_TYPE_MESSAGE_PERSISTED" || typ != ev.Event || id != sent[i] || ev.ID != sent[i] || got != body {
			t.Fatalf("event %d = %+v, want message %s %q", i, ev, sent[i], body)
		}
	}
	cancel() // disconnect

	// Sent while disconnected: replayed after Last-Event-ID, then live, each once.
	for _, body := range []string{"three", "four"} {
		sent = append(sent, send(t, g, alice, conv, body))
	}
	waitPersisted(t, g, conv, sent[3])
	resp = openSSE(t, context.Background(), g, conv, http.Header{"Authorization": {"Bearer " + bob}, "Last-Event-Id": {sent[1]}}, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("resumed stream: %d", resp.StatusCode)
	}
	stream = readSSE(resp)
	sent = append(sent, send(t, g, alice, conv, "five"))
	for i, body := range []string{"three", "four", "five"} {
		ev := stream.next(t)
		if _, id, got := ev.message(t); id != sent[2+i] || ev.ID != sent[2+i] || got != body {
			t.Fatalf("resumed event %d = %+v, want %s %q", i, ev, sent[2+i], body)
		}
	}

	// An edit of an older message keeps the resume point as its id.
	if _, err := g.msgs.UpdateMessage(as(alice), &platformv1.UpdateMessageRequest{ConversationId: conv,
		Message: &platformv1.Message{Id: sent[0], Body: "one, edited"}}); err != nil {
		t.Fatal(err)
	}
	if ev := stream.next(t); ev.Event != "EVENT_TYPE_MESSAGE_UPDATED" || ev.ID != sent[4] {
		t.Fatalf("edit event = %+v, want id %s (the resume point)", ev, sent[4])
	}

	// Removed from the conversation mid-stream: an error event, then the end.
	if _, err := g.conv.RemoveMember(as(alice), &platformv1.RemoveMemberRequest{ConversationId: conv, UserId: "bob"}); err != nil {
		t.Fatal(err)
	}
	ev := stream.next(t)
	var st struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal([]byte(ev.Data), &st); err != nil || ev.Event != "error" || st.Code != int(codes.PermissionDenied) || ev.ID != "" {
		t.Fatalf("after removal: %+v (%v), want an error event with PERMISSION_DENIED", ev, err)
	}
	select {
	case ev, ok := <-stream.events:
		if ok {
			t.Fatalf("after the error event: %+v", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("stream not closed after its error event")
	}
}

// Browsers authenticate an event stream with the access_token query parameter, on the event stream
// route only; refusals before the stream starts are HTTP statuses with the JSON error body.
func TestStreamMessagesServerSentEventsRefusals(t *testing.T) {
	g := startGateway(t, testenv.Kafka(t), gatewayOnly)
	alice, mallory := testenv.Token(t, "alice", "t1"), testenv.Token(t, "mallory", "t1")
	conv := newConversation(t, g, alice)

	for _, tc := range []struct {
		name   string
		header http.Header
		query  url.Values
		accept string
		want   int
	}{
		{"access_token", nil, url.Values{"access_token": {alice}}, "text/event-stream", http.StatusOK},
		{"access_token, accept list", nil, url.Values{"access_token": {alice}}, "application/json, text/event-stream;q=0.9", http.StatusOK},
		{"no token", nil, nil, "text/event-stream", http.StatusUnauthorized},
		{"bad token", nil, url.Values{"access_token": {"not-a-jwt"}}, "text/event-stream", http.StatusUnauthorized},
		{"empty access_token", nil, url.Values{"access_token": {""}}, "text/event-stream", http.StatusUnauthorized},
		{"not a member", bearer(mallory), nil, "text/event-stream", http.StatusForbidden},
		{"access_token without event stream", nil, url.Values{"access_token": {alice}}, "application/json", http.StatusBadRequest},
		{"token twice", bearer(alice), url.Values{"access_token": {alice}}, "text/event-stream", http.StatusBadRequest},
		{"bad Last-Event-ID", http.Header{"Authorization": {"Bearer " + alice}, "Last-Event-Id": {"nope"}}, nil, "text/event-stream", http.StatusBadRequest},
		{"bad after_message_id", bearer(alice), url.Values{"after_message_id": {"nope"}}, "text/event-stream", http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			u := g.rest + "/v1/conversations/" + conv + "/messages:stream"
			if tc.query != nil {
				u += "?" + tc.query.Encode()
			}
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
			req.Header = tc.header.Clone()
			if req.Header == nil {
				req.Header = http.Header{}
			}
			req.Header.Set("Accept", tc.accept)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.want)
			}
			if tc.want == http.StatusOK {
				if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
					t.Errorf("Content-Type %q", ct)
				}
				return
			}
			var body struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.Code == 0 {
				t.Errorf("error body: %+v, %v", body, err)
			}
		})
	}
	if strings.Contains(g.logs.String(), alice) {
		t.Error("a token reached the logs")
	}
	// Every 401 above, the empty access_token refused before the edge included, is counted.
	waitMetric(t, g, `platform_unauthenticated_total{transport="rest"} 3`)
}

// Newline-delimited JSON (no event stream asked for) sends its status and headers as soon as the stream
// is authorized, before any message: a client can tell a live stream from a hung one.
func TestStreamMessagesNDJSONHeadersFirst(t *testing.T) {
	g := startGateway(t, testenv.Kafka(t), gatewayOnly)
	alice := testenv.Token(t, "alice", "t1")
	conv := newConversation(t, g, alice)

	for _, tc := range []struct {
		name, tok string
		want      int
	}{
		{"member", alice, http.StatusOK},
		{"not a member", testenv.Token(t, "mallory", "t1"), http.StatusForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second) // curl -i -m 4
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, g.rest+"/v1/conversations/"+conv+"/messages:stream", nil)
			req.Header.Set("Authorization", "Bearer "+tc.tok)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatalf("no response headers on a quiet stream: %v", err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tc.want || resp.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("status %d, Content-Type %q; want %d, application/json", resp.StatusCode, resp.Header.Get("Content-Type"), tc.want)
			}
			if tc.want != http.StatusOK {
				return
			}
			persist(t, g, store.Message{ID: "01HC0000000000000000000001", TenantID: "t1", ConversationID: conv, SenderID: "alice", Body: "v1"})
			if _, err := g.msgs.UpdateMessage(as(alice), &platformv1.UpdateMessageRequest{ConversationId: conv,
				Message: &platformv1.Message{Id: "01HC0000000000000000000001", Body: "v2"}}); err != nil {
				t.Fatal(err)
			}
			line, err := bufio.NewReader(resp.Body).ReadString('\n')
			if err != nil || !strings.Contains(line, `"EVENT_TYPE_MESSAGE_UPDATED"`) {
				t.Fatalf("first line %q, %v", line, err)
			}
		})
	}
}
