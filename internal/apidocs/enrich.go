package apidocs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/msgplatform/platform/internal/authz"
)

// Package is the proto package whose services the document describes.
const Package = "platform.v1"

// BearerScheme is the name of the document's security scheme: a JWT in the Authorization header.
const BearerScheme = "bearerAuth"

// info is the document's title and introduction (protoc-gen-openapiv3 names it after a file).
var info = map[string]any{
	"title":   "Messaging platform API",
	"version": "v1",
	"description": "The REST surface of the platform's gRPC services (grpc-gateway). JSON is protojson: " +
		"lowerCamelCase field names, enum values by their full names, 64-bit integers as strings.\n\n" +
		"Every operation but the public ones needs a bearer JWT (`Authorization: Bearer <token>`, see the " +
		"`" + BearerScheme + "` scheme); each operation's description states its access rule. A missing or " +
		"invalid token is 401, a permission not held 403, a resource of another tenant 404.",
}

// securityScheme is the bearer JWT every non-public operation requires.
var securityScheme = map[string]any{
	"type":         "http",
	"scheme":       "bearer",
	"bearerFormat": "JWT",
	"description": "A JWT with the claims `sub` (user id), `tenant_id`, `roles` (platform roles) and `exp`. " +
		"On the devstack, `make token SUB=alice TENANT=t1 ROLES=user` prints one.",
}

