// Package benchmark is the harness behind `make bench`: it runs every measurement of the performance goals
// (packages ingest, latency, e2e and backlog, each on servers of its own started on free ports), prints them
// as a Markdown table against their goals and writes bench-results.json. Nothing here asserts a timing: the
// machines are shared, so each goal is a ratio measured side by side in one run, or an absolute number
// reported as measured.
package benchmark

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

// Goal is one key of bench-results.json and what it must reach.
type Goal struct {
	Key    string
	Op     string // ">=", "<=" or "" for a number that is only reported
	Target float64
	What   string
}

// Goals are the keys of bench-results.json, in table order. The ingest keys are package ingest's
// (the production pipeline binary, the store ceiling and the consumers each in a process of their own);
// without a suffix they are its protojson scenario at 50,000 records.
var Goals = []Goal{
	{"pipeline_vs_store_ceiling", ">=", 0.98, "pipeline process records/s ÷ the store's ceiling (pre-built documents, one writer, unordered InsertMany of 500, own process); protojson, 50,000 records"},
	{"pipeline_vs_store_ceiling_30k", ">=", 0.98, "the same, protojson, 30,000 records"},
	{"pipeline_vs_store_ceiling_protobuf", ">=", 0.98, "the same, protobuf, 50,000 records"},
	{"bare_consumer_vs_store_ceiling", "", 0, "a bare franz-go consumer (decode, convert, InsertMany of 500, commit) ÷ the ceiling"},
	{"pipeline_cpu_seconds_per_10k", "", 0, "the pipeline process's CPU seconds (user+system, /proc) per 10,000 records"},
	{"pipeline_first_stored_ms", "<=", 200, "ms from the pipeline's exec to its first stored record (cold membership cache)"},
	{"pipeline_vs_insert_one", ">=", 10, "pipeline records/s ÷ a consumer doing one insert per record"},
	{"authz_latency_ratio", "<=", 1.10, "p50 authorized call (warm cache) ÷ same handler without interceptors"},
	{"rest_vs_grpc_latency_ratio", "<=", 2.0, "p50 GetConversation via REST ÷ via gRPC"},
	{"rest_vs_grpc_latency_ratio_traced", "<=", 2.0, "the same on a gateway tracing every call (always_on, OTLP/gRPC export to a sink)"},
	{"tracing_overhead_get_grpc_ratio", "", 0, "p50 GetConversation over gRPC, gateway tracing every call ÷ gateway with tracing off"},
	{"tracing_overhead_get_rest_ratio", "", 0, "the same over REST"},
	{"tracing_overhead_send_ratio", "", 0, "the same for SendMessage over gRPC (span, traceparent in the Kafka record)"},
	{"list_conversations_unread_p50_ms", "", 0, "p50 ms of ListConversations (gRPC, one page of 200) with unread counts, a user in 200 conversations with 50 unread each"},
	{"send_to_persisted_p99_ms_at_2000", "<=", 50, "p99 ms from SendMessage's return to readable, 2,000 msgs/s for 30 s"},
	{"send_to_persisted_p50_ms_at_2000", "", 0, "p50 of the same"},
	{"pipeline_rss_mib_1m_backlog", "<=", 256, "peak RSS (MiB) of the pipeline process draining 1,000,000 records"},
	{"pipeline_records_per_s", "", 0, "pipeline process throughput behind pipeline_vs_store_ceiling"},
	{"store_ceiling_records_per_s", "", 0, "the store's ceiling behind it"},
}

// Met reports whether v reaches the goal; a reported-only number is always met.
func (g Goal) Met(v float64) bool {
	switch g.Op {
	case ">=":
		return v >= g.Target
	case "<=":
		return v <= g.Target
	}
	return true
}

// Meta describes where and from what the numbers were measured.
type Meta struct {
	Cores     int    `json:"cores"`
	CPU       string `json:"cpu,omitempty"`
	GoVersion string `json:"go_version"`
	OS        string `json:"os"`
	Commit    string `json:"commit"`
	Dirty     bool   `json:"dirty"`
	Date      string `json:"date"`
}

// CurrentMeta reads the machine and the repository's commit.
func CurrentMeta() Meta {
	m := Meta{Cores: runtime.NumCPU(), GoVersion: runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH,
		Date: time.Now().UTC().Format(time.RFC3339)}
	if out, err := exec.Command("git", "rev-parse", "HEAD").Output(); err == nil {
		m.Commit = strings.TrimSpace(string(out))
	}
	if out, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil {
		m.Dirty = len(strings.TrimSpace(string(out))) > 0
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if name, ok := strings.CutPrefix(line, "model name"); ok {
				m.CPU = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(name), ":"))
				break
			}
		}
	}
	return m
}

// Results are the measured values by key; a key absent was not measured (its measurement failed).
type Results map[string]float64

// document is the flat object of bench-results.json: every goal key (null when not measured) and meta.
func (r Results) document(meta Meta) map[string]any {
	doc := map[string]any{"meta": meta}
	for _, g := range Goals {
		if v, ok := r[g.Key]; ok && !math.IsNaN(v) && !math.IsInf(v, 0) {
			doc[g.Key] = roundTo(v, 4)
		} else {
			doc[g.Key] = nil
		}
	}
	return doc
}

// WriteJSON writes bench-results.json to path.
func (r Results) WriteJSON(path string, meta Meta) error {
	b, err := json.MarshalIndent(r.document(meta), "", "  ")
	if err != nil {
		return fmt.Errorf("encode bench results: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write bench results: %w", err)
	}
	return nil
}

// Table renders the results as a Markdown table: metric, value, goal, met?
func (r Results) Table() string {
	var b strings.Builder
	b.WriteString("| metric | value | goal | met? |\n|---|---:|---|---|\n")
	for _, g := range Goals {
		goal, met := "report", "—"
		if g.Op != "" {
			goal = fmt.Sprintf("%s %s", strings.NewReplacer(">=", "≥", "<=", "≤").Replace(g.Op), formatValue(g.Target))
		}
		v, ok := r[g.Key]
		value := "not measured"
		if ok {
			value = formatValue(v)
			if g.Op != "" {
				met = map[bool]string{true: "yes", false: "**no**"}[g.Met(v)]
			}
		} else if g.Op != "" {
			met = "**no**"
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", g.Key, value, goal, met)
	}
	return b.String()
}

func formatValue(v float64) string {
	switch a := math.Abs(v); {
	case math.IsInf(v, 0):
		return "∞ (rate not sustained)"
	case a >= 1000:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func roundTo(v float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(v*p) / p
}
