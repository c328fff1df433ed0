package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/msgplatform/platform/internal/testenv"
	"github.com/msgplatform/platform/internal/testenv/browser"
)

// ssePage reads a conversation's stream with a browser's own EventSource, authenticated with the
// access_token query parameter, and keeps what it received for the test to read.
const ssePage = `<!doctype html>
<html><head><meta charset="utf-8"><title>stream</title></head><body>
<script>
const params = new URLSearchParams(location.hash.slice(1));
const state = {received: [], opens: 0, serverErrors: []};
const es = new EventSource("/v1/conversations/" + encodeURIComponent(params.get("conv")) +
  "/messages:stream?access_token=" + encodeURIComponent(params.get("token")));
es.onopen = () => { state.opens++; };
es.addEventListener("EVENT_TYPE_MESSAGE_PERSISTED", (e) => {
  const item = JSON.parse(e.data);
  state.received.push({lastEventId: e.lastEventId, id: item.message.id, body: item.message.body});
});
es.addEventListener("error", (e) => { if (e.data) state.serverErrors.push(e.data); });
window.streamState = () => JSON.stringify(Object.assign({readyState: es.readyState}, state));
</script>
</body></html>`

// streamProxy is the page's origin: it serves the page and passes everything else on to the gateway, as
// a web app's reverse proxy would. It can drop the live event stream, and hold the browser's reconnection
// until the test lets it through.
type streamProxy struct {
	proxy *httputil.ReverseProxy

	mu       sync.Mutex
	drop     context.CancelFunc // ends the stream being proxied
	hold     chan struct{}      // non-nil: stream requests wait until it is closed
	held     chan string        // the Last-Event-ID of each held request
	lastSeen []string           // Last-Event-ID of every stream request
}

func (p *streamProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/page" {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write([]byte(ssePage))
		return
	}
	if !strings.HasSuffix(r.URL.Path, ":stream") {
		p.proxy.ServeHTTP(w, r)
		return
	}
	p.mu.Lock()
	p.lastSeen = append(p.lastSeen, r.Header.Get("Last-Event-ID"))
	hold, held := p.hold, p.held
	p.mu.Unlock()
	if hold != nil {
		held <- r.Header.Get("Last-Event-ID")
		select {
		case <-hold:
		case <-r.Context().Done():
			return
		}
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	p.mu.Lock()
	p.drop = cancel
	p.mu.Unlock()
	p.proxy.ServeHTTP(w, r.WithContext(ctx))
}

// disconnect holds the next stream requests and ends the current stream.
func (p *streamProxy) disconnect() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hold, p.held = make(chan struct{}), make(chan string, 4)
	if p.drop != nil {
		p.drop()
	}
}

// reconnect lets held and later stream requests through.
func (p *streamProxy) reconnect() {
	p.mu.Lock()
	defer p.mu.Unlock()
	close(p.hold)
	p.hold = nil
}

type pageState struct {
	ReadyState int `json:"readyState"`
	Opens      int `json:"opens"`
	Received   []struct {
		LastEventID string `json:"lastEventId"`
		ID          string `json:"id"`
		Body        string `json:"body"`
	} `json:"received"`
	ServerErrors []string `json:"serverErrors"`
}

// A browser's EventSource reads StreamMessages over REST (server-sent events, token in access_token):
// the connection is dropped, messages are sent while the browser is away, and when it reconnects on its
// own (sending Last-Event-ID itself) it receives every missed message, then the live ones, each exactly
// once and in order.
func TestStreamMessagesEventSourceInChromium(t *testing.T) {
	ctx := browser.New(t, 2*time.Minute)
	g := startGateway(t, testenv.Kafka(t), gatewayAndPipeline)
	alice, bob := testenv.Token(t, "alice", "t1"), testenv.Token(t, "bob", "t1")
	conv := newConversation(t, g, alice, "bob")

	target, err := url.Parse(g.rest)
	if err != nil {
		t.Fatal(err)
	}
	proxy := &streamProxy{proxy: httputil.NewSingleHostReverseProxy(target)}
	proxy.proxy.FlushInterval = -1
	proxy.proxy.ErrorLog = nil
	origin := httptest.NewServer(proxy)
	t.Cleanup(func() {
		origin.CloseClientConnections() // the browser's stream: Close waits for every request to end
		origin.Close()
	})

	state := func() pageState {
		t.Helper()
		raw, err := chromedp.Run(ctx, chromedp.Evaluate[string](`window.streamState ? window.streamState() : "{}"`))
		if err != nil {
			t.Fatal(err)
		}
		var s pageState
		if err := json.Unmarshal([]byte(raw), &s); err != nil {
			t.Fatalf("page state %q: %v", raw, err)
		}
		return s
	}
	waitFor := func(what string, cond func(pageState) bool) pageState {
		t.Helper()
		var last pageState
		testenv.Eventually(t, what, 30*time.Second, func() bool {
			last = state()
			return cond(last)
		})
		return last
	}

	page := origin.URL + "/page#" + url.Values{"conv": {conv}, "token": {bob}}.Encode()
	if err := chromedp.Do(ctx, chromedp.Navigate(page)); err != nil {
		t.Fatal(err)
	}
	waitFor("the EventSource open", func(s pageState) bool { return s.Opens == 1 && s.ReadyState == 1 })

	var sent []string
	for i := 1; i <= 2; i++ {
		sent = append(sent, send(t, g, alice, conv, fmt.Sprintf("m%d", i)))
	}
	waitFor("the first two messages", func(s pageState) bool { return len(s.Received) >= 2 })

	// Dropped: the browser reconnects by itself, and waits at the proxy while three more are sent.
	proxy.disconnect()
	var lastEventID string
	select {
	case lastEventID = <-proxy.held:
	case <-time.After(30 * time.Second):
		t.Fatal("the browser did not reconnect")
	}
	if lastEventID != sent[1] {
		t.Errorf("the browser reconnected with Last-Event-ID %q, want %s", lastEventID, sent[1])
	}
	for i := 3; i <= 5; i++ {
		sent = append(sent, send(t, g, alice, conv, fmt.Sprintf("m%d", i)))
	}
	waitPersisted(t, g, conv, sent[len(sent)-1])
	proxy.reconnect()
	waitFor("the missed messages", func(s pageState) bool { return len(s.Received) >= 5 && s.Opens == 2 })
	sent = append(sent, send(t, g, alice, conv, "m6"))
	final := waitFor("the live message after the reconnection", func(s pageState) bool { return len(s.Received) >= 6 })
	time.Sleep(500 * time.Millisecond) // anything more would be a duplicate
	final = state()

	var got []string
	for i, r := range final.Received {
		got = append(got, r.ID)
		if r.LastEventID != r.ID || r.Body != fmt.Sprintf("m%d", i+1) {
			t.Errorf("event %d: %+v (lastEventId must be the message id)", i, r)
		}
	}
	if !slices.Equal(got, sent) {
		t.Errorf("the browser received\n%v\nwant each message once, in order\n%v", got, sent)
	}
	if final.Opens != 2 || len(final.ServerErrors) != 0 {
		t.Errorf("opens %d, server errors %v; want 2 and none", final.Opens, final.ServerErrors)
	}
	proxy.mu.Lock()
	defer proxy.mu.Unlock()
	if len(proxy.lastSeen) != 2 || proxy.lastSeen[0] != "" {
		t.Errorf("stream requests with Last-Event-ID %q, want a first one without and one reconnection", proxy.lastSeen)
	}
	if strings.Contains(g.logs.String(), bob) {
		t.Error("the access_token reached the logs")
	}
}
