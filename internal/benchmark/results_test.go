package benchmark

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestGoalMet(t *testing.T) {
	for _, tc := range []struct {
		key  string
		v    float64
		want bool
	}{
		{"pipeline_vs_store_ceiling", 0.98, true},
		{"pipeline_vs_store_ceiling", 0.97, false},
		{"pipeline_vs_store_ceiling_protobuf", 1.02, true},
		{"pipeline_first_stored_ms", 200, true},
		{"pipeline_first_stored_ms", 201, false},
		{"pipeline_vs_insert_one", 9.9, false},
		{"pipeline_cpu_seconds_per_10k", 99, true}, // reported only
		{"authz_latency_ratio", 1.10, true},
		{"authz_latency_ratio", 1.11, false},
		{"pipeline_rss_mib_1m_backlog", 300, false},
		{"pipeline_records_per_s", 1, true}, // reported only
	} {
		g := goal(t, tc.key)
		if got := g.Met(tc.v); got != tc.want {
			t.Errorf("%s.Met(%v) = %v, want %v", tc.key, tc.v, got, tc.want)
		}
	}
}

func goal(t *testing.T, key string) Goal {
	t.Helper()
	for _, g := range Goals {
		if g.Key == key {
			return g
		}
	}
	t.Fatalf("no goal %s", key)
	return Goal{}
}

// Issue 9 fixed the JSON's keys and later issues added theirs: exactly the goal keys, numbers (null when a
// measurement failed), and meta.
func TestWriteJSONHasExactlyTheKeys(t *testing.T) {
	r := Results{"pipeline_vs_store_ceiling": 0.91234567, "authz_latency_ratio": 1.05}
	path := filepath.Join(t.TempDir(), "bench-results.json")
	if err := r.WriteJSON(path, CurrentMeta()); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	want := []string{"pipeline_vs_store_ceiling", "pipeline_vs_store_ceiling_30k", "pipeline_vs_store_ceiling_protobuf",
		"bare_consumer_vs_store_ceiling", "pipeline_cpu_seconds_per_10k", "pipeline_first_stored_ms", "pipeline_vs_insert_one",
		"authz_latency_ratio", "rest_vs_grpc_latency_ratio", "rest_vs_grpc_latency_ratio_traced",
		"tracing_overhead_get_grpc_ratio", "tracing_overhead_get_rest_ratio", "tracing_overhead_send_ratio", "list_conversations_unread_p50_ms", "send_to_persisted_p99_ms_at_2000", "send_to_persisted_p50_ms_at_2000",
		"pipeline_rss_mib_1m_backlog", "pipeline_records_per_s", "store_ceiling_records_per_s", "meta"}
	if len(doc) != len(want) {
		t.Errorf("keys = %v, want exactly %v", doc, want)
	}
	for _, k := range want {
		if _, ok := doc[k]; !ok {
			t.Errorf("missing key %s", k)
		}
	}
	if doc["pipeline_vs_store_ceiling"] != 0.9123 || doc["authz_latency_ratio"] != 1.05 || doc["pipeline_vs_insert_one"] != nil {
		t.Errorf("values = %v", doc)
	}
	meta := doc["meta"].(map[string]any)
	if meta["cores"].(float64) < 1 || !strings.HasPrefix(meta["go_version"].(string), "go") {
		t.Errorf("meta = %v", meta)
	}
}

func TestTable(t *testing.T) {
	got := Results{"pipeline_vs_store_ceiling": 0.5, "authz_latency_ratio": 1.02, "pipeline_records_per_s": 6123.4}.Table()
	for _, want := range []string{
		"| metric | value | goal | met? |",
		"| `pipeline_vs_store_ceiling` | 0.50 | ≥ 0.98 | **no** |",
		"| `pipeline_first_stored_ms` | not measured | ≤ 200.0 | **no** |",
		"| `bare_consumer_vs_store_ceiling` | not measured | report | — |",
		"| `authz_latency_ratio` | 1.02 | ≤ 1.10 | yes |",
		"| `rest_vs_grpc_latency_ratio` | not measured | ≤ 2.00 | **no** |",
		"| `pipeline_records_per_s` | 6123 | report | — |",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("table lacks %q:\n%s", want, got)
		}
	}
}
