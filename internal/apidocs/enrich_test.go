package apidocs

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/msgplatform/platform/gen/openapiv3"
)

// generatorOutput turns the committed document back into what protoc-gen-openapiv3 and openapiv3-merge
// write: no operation descriptions, no security, the generator's info.
func generatorOutput(t *testing.T, doc []byte) []byte {
	t.Helper()
	var d object
	if err := json.Unmarshal(doc, &d); err != nil {
		t.Fatal(err)
	}
	var paths, components object
	must(t, d.get("paths", &paths))
	for _, path := range paths.keys {
		var item object
		must(t, paths.get(path, &item))
		for _, verb := range item.keys {
			var op object
			must(t, item.get(verb, &op))
			op.remove("description")
			op.remove("security")
			undoEventStream(t, &op)
			item.set(verb, op)
		}
		paths.set(path, item)
	}
	d.set("paths", paths)
	must(t, d.get("components", &components))
	components.remove("securitySchemes")
	d.set("components", components)
	d.remove("security")
	d.set("info", map[string]string{"title": "conversations", "version": "1.0.0"})
	out, err := json.Marshal(d)
	must(t, err)
	return out
}

// undoEventStream removes what describeEventStream added to an operation.
func undoEventStream(t *testing.T, op *object) {
	t.Helper()
	var id string
	_ = op.get("operationId", &id)
	if id != "MessageService_StreamMessages" {
		return
	}
	var responses, ok200, content object
	must(t, op.get("responses", &responses))
	must(t, responses.get("200", &ok200))
	must(t, ok200.get("content", &content))
	content.remove("text/event-stream")
	ok200.set("content", content)
	responses.set("200", ok200)
	op.set("responses", responses)
	var params []json.RawMessage
	must(t, op.get("parameters", &params))
	op.set("parameters", params[:len(params)-1])
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func (o *object) remove(key string) {
	if _, ok := o.vals[key]; !ok {
		return
	}
	delete(o.vals, key)
	for i, k := range o.keys {
		if k == key {
			o.keys = append(o.keys[:i], o.keys[i+1:]...)
			return
		}
	}
}

// Enrich is a function of the generator's output and the linked access rules: stripping what it adds
// from the committed document and enriching again gives the committed document (the path merge is
// idempotent), byte for byte.
func TestEnrichReproducesTheCommittedDocument(t *testing.T) {
	got, err := Enrich(generatorOutput(t, openapiv3.Document))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, openapiv3.Document) {
		t.Errorf("Enrich(generator output) differs from gen/openapiv3/platform.openapi.json: run make generate")
	}
}

// An operation that calls no platform method, a method left out, or another document is refused.
func TestEnrichRefusesWhatItCannotVouchFor(t *testing.T) {
	base := generatorOutput(t, openapiv3.Document)
	var stray object
	must(t, json.Unmarshal(base, &stray))
	var paths object
	must(t, stray.get("paths", &paths))
	paths.set("/v1/stray", map[string]any{"get": map[string]any{"operationId": "StrayService_Get"}})
	stray.set("paths", paths)
	strayDoc, _ := json.Marshal(stray)

	var missing object
	must(t, json.Unmarshal(base, &missing))
	must(t, missing.get("paths", &paths))
	paths.remove("/v1/health")
	missing.set("paths", paths)
	missingDoc, _ := json.Marshal(missing)

	for name, tc := range map[string]struct {
		doc  []byte
		want string
	}{
		"unknown operation": {strayDoc, "StrayService_Get"},
		"missing operation": {missingDoc, "GetHealth"},
		"OpenAPI 2":         {[]byte(`{"swagger": "2.0", "paths": {}}`), "not an OpenAPI 3 document"},
		"not JSON":          {[]byte(`<html>`), "openapi document"},
	} {
		if _, err := Enrich(tc.doc); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Enrich error %v, want one naming %q", name, err, tc.want)
		}
	}
}

// Templates that differ only in their variables' names become one path item (OpenAPI forbids the pair);
// the moved operation's path parameters take the first's names; a clash of verbs is an error.
func TestMergeEquivalentPaths(t *testing.T) {
	var paths object
	must(t, json.Unmarshal([]byte(`{
		"/v1/c/{c_id}": {"get": {"operationId": "A"}},
		"/v1/c/{c.id}": {"patch": {"operationId": "B", "parameters": [
			{"name": "c.id", "in": "path", "description": "Id."}, {"name": "mask", "in": "query"}]}}
	}`), &paths))
	merged, err := mergeEquivalentPaths(paths)
	must(t, err)
	got, _ := json.Marshal(merged)
	want := `{"/v1/c/{c_id}":{"get":{"operationId":"A"},"patch":{"operationId":"B","parameters":[` +
		`{"name":"c_id","in":"path","description":"Id.\n\nFills the request's ` + "`c.id`" + `."},{"name":"mask","in":"query"}]}}}`
	if string(got) != want {
		t.Errorf("merged\n%s\nwant\n%s", got, want)
	}
	must(t, json.Unmarshal([]byte(`{"/v1/c/{a}": {"get": {}}, "/v1/c/{b}": {"get": {}}}`), &paths))
	if _, err := mergeEquivalentPaths(paths); err == nil || !strings.Contains(err.Error(), "same route") {
		t.Errorf("two GETs on one route: %v", err)
	}
}

// The stream route's server-sent events are in the document (its 200 content and the access_token
// parameter), and nothing else claims them.
func TestDocumentDescribesTheEventStream(t *testing.T) {
	var d, paths object
	must(t, json.Unmarshal(openapiv3.Document, &d))
	must(t, d.get("paths", &paths))
	found := 0
	for _, path := range paths.keys {
		var item object
		must(t, paths.get(path, &item))
		for _, verb := range item.keys {
			var op struct {
				OperationID string `json:"operationId"`
				Parameters  []struct {
					Name, In string
				}
				Responses map[string]struct {
					Content map[string]json.RawMessage
				}
			}
			if !isOperation(verb) {
				continue
			}
			must(t, item.get(verb, &op))
			_, sse := op.Responses["200"].Content["text/event-stream"]
			token := false
			for _, p := range op.Parameters {
				token = token || (p.Name == AccessTokenParam && p.In == "query")
			}
			if stream := op.OperationID == "MessageService_StreamMessages"; sse != stream || token != stream {
				t.Errorf("%s %s: text/event-stream %v, access_token %v", verb, path, sse, token)
			}
			if sse {
				found++
			}
		}
	}
	if found != 1 {
		t.Errorf("%d operations with server-sent events, want 1", found)
	}
}
