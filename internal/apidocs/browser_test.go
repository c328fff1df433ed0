package apidocs_test

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/msgplatform/platform/internal/apidocs"
	"github.com/msgplatform/platform/internal/app"
	"github.com/msgplatform/platform/internal/app/apptest"
	"github.com/msgplatform/platform/internal/testenv"
	"github.com/msgplatform/platform/internal/testenv/browser"
)

// TestExplorerInChromium opens GET /docs of a real gateway (app.Run over Kafka, FerretDB and Redis) in
// headless Chromium, as a person would: the page lists every REST operation, loads nothing from another
// origin and breaks no rule of its Content-Security-Policy; then it authorizes with a bearer token,
// creates a conversation with "Try it out" on CreateConversation, and the conversation exists. The
// screenshot is left outside the repository (logged).
func TestExplorerInChromium(t *testing.T) {
	ctx := browser.New(t, 2*time.Minute)
	mongoURI := testenv.SharedMongo(t)
	cfg := testenv.Config(t, map[string]string{
		"KAFKA_BROKERS": testenv.Kafka(t), "MONGO_URI": mongoURI, "MONGO_DATABASE": testenv.MongoDatabase(t, mongoURI),
		"REDIS_URL": testenv.Redis(t),
	})
	p := apptest.Start(t, cfg, app.Roles{Gateway: true}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	base := "http://" + p.HTTP
	token := testenv.Token(t, "explorer-user", "t-docs")

	// Every request the page makes, to prove it stays on this origin.
	var mu sync.Mutex
	var requested []string
	if _, err := chromedp.Call(ctx, network.Enable, network.EnableParams{}); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Listen(ctx, func(ev any) {
		if e, ok := ev.(*network.EventRequestWillBeSent); ok {
			mu.Lock()
			requested = append(requested, e.Request.URL)
			mu.Unlock()
		}
	}); err != nil {
		t.Fatal(err)
	}
	// Every breach of the page's Content-Security-Policy, as the page itself sees them.
	if _, err := chromedp.Call(ctx, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{
		Source: `window.__csp = [];
			document.addEventListener("securitypolicyviolation",
				e => window.__csp.push(e.violatedDirective + " " + e.blockedURI));`,
	}); err != nil {
		t.Fatal(err)
	}
	screenshot := filepath.Join(browser.ArtifactDir(t), "api-explorer.png")
	var shot []byte
	defer func() {
		if len(shot) == 0 { // the test failed before the end: keep what the page showed then
			shot, _ = chromedp.Run(ctx, chromedp.FullScreenshot(100))
		}
		if len(shot) > 0 {
			if err := os.WriteFile(screenshot, shot, 0o644); err == nil {
				t.Logf("screenshot of the API explorer: %s", screenshot)
			}
		}
	}()

	// The page lists every operation of the document: Swagger UI gives each one the element id
	// operations-<tag>-<operationId>.
	methods, err := apidocs.OperationMethods()
	if err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"/docs"), chromedp.WaitVisible(chromedp.CSS(".opblock"))); err != nil {
		t.Fatalf("load /docs: %v", err)
	}
	ids, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`[...document.querySelectorAll(".opblock")].map(e => e.id)`))
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, id := range ids {
		_, opID, _ := strings.Cut(strings.TrimPrefix(id, "operations-"), "-")
		listed = append(listed, opID)
	}
	for opID, method := range methods {
		if !slices.Contains(listed, opID) {
			t.Errorf("the page does not list %s (%s); it lists %v", opID, method, listed)
		}
	}
	if len(listed) != len(methods) {
		t.Errorf("the page lists %d operations, the API has %d", len(listed), len(methods))
	}

	// Authorize with the token, then Try it out → Execute on CreateConversation.
	const title = "created from the API explorer"
	op := `#operations-ConversationService-ConversationService_CreateConversation`
	err = chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`.auth-wrapper button.authorize`)),
		chromedp.WaitVisible(chromedp.CSS(`.modal-ux input`)),
		chromedp.SendKeys(chromedp.CSS(`.modal-ux input`), token),
		chromedp.Click(chromedp.CSS(`.modal-ux .auth-btn-wrapper button.authorize`)),
		chromedp.WaitVisible(chromedp.CSS(`.modal-ux .auth-btn-wrapper button.btn-done`)),
		chromedp.Click(chromedp.CSS(`.modal-ux .auth-btn-wrapper button.btn-done`)),
		chromedp.WaitNotPresent(chromedp.CSS(`.modal-ux`)),
		chromedp.Click(chromedp.CSS(op+` .opblock-summary-control`)),
		chromedp.Click(chromedp.CSS(op+` button.try-out__btn`)),
		chromedp.WaitVisible(chromedp.CSS(op+` textarea.body-param__text`)),
		// React owns the textarea: set its value as typing would, and tell React.
		chromedp.Evaluate[chromedp.Void](`(() => {
			const ta = document.querySelector("`+op+` textarea.body-param__text");
			Object.getOwnPropertyDescriptor(HTMLTextAreaElement.prototype, "value").set.call(ta,
				JSON.stringify({title: "`+title+`"}));
			ta.dispatchEvent(new Event("input", {bubbles: true}));
		})()`),
		chromedp.Click(chromedp.CSS(op+` button.execute`)),
		chromedp.WaitVisible(chromedp.CSS(op+` .live-responses-table tr.response .response-col_status`)),
	)
	if err != nil {
		t.Fatalf("try CreateConversation from the page: %v", err)
	}
	status, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(op+` .live-responses-table tr.response .response-col_status`)))
	if err != nil {
		t.Fatal(err)
	}
	body, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(op+` .live-responses-table tr.response .response-col_description pre`)))
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(status) != "200" {
		t.Fatalf("CreateConversation from the page answered %q: %s", status, body)
	}
	var created struct {
		Conversation struct{ ID, Title string }
	}
	if err := json.Unmarshal([]byte(body), &created); err != nil || created.Conversation.ID == "" {
		t.Fatalf("the page shows no created conversation (%v): %s", err, body)
	}

	// The conversation exists, for the caller whose token the page used.
	req, _ := http.NewRequest(http.MethodGet, base+"/v1/conversations/"+created.Conversation.ID, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(got), title) {
		t.Errorf("GET the conversation the page created = %d %s", resp.StatusCode, got)
	}

	violations, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`window.__csp ?? ["the violation listener never ran"]`))
	if err != nil {
		t.Fatal(err)
	}
	if len(violations) > 0 {
		t.Errorf("the page broke its Content-Security-Policy: %v", violations)
	}
	if shot, err = chromedp.Run(ctx, chromedp.FullScreenshot(100)); err != nil {
		t.Error(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, u := range requested {
		if !strings.HasPrefix(u, base+"/") && !strings.HasPrefix(u, "data:") {
			t.Errorf("the page loaded %s, not from %s", u, base)
		}
	}
	if !slices.Contains(requested, base+"/openapi.json") {
		t.Errorf("the page did not load %s/openapi.json: %v", base, requested)
	}
}
