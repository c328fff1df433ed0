package apidocs_test

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/msgplatform/platform/gen/openapiv3"
	"github.com/msgplatform/platform/internal/apidocs"
)

func serve(t *testing.T) string {
	t.Helper()
	mux := http.NewServeMux()
	apidocs.Register(mux, openapiv3.Document)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL
}

func get(t *testing.T, url string, header ...string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	// A transport that leaves Accept-Encoding and the body as the server sent them.
	resp, err := (&http.Transport{DisableCompression: true}).RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// GET /openapi.json serves the committed document as is, needs no token, revalidates by ETag, and is
// gzip-compressed only for clients that accept it.
func TestServesTheDocument(t *testing.T) {
	base := serve(t)
	resp, body := get(t, base+"/openapi.json")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" ||
		resp.Header.Get("Content-Encoding") != "" || !bytes.Equal(body, openapiv3.Document) {
		t.Fatalf("GET /openapi.json = %d %q %q, %d bytes; want the document (%d bytes)", resp.StatusCode,
			resp.Header.Get("Content-Type"), resp.Header.Get("Content-Encoding"), len(body), len(openapiv3.Document))
	}
	etag := resp.Header.Get("ETag")
	if resp, _ := get(t, base+"/openapi.json", "If-None-Match", etag); etag == "" || resp.StatusCode != http.StatusNotModified {
		t.Errorf("If-None-Match %s = %d, want 304", etag, resp.StatusCode)
	}
	resp, body = get(t, base+"/openapi.json", "Accept-Encoding", "br, gzip")
	if resp.Header.Get("Content-Encoding") != "gzip" || resp.Header.Get("Vary") != "Accept-Encoding" {
		t.Fatalf("with Accept-Encoding gzip: Content-Encoding %q Vary %q", resp.Header.Get("Content-Encoding"), resp.Header.Get("Vary"))
	}
	zr, err := gzip.NewReader(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if plain, err := io.ReadAll(zr); err != nil || !bytes.Equal(plain, openapiv3.Document) {
		t.Errorf("the gzip body is not the document (%v)", err)
	}
	if resp, _ := get(t, base+"/openapi.json", "Accept-Encoding", "gzip;q=0"); resp.Header.Get("Content-Encoding") != "" {
		t.Errorf("gzip;q=0 got Content-Encoding %q", resp.Header.Get("Content-Encoding"))
	}
}

// GET /docs is the explorer page under a strict Content-Security-Policy, and every file it refers to is
// served from here, by a relative URL (so the page works behind a path prefix).
func TestServesTheExplorer(t *testing.T) {
	base := serve(t)
	resp, page := get(t, base+"/docs")
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /docs = %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	csp := resp.Header.Get("Content-Security-Policy")
	for _, directive := range []string{"default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, directive+";") && !strings.HasSuffix(csp, directive) {
			t.Errorf("Content-Security-Policy %q lacks %q", csp, directive)
		}
	}
	if strings.Contains(csp, "unsafe-") || strings.Contains(csp, "http") {
		t.Errorf("Content-Security-Policy %q allows inline code or another origin", csp)
	}
	if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Error("no X-Content-Type-Options: nosniff")
	}
	if bytes.Contains(page, []byte("<script>")) || bytes.Contains(page, []byte("style=")) {
		t.Error("the page has inline script or style, which its policy forbids")
	}
	refs := regexp.MustCompile(`(?:src|href)="([^"]+)"`).FindAllSubmatch(page, -1)
	if len(refs) < 4 {
		t.Fatalf("the page refers to %d files", len(refs))
	}
	types := map[string]string{".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}
	for _, m := range refs {
		ref := string(m[1])
		if strings.Contains(ref, ":") || strings.HasPrefix(ref, "/") {
			t.Errorf("the page refers to %s: not a relative URL of this server", ref)
			continue
		}
		resp, body := get(t, base+"/"+ref)
		if resp.StatusCode != http.StatusOK || len(body) == 0 ||
			!strings.HasPrefix(resp.Header.Get("Content-Type"), types[filepath.Ext(ref)]) {
			t.Errorf("GET /%s = %d %q, %d bytes", ref, resp.StatusCode, resp.Header.Get("Content-Type"), len(body))
		}
	}
	if resp, _ := get(t, base+"/docs/LICENSE"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /docs/LICENSE (not a page asset) = %d, want 404", resp.StatusCode)
	}
	if resp, _ := get(t, base+"/docs/"); resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "../docs" {
		t.Errorf("GET /docs/ = %d → %q, want 301 → ../docs", resp.StatusCode, resp.Header.Get("Location"))
	}
}

// The vendored Swagger UI is the swagger-ui-dist version tools/package.json pins, byte for byte when
// `make tools` installed it (`make explorer-assets` refreshes the copy).
func TestVendoredSwaggerUIIsThePinnedPackage(t *testing.T) {
	var pinned struct {
		DevDependencies map[string]string `json:"devDependencies"`
	}
	var vendored struct{ Version string }
	for file, v := range map[string]any{"../../tools/package.json": &pinned, "swagger-ui/package.json": &vendored} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
	}
	if want := pinned.DevDependencies["swagger-ui-dist"]; vendored.Version == "" || vendored.Version != want {
		t.Fatalf("internal/apidocs/swagger-ui is swagger-ui-dist %q, tools/package.json pins %q: run make explorer-assets", vendored.Version, want)
	}
	installed := "../../tools/node_modules/swagger-ui-dist"
	if _, err := os.Stat(installed); err != nil {
		t.Logf("NOTICE: %s is not installed (make tools): only the version is compared", installed)
		return
	}
	files, err := os.ReadDir("swagger-ui")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		got, _ := os.ReadFile(filepath.Join("swagger-ui", f.Name()))
		want, err := os.ReadFile(filepath.Join(installed, f.Name()))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("swagger-ui/%s differs from the npm package's (%v): run make explorer-assets", f.Name(), err)
		}
	}
}
