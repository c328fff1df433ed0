# Every tool version is pinned: Go tools in tools/go.mod (`tool` directives), buf and Google's API protos in
# tools/package.json (+ package-lock.json). `make tools` installs them into .bin/ and tools/node_modules/.
SHELL := /bin/bash
.DEFAULT_GOAL := help

GO        ?= go
BIN       := $(CURDIR)/.bin
BUF       := $(CURDIR)/tools/node_modules/.bin/buf
PROTO_SRC := $(CURDIR)/tools/node_modules/google-proto-files
THIRD     := $(CURDIR)/proto/third_party
TEST_FLAGS ?= -race -count=1 -timeout 20m
# HS256 secret of the devstack (insecure, public); must equal auth.DevHMACSecret (a test checks it).
DEV_HMAC_SECRET := devstack-insecure-hmac-secret-change-me-0123456789
SUB    ?= alice
TENANT ?= t1
ROLES  ?= user
# Google API protos our .proto files import (copied, not committed).
GOOGLE_PROTOS := google/api/annotations.proto google/api/http.proto google/api/field_behavior.proto \
                 google/rpc/status.proto google/rpc/code.proto google/rpc/error_details.proto

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

.PHONY: tools
tools: $(BUF) $(BIN)/protoc-gen-go third-party ## install pinned buf, protoc plugins, grpcurl, grpc-health-probe, staticcheck

$(BUF): tools/package.json tools/package-lock.json
	cd tools && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(BIN)/protoc-gen-go: tools/go.mod tools/go.sum
	cd tools && GOBIN=$(BIN) $(GO) install tool
	@touch $@

.PHONY: third-party
third-party: $(BUF)
	@for f in $(GOOGLE_PROTOS); do mkdir -p $(THIRD)/$$(dirname $$f); cp -f $(PROTO_SRC)/$$f $(THIRD)/$$f; done

.PHONY: generate
# protoc-gen-openapiv3 writes one document per .proto file; openapiv3-merge joins them and openapigen adds
# each operation's access rule (from internal/authz) and the bearer scheme, then embeds the result.
generate: tools ## regenerate gen/ (Go, gRPC, gateway, OpenAPI v2 and v3) from proto/
	rm -rf gen
	$(BUF) generate
	set -o pipefail; $(BIN)/openapiv3-merge $$(find gen/openapiv3/platform -name '*.openapi.json' | sort) | \
	  $(GO) run ./internal/apidocs/openapigen -out gen/openapiv3
	rm -rf gen/openapiv3/platform

.PHONY: explorer-assets
# The API explorer (GET /docs) embeds these files; they are committed so `go build` needs no npm.
SWAGGER_UI_FILES := swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt swagger-ui.css favicon-32x32.png LICENSE NOTICE package.json
explorer-assets: $(BUF) ## refresh internal/apidocs/swagger-ui/ from swagger-ui-dist as pinned in tools/package.json
	rm -rf internal/apidocs/swagger-ui && mkdir -p internal/apidocs/swagger-ui
	cd tools/node_modules/swagger-ui-dist && cp $(SWAGGER_UI_FILES) $(CURDIR)/internal/apidocs/swagger-ui/

.PHONY: check-generated
check-generated: generate ## fail when gen/ differs from what proto/ generates
	@git add -N gen >/dev/null 2>&1 || true
	@if ! git diff --quiet --exit-code -- gen; then \
		git --no-pager diff --stat -- gen; echo "gen/ is out of date: run 'make generate' and commit it"; exit 1; fi
	@if [ -n "$$(git ls-files --others --exclude-standard gen)" ]; then \
		git ls-files --others --exclude-standard gen; echo "gen/ has files not committed: run 'make generate' and commit them"; exit 1; fi

.PHONY: breaking
# The Google protos are git-ignored, so buf cannot build main straight from .git: export main's proto/
# and buf.yaml, add the same third-party protos, build that module to an image and compare against it.
BREAKING_AGAINST ?= main
breaking: tools ## buf breaking of the proto module against the main branch (offline)
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	git archive $(BREAKING_AGAINST) proto buf.yaml | tar -x -C "$$tmp" && \
	mkdir -p "$$tmp/proto/third_party" && cp -R $(THIRD)/. "$$tmp/proto/third_party/" && \
	(cd "$$tmp" && $(BUF) build proto -o image.binpb) && \
	$(BUF) build proto -o "$$tmp/current.binpb" && \
	$(BUF) breaking "$$tmp/current.binpb" --against "$$tmp/image.binpb" && echo "no breaking changes against $(BREAKING_AGAINST)"

.PHONY: lint
lint: tools ## gofmt, go mod tidy, go vet, staticcheck (pinned), buf lint and buf format: all must be clean
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^gen/')); if [ -n "$$out" ]; then echo "gofmt: not formatted:"; echo "$$out"; exit 1; fi
	$(GO) mod tidy -diff
	$(GO) vet ./...
	$(BIN)/staticcheck ./...
	$(BUF) lint
	$(BUF) format --diff --exit-code --path proto/platform

.PHONY: build
build: ## build every binary of services/ (gateway, pipeline, devstack, token, loadgen) into bin/
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/ ./services/...

.PHONY: test
test: ## the whole test suite under the race detector (embedded Kafka and FerretDB; redis-server if installed)
	@command -v redis-server >/dev/null || echo "note: redis-server is not on PATH: the tests use miniredis instead (CI=true requires the real one: apt-get install redis-server)"
	$(GO) test $(TEST_FLAGS) ./...

.PHONY: run
run: ## start the whole platform with embedded Kafka, MongoDB-wire and Redis
	$(GO) run ./services/devstack

.PHONY: token
token: ## print a dev JWT: make token SUB=alice TENANT=t1 ROLES=user (uses AUTH_HMAC_SECRET, default the devstack's)
	@AUTH_HMAC_SECRET="$${AUTH_HMAC_SECRET:-$(DEV_HMAC_SECRET)}" $(GO) run ./services/token -sub "$(SUB)" -tenant "$(TENANT)" -roles "$(ROLES)"

.PHONY: bench
BENCH_ONLY ?=
BENCH_RESULTS ?= $(CURDIR)/bench-results.json
# The ingest measurement builds services/pipeline, services/devstack and storebench and runs each as a
# process of its own (see BENCHMARKS.md); BENCH_ONLY=latency,unread,ingest,e2e,backlog runs a subset.
bench: ## measure every performance goal (ingest, latency, send→persisted, 1M backlog RSS): Markdown table + bench-results.json
	BENCH_RESULTS=$(BENCH_RESULTS) BENCH_ONLY=$(BENCH_ONLY) \
	  $(GO) test -run '^$$' -bench '^BenchmarkGoals$$' -benchtime 1x -count=1 -timeout 45m ./internal/benchmark/