// Enrich completes the OpenAPI 3.1 document that protoc-gen-openapiv3 writes (one per .proto file,
// joined by openapiv3-merge) with what the generator cannot know: the title, the bearer scheme, and for
// every operation its access rule, read from the method's (platform.v1.access) option through authz
// (the same rule the interceptor enforces): the description states it (authz.Rule.Describe) and
// `security` requires the bearer token unless the rule is public. It fails when an operation matches no
// platform method, a method with an HTTP binding has no operation, or a method has no valid rule.
// Key order is kept, so the output diffs cleanly against the generator's.
func Enrich(merged []byte) ([]byte, error) {
	var doc object
	if err := json.Unmarshal(merged, &doc); err != nil {
		return nil, fmt.Errorf("openapi document: %w", err)
	}
	var version string
	if err := doc.get("openapi", &version); err != nil || len(version) < 2 || version[:2] != "3." {
		return nil, fmt.Errorf("not an OpenAPI 3 document (openapi %q)", version)
	}
	methods, err := OperationMethods()
	if err != nil {
		return nil, err
	}
	var paths object
	if err := doc.get("paths", &paths); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, path := range paths.keys {
		var item object
		if err := paths.get(path, &item); err != nil {
			return nil, err
		}
		for _, verb := range item.keys {
			if !isOperation(verb) {
				continue
			}
			var op object
			if err := item.get(verb, &op); err != nil {
				return nil, err
			}
			var id string
			_ = op.get("operationId", &id)
			method, ok := methods[id]
			if !ok {
				return nil, fmt.Errorf("%s %s: operationId %q is no %s method", verb, path, id, Package)
			}
			seen[id] = true
			rule, err := authz.RuleOf(method)
			if err != nil {
				return nil, err
			}
			desc := rule.Describe()
			var generated string
			if op.get("description", &generated) == nil && generated != "" {
				desc = generated + "\n\n" + desc
			}
			op.set("description", desc)
			security := []map[string][]string{{BearerScheme: {}}}
			if rule.Public {
				security = []map[string][]string{} // public: overrides the document's requirement
			}
			op.set("security", security)
			if method == EventStreamMethod {
				if err := describeEventStream(&op); err != nil {
					return nil, fmt.Errorf("%s %s: %w", verb, path, err)
				}
			}
			item.set(verb, op)
		}
		paths.set(path, item)
	}
	for id, method := range methods {
		if !seen[id] {
			return nil, fmt.Errorf("%s has an HTTP binding but no operation %q in the document", method, id)
		}
	}
	if paths, err = mergeEquivalentPaths(paths); err != nil {
		return nil, err
	}
	doc.set("paths", paths)

	var components object
	if doc.has("components") {
		if err := doc.get("components", &components); err != nil {
			return nil, err
		}
	}
	components.set("securitySchemes", map[string]any{BearerScheme: securityScheme})
	doc.set("components", components)
	doc.set("security", []map[string][]string{{BearerScheme: {}}})
	doc.set("info", info)

	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(doc); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// EventStreamMethod is the method whose REST route also answers as server-sent events (internal/gateway,
// sse.go): with `Accept: text/event-stream`, where the bearer token may come as the AccessTokenParam query
// parameter, since a browser's EventSource cannot set headers.
const (
	EventStreamMethod = "/platform.v1.MessageService/StreamMessages"
	AccessTokenParam  = "access_token"
)

// describeEventStream adds to op what the generator cannot know of the server-sent events of its route:
// the text/event-stream content of its 200 response and the access_token query parameter.
func describeEventStream(op *object) error {
	var responses, ok200, content object
	if err := op.get("responses", &responses); err != nil {
		return err
	}
	if err := responses.get("200", &ok200); err != nil {
		return err
	}
	if err := ok200.get("content", &content); err != nil {
		return err
	}
	content.set("text/event-stream", map[string]any{"schema": map[string]any{
		"type": "string",
		"description": "With `Accept: text/event-stream`: one server-sent event per item, `id:` the newest message id " +
			"delivered (a reconnecting EventSource sends it back as Last-Event-ID, which resumes like afterMessageId), " +
			"`event:` the item's event type, `data:` the StreamMessagesResponse as JSON; a `: keep-alive` comment " +
			"after each quiet keep-alive period (15 s by default); `event: error` with a google.rpc.Status when the stream fails after it started.",
	}})
	ok200.set("content", content)
	responses.set("200", ok200)
	op.set("responses", responses)
	var params []json.RawMessage // the generator's, kept byte for byte
	if op.has("parameters") {
		if err := op.get("parameters", &params); err != nil {
			return err
		}
	}
	var token object
	token.set("name", AccessTokenParam)
	token.set("in", "query")
	token.set("description", "The bearer token, for a browser's EventSource (which cannot set headers): accepted "+
		"with `Accept: text/event-stream` only, and removed from the URL before the request is logged or handled.")
	token.set("schema", map[string]string{"type": "string"})
	raw, err := json.Marshal(token)
	if err != nil {
		return err
	}
	op.set("parameters", append(params, raw))
	return nil
}

// OperationMethods maps the operationId of every REST operation of Package to the gRPC method it calls
// ("ConversationService_CreateConversation" → "/platform.v1.ConversationService/CreateConversation"),
// named as protoc-gen-openapiv3 names them: <Service>_<Method>, then _1, _2… for additional bindings.
func OperationMethods() (map[string]string, error) {
	ops := map[string]string{}
	protoregistry.GlobalFiles.RangeFilesByPackage(Package, func(fd protoreflect.FileDescriptor) bool {
		for i := range fd.Services().Len() {
			sd := fd.Services().Get(i)
			for j := range sd.Methods().Len() {
				md := sd.Methods().Get(j)
				rule, _ := proto.GetExtension(md.Options(), annotations.E_Http).(*annotations.HttpRule)
				if rule == nil {
					continue
				}
				full := "/" + string(sd.FullName()) + "/" + string(md.Name())
				id := string(sd.Name()) + "_" + string(md.Name())
				ops[id] = full
				for k := range rule.GetAdditionalBindings() {
					ops[id+"_"+strconv.Itoa(k+1)] = full
				}
			}
		}
		return true
	})
	if len(ops) == 0 {
		return nil, fmt.Errorf("no %s method with an HTTP binding is linked in", Package)
	}
	return ops, nil
}

// pathVar matches a path template's variable, "{conversation_id}" or "{conversation.id}".
var pathVar = regexp.MustCompile(`\{[^}]*\}`)

// mergeEquivalentPaths joins path items whose templates differ only in their variables' names, such as
// /v1/conversations/{conversation_id} (GET) and /v1/conversations/{conversation.id} (PATCH, where the
// variable fills the body's conversation.id): OpenAPI 3 forbids such a pair ("identical" templated
// paths) and validators reject the document. The later item's operations move to the first, their path
// parameters renamed by position to the first's names (the URL a client sends is the same; the
// description keeps the request field the value fills). Two operations of one verb on the same path
// are an error: the routes themselves would clash.
func mergeEquivalentPaths(paths object) (object, error) {
	var out object
	first := map[string]string{} // template with anonymous variables → first path of that shape
	for _, path := range paths.keys {
		shape := pathVar.ReplaceAllString(path, "{}")
		into, dup := first[shape]
		if !dup {
			first[shape] = path
			out.set(path, paths.vals[path])
			continue
		}
		var target, item object
		if err := out.get(into, &target); err != nil {
			return object{}, err
		}
		if err := paths.get(path, &item); err != nil {
			return object{}, err
		}
		rename := map[string]string{}
		names, intoNames := pathVar.FindAllString(path, -1), pathVar.FindAllString(into, -1)
		for i, n := range names {
			if n != intoNames[i] {
				rename[strings.Trim(n, "{}")] = strings.Trim(intoNames[i], "{}")
			}
		}
		for _, verb := range item.keys {
			if !isOperation(verb) {
				return object{}, fmt.Errorf("path %s: %q cannot move to %s", path, verb, into)
			}
			if target.has(verb) {
				return object{}, fmt.Errorf("%s %s and %s %s are the same route", verb, into, verb, path)
			}
			var op object
			if err := item.get(verb, &op); err != nil {
				return object{}, err
			}
			var params []object
			if op.has("parameters") {
				if err := op.get("parameters", &params); err != nil {
					return object{}, err
				}
			}
			for i := range params {
				var name, in, desc string
				_ = params[i].get("name", &name)
				_ = params[i].get("in", &in)
				if in != "path" || rename[name] == "" {
					continue
				}
				_ = params[i].get("description", &desc)
				params[i].set("name", rename[name])
				params[i].set("description", strings.TrimSpace(desc+"\n\nFills the request's `"+name+"`."))
			}
			if len(params) > 0 {
				op.set("parameters", params)
			}
			target.set(verb, op)
		}
		out.set(into, target)
	}
	return out, nil
}

func isOperation(key string) bool {
	switch key {
	case "get", "put", "post", "delete", "options", "head", "patch", "trace":
		return true
	}
	return false
}

// object is a JSON object that keeps its keys in order through a decode and encode.
type object struct {
	keys []string
	vals map[string]json.RawMessage
}

func (o *object) UnmarshalJSON(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return errors.New("not a JSON object")
	}
	o.keys, o.vals = nil, map[string]json.RawMessage{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		key, _ := t.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return err
		}
		if _, dup := o.vals[key]; !dup {
			o.keys = append(o.keys, key)
		}
		o.vals[key] = v
	}
	_, err := dec.Token()
	return err
}

func (o object) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, k := range o.keys {
		if i > 0 {
			b.WriteByte(',')
		}
		key, _ := json.Marshal(k)
		b.Write(key)
		b.WriteByte(':')
		b.Write(o.vals[k])
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

func (o *object) has(key string) bool { _, ok := o.vals[key]; return ok }

func (o *object) get(key string, v any) error {
	raw, ok := o.vals[key]
	if !ok {
		return fmt.Errorf("no %q", key)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("%q: %w", key, err)
	}
	return nil
}

// set replaces key's value in place, or appends it.
func (o *object) set(key string, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // "<token>" stays readable in the committed file
	if err := enc.Encode(v); err != nil {
		panic(fmt.Sprintf("apidocs: %s: %v", key, err)) // only values built here are set
	}
	raw := json.RawMessage(bytes.TrimSuffix(buf.Bytes(), []byte("\n")))
	if o.vals == nil {
		o.vals = map[string]json.RawMessage{}
	}
	if _, ok := o.vals[key]; !ok {
		o.keys = append(o.keys, key)
	}
	o.vals[key] = raw
}
