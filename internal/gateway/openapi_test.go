package gateway_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/msgplatform/platform/internal/apidocs"
	"github.com/msgplatform/platform/internal/app"
	"github.com/msgplatform/platform/internal/app/apptest"
	"github.com/msgplatform/platform/internal/authz"
	"github.com/msgplatform/platform/internal/gateway"
	"github.com/msgplatform/platform/internal/testenv"
)

// TestOpenAPIDocument fetches GET /openapi.json from a running gateway without a token: it is a valid
// OpenAPI 3 document (kin-openapi validates it), it has exactly one operation for every REST route of
// the google.api.http options (the routes the REST edge knows), calling the same gRPC method, and every
// operation's description states that method's access rule (its permission, or that it is public) and
// requires the declared bearer JWT scheme unless the rule is public.
func TestOpenAPIDocument(t *testing.T) {
	mongoURI := testenv.SharedMongo(t)
	cfg := testenv.Config(t, map[string]string{
		"KAFKA_BROKERS": testenv.Kafka(t), "MONGO_URI": mongoURI, "MONGO_DATABASE": testenv.MongoDatabase(t, mongoURI),
		"REDIS_URL": testenv.Redis(t),
	})
	p := apptest.Start(t, cfg, app.Roles{Gateway: true}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	resp, err := http.Get("http://" + p.HTTP + "/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("GET /openapi.json without a token = %d %s: %.200s", resp.StatusCode, resp.Header.Get("Content-Type"), raw)
	}

	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(raw)
	if err != nil {
		t.Fatalf("not an OpenAPI document: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi = %q, want 3.x", doc.OpenAPI)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("the OpenAPI document is invalid: %v", err)
	}
	scheme := doc.Components.SecuritySchemes[apidocs.BearerScheme]
	if scheme == nil || scheme.Value.Type != "http" || scheme.Value.Scheme != "bearer" || scheme.Value.BearerFormat != "JWT" {
		t.Fatalf("security scheme %s = %+v, want http bearer JWT", apidocs.BearerScheme, scheme)
	}

	routes, err := gateway.RESTRoutes()
	if err != nil {
		t.Fatal(err)
	}
	// The document's operations by route, variables unnamed: OpenAPI forbids two templates that differ
	// only in their names, so {conversation.id} is written {conversation_id} there.
	type operation struct {
		id, description string
		security        *openapi3.SecurityRequirements
	}
	ops := map[string]operation{}
	for path, item := range doc.Paths.Map() {
		for verb, op := range item.Operations() {
			ops[verb+" "+anonymous(path)] = operation{op.OperationID, op.Description, op.Security}
		}
	}
	if len(ops) != len(routes) {
		t.Errorf("the document has %d operations, the REST surface %d routes", len(ops), len(routes))
	}
	for route, method := range routes {
		verb, path, _ := strings.Cut(route, " ")
		op, ok := ops[verb+" "+anonymous(path)]
		if !ok {
			t.Errorf("%s (%s) is not in the document", route, method)
			continue
		}
		svc, name, _ := strings.Cut(method[strings.LastIndex(method, ".")+1:], "/")
		if op.id != svc+"_"+name {
			t.Errorf("%s: operationId %s, want %s_%s (it calls %s)", route, op.id, svc, name, method)
		}
		rule, err := authz.RuleOf(method)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(op.description, rule.Describe()) {
			t.Errorf("%s: the description does not state the access rule %q:\n%s", route, rule.Describe(), op.description)
		}
		if rule.Public {
			if !strings.Contains(op.description, "public") || op.security == nil || len(*op.security) != 0 {
				t.Errorf("%s is public: description %q, security %v, want security []", route, op.description, op.security)
			}
			continue
		}
		if !strings.Contains(op.description, "`"+string(rule.Permission)+"`") {
			t.Errorf("%s: the description does not name permission %s: %q", route, rule.Permission, op.description)
		}
		security := doc.Security
		if op.security != nil {
			security = *op.security
		}
		sec, _ := json.Marshal(security)
		if string(sec) != `[{"`+apidocs.BearerScheme+`":[]}]` {
			t.Errorf("%s: security %s, want the bearer scheme", route, sec)
		}
	}
}

var templateVar = regexp.MustCompile(`\{[^}]*\}`)

func anonymous(path string) string { return templateVar.ReplaceAllString(path, "{}") }
