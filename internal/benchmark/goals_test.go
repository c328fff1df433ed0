package benchmark

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/msgplatform/platform/internal/benchmark/backlog"
	"github.com/msgplatform/platform/internal/benchmark/e2e"
	"github.com/msgplatform/platform/internal/benchmark/ingest"
	"github.com/msgplatform/platform/internal/benchmark/latency"
)

// BenchmarkGoals is `make bench`: every measurement once, each on servers of its own (stopped before the
// next starts), the latency ratios first while the machine is quietest, then the table and
// bench-results.json. The ingest measurement runs the production pipeline binary, kfake and FerretDB
// (`devstack -servers`) and its baselines (storebench) as processes of their own. BENCH_ONLY=latency,unread,ingest,e2e,backlog runs a subset;
// BENCH_RESULTS is where the JSON goes (default: the repository root).
func BenchmarkGoals(b *testing.B) {
	only := strings.FieldsFunc(os.Getenv("BENCH_ONLY"), func(r rune) bool { return r == ',' || r == ' ' })
	want := func(name string) bool { return len(only) == 0 || slices.Contains(only, name) }
	results := Results{}
	measure := func(name string, f func(b *testing.B) error) {
		if !want(name) {
			return
		}
		// Let the previous measurement's servers finish dying (goroutines, temp files, GC) first: each
		// measurement is to see the machine, not the harness's own leftovers.
		runtime.GC()
		time.Sleep(3 * time.Second)
		start := time.Now()
		b.Run(name, func(b *testing.B) {
			if err := f(b); err != nil {
				b.Error(err)
			}
		})
		fmt.Printf("%s: done in %s\n", name, time.Since(start).Round(time.Second))
	}

	measure("latency", func(b *testing.B) error {
		a, err := latency.MeasureAuthz(b, 11, 400)
		if err != nil {
			return err
		}
		results["authz_latency_ratio"] = a.Ratio
		fmt.Printf("latency: p50 authorized %.1f µs, no interceptors %.1f µs\n", a.P50AuthorizedMicros, a.P50PlainMicros)
		r, err := latency.MeasureRESTvsGRPC(b, 9, 200)
		if err != nil {
			return err
		}
		results["rest_vs_grpc_latency_ratio"] = r.Ratio
		fmt.Printf("latency: GetConversation p50 REST %.1f µs, gRPC %.1f µs\n", r.P50RESTMicros, r.P50GRPCMicros)
		tr, err := latency.MeasureTracing(b, 9, 200)
		if err != nil {
			return err
		}
		results["rest_vs_grpc_latency_ratio_traced"] = tr.RESTvsGRPC.Ratio
		results["tracing_overhead_get_grpc_ratio"] = tr.GetGRPC.Ratio
		results["tracing_overhead_get_rest_ratio"] = tr.GetREST.Ratio
		results["tracing_overhead_send_ratio"] = tr.Send.Ratio
		fmt.Printf("latency, tracing on (%d spans exported): REST/gRPC %.2f; traced ÷ untraced p50: GetConversation gRPC %.1f/%.1f µs (%.2f), REST %.1f/%.1f µs (%.2f), SendMessage %.1f/%.1f µs (%.2f)\n",
			tr.SpansExported, tr.RESTvsGRPC.Ratio, tr.GetGRPC.P50A, tr.GetGRPC.P50B, tr.GetGRPC.Ratio,
			tr.GetREST.P50A, tr.GetREST.P50B, tr.GetREST.Ratio, tr.Send.P50A, tr.Send.P50B, tr.Send.Ratio)
		return nil
	})
	// On FerretDB every unread count scans the messages collection: minutes here, so a measurement of its own.
	measure("unread", func(b *testing.B) error {
		u, err := latency.MeasureUnreadList(b, 200, 50, 50)
		if err != nil {
			return err
		}
		results["list_conversations_unread_p50_ms"] = u.P50Millis
		fmt.Printf("unread: ListConversations with unread counts (200 × 50 unread) p50 %.1f ms, p90 %.1f ms\n", u.P50Millis, u.P90Millis)
		return nil
	})
	measure("ingest", func(b *testing.B) error {
		r, err := ingest.MeasureIngest(b, ingest.Options{Progress: os.Stdout})
		if err != nil {
			return err
		}
		if err := r.WriteTables(os.Stdout); err != nil {
			return err
		}
		for key, scenario := range map[string]string{
			"pipeline_vs_store_ceiling":          ingest.ScenarioProtoJSON50k,
			"pipeline_vs_store_ceiling_30k":      ingest.ScenarioProtoJSON30k,
			"pipeline_vs_store_ceiling_protobuf": ingest.ScenarioProtobuf50k,
		} {
			if s, ok := r.Scenario(scenario); ok {
				results[key] = s.PipelineVsCeiling
			}
		}
		// The headline scenario: protojson, 50,000 records.
		results["bare_consumer_vs_store_ceiling"] = r.ConsumerVsCeiling
		results["pipeline_cpu_seconds_per_10k"] = r.PipelineCPUPer10k
		results["pipeline_first_stored_ms"] = r.PipelineFirstStoredMs
		results["pipeline_vs_insert_one"] = r.PipelineVsInsertOne
		results["pipeline_records_per_s"] = r.PipelinePerSec
		results["store_ceiling_records_per_s"] = r.CeilingPerSec
		return nil
	})
	measure("e2e", func(b *testing.B) error {
		r, err := e2e.MeasureSendToPersisted(b, 2000, 30*time.Second)
		if err != nil {
			return err
		}
		if err := r.WriteTable(os.Stdout); err != nil {
			return err
		}
		fmt.Println("\ne2e: the pipeline's mean time per batch of each stage over the run (platform_pipeline_stage_duration_seconds):")
		if err := r.WriteStages(os.Stdout); err != nil {
			return err
		}
		// +Inf (null in the JSON, ∞ in the table) when the rate was not sustained.
		results["send_to_persisted_p99_ms_at_2000"] = e2e.SustainedP99Millis(r.Result)
		results["send_to_persisted_p50_ms_at_2000"] = e2e.SustainedP50Millis(r.Result)
		fmt.Printf("e2e: %d scheduled, %d sent, %d OK, %d failed, %d unseen; achieved %.0f msgs/s\n",
			r.Scheduled, r.Sent, r.OK, r.Failed, r.Unseen, r.AchievedRate)
		return nil
	})
	measure("backlog", func(b *testing.B) error {
		r, err := backlog.MeasureRSS(b, 1_000_000, ingest.FillBacklog, os.Stdout)
		if err != nil {
			return err
		}
		results["pipeline_rss_mib_1m_backlog"] = r.PeakRSSMiB
		fmt.Printf("backlog: %d records drained in %.0fs (%.0f records/s), peak RSS %.1f MiB (fill took %.0fs)\n",
			r.Records, r.Seconds, r.RecordsPerSec, r.PeakRSSMiB, r.FillSeconds)
		return nil
	})

	meta := CurrentMeta()
	fmt.Printf("\n%s\nmachine: %d cores (%s), %s, commit %s (dirty: %v)\n", results.Table(), meta.Cores, meta.CPU, meta.GoVersion, meta.Commit, meta.Dirty)
	path := os.Getenv("BENCH_RESULTS")
	if path == "" {
		path = filepath.Join("..", "..", "bench-results.json")
	}
	if err := results.WriteJSON(path, meta); err != nil {
		b.Fatal(err)
	}
	fmt.Printf("wrote %s\n", path)
}
