// Package apidocs makes the REST API browsable: it completes the generated OpenAPI 3.1 document with
// each operation's access rule (Enrich, run by `make generate`), and serves that document at
// GET /openapi.json and an API explorer (Swagger UI, vendored from the swagger-ui-dist npm package into
// swagger-ui/ by `make explorer-assets`) at GET /docs, both embedded in the binary: the page loads
// nothing from anywhere else.
package apidocs

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"
)

//go:embed swagger-ui page
var files embed.FS

// ContentSecurityPolicy is the policy of the explorer page: scripts, styles, fonts and API calls from
// this origin only (no CDN, no inline script), images from here or inline (Swagger UI's icons).
const ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// assets are the files the page loads, under /docs/: Swagger UI's as npm ships them, and its start-up
// script.
var assets = map[string]string{
	"swagger-ui-bundle.js": "swagger-ui/swagger-ui-bundle.js",
	"swagger-ui.css":       "swagger-ui/swagger-ui.css",
	"favicon-32x32.png":    "swagger-ui/favicon-32x32.png",
	"docs.js":              "page/docs.js",
}

// Register serves, on mux, GET /openapi.json (document, the OpenAPI document) and GET /docs (the API
// explorer) with its files under /docs/. Both are public: they describe the API and hold no data; every
// call the explorer makes goes through the REST API and its access checks like any other.
func Register(mux *http.ServeMux, document []byte) {
	mux.Handle("GET /openapi.json", newFile("openapi.json", document, nil))
	page := mustRead("page/index.html")
	mux.Handle("GET /docs", newFile("index.html", page, map[string]string{
		"Content-Security-Policy": ContentSecurityPolicy,
		"Referrer-Policy":         "no-referrer",
	}))
	handlers := map[string]http.Handler{}
	for name, file := range assets {
		handlers[name] = newFile(name, mustRead(file), nil)
	}
	mux.HandleFunc("GET /docs/{file}", func(w http.ResponseWriter, r *http.Request) {
		if h, ok := handlers[r.PathValue("file")]; ok {
			h.ServeHTTP(w, r)
			return
		}
		http.NotFound(w, r)
	})
	// /docs/ (a trailing slash would break the page's relative URLs) goes to /docs, by a relative URL too.
	mux.HandleFunc("GET /docs/{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Location", "../docs")
		w.WriteHeader(http.StatusMovedPermanently)
	})
}

func mustRead(name string) []byte {
	b, err := fs.ReadFile(files, name)
	if err != nil {
		panic("apidocs: embedded file missing: " + err.Error()) // a build without it is broken
	}
	return b
}

// file is one embedded file served with an ETag (revalidated on every use: a new build serves new
// files at the same URLs) and gzip-compressed when the client accepts it (Swagger UI's script is
// 1.7 MB, 0.5 MB compressed).
type file struct {
	name    string
	body    []byte
	etag    string
	ctype   string
	headers map[string]string
	gz      func() []byte
}

func newFile(name string, body []byte, headers map[string]string) *file {
	sum := sha256.Sum256(body)
	ctype := mime.TypeByExtension(path.Ext(name))
	if ctype == "" {
		ctype = "application/octet-stream"
	}
	f := &file{name: name, body: body, etag: `"` + hex.EncodeToString(sum[:12]) + `"`, ctype: ctype, headers: headers}
	f.gz = sync.OnceValue(func() []byte {
		var b bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
		_, _ = zw.Write(body)
		_ = zw.Close()
		return b.Bytes()
	})
	return f
}

func (f *file) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	for k, v := range f.headers {
		h.Set(k, v)
	}
	h.Set("Content-Type", f.ctype)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-cache")
	h.Set("Vary", "Accept-Encoding")
	body, etag := f.body, f.etag
	if acceptsGzip(r.Header.Get("Accept-Encoding")) && len(f.body) > 1024 {
		body, etag = f.gz(), strings.TrimSuffix(f.etag, `"`)+`-gzip"`
		h.Set("Content-Encoding", "gzip")
	}
	h.Set("ETag", etag)
	http.ServeContent(w, r, f.name, time.Time{}, bytes.NewReader(body))
}

// acceptsGzip reports whether an Accept-Encoding header lists gzip without q=0.
func acceptsGzip(header string) bool {
	for part := range strings.SplitSeq(header, ",") {
		coding, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if !strings.EqualFold(strings.TrimSpace(coding), "gzip") {
			continue
		}
		q := strings.ReplaceAll(params, " ", "")
		return q != "q=0" && q != "q=0.0" && q != "q=0.00" && q != "q=0.000"
	}
	return false
}
