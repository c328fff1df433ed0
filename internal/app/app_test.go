package app_test

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	dto "github.com/prometheus/client_model/go"

	"github.com/msgplatform/platform/internal/app"
	"github.com/msgplatform/platform/internal/app/apptest"
	"github.com/msgplatform/platform/internal/testenv"
)

// scrape returns the metric families a process serves.
func scrape(t *testing.T, p *apptest.Process) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + p.Metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

// A pipeline process opens one MongoDB client (one pool per server: FerretDB is one server) whatever
// runs in it, exports the watchers' and the DLQ's metrics in its one registry, and the switches turn the
// watchers and the DLQ scheduler off.
func TestPipelineProcessOnePoolAndSwitches(t *testing.T) {
	vars := map[string]string{"KAFKA_BROKERS": testenv.Kafka(t), "MONGO_URI": testenv.Mongo(t), "REDIS_URL": testenv.Redis(t)}
	for _, tc := range []struct {
		name              string
		watchers, sched   string
		wantChangeStreams bool
		wantDLQGauges     bool
	}{
		{"everything on", "true", "true", true, true},
		{"watchers and scheduler off", "false", "false", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vars["WATCHERS_ENABLED"], vars["DLQ_SCHEDULER_ENABLED"] = tc.watchers, tc.sched
			p := apptest.Start(t, testenv.Config(t, vars), app.Roles{Pipeline: true}, nil)
			var mfs map[string]*dto.MetricFamily
			testenv.Eventually(t, "a pool open", 0, func() bool {
				mfs = scrape(t, p)
				return testenv.Series(mfs["platform_mongodb_pools"]) >= 1
			})
			if n := testenv.Series(mfs["platform_mongodb_pools"]); n != 1 {
				t.Errorf("platform_mongodb_pools = %v, want 1: one MongoDB client per process", n)
			}
			if _, ok := mfs["platform_change_streams_supported"]; ok != tc.wantChangeStreams {
				t.Errorf("change-stream metrics exported: %v, want %v", ok, tc.wantChangeStreams)
			}
			if _, ok := mfs["platform_dlq_entries"]; ok != tc.wantDLQGauges {
				t.Errorf("dlq scheduler gauges exported: %v, want %v", ok, tc.wantDLQGauges)
			}
			for _, name := range []string{"platform_pipeline_stage_processed_total", "platform_dlq_records_in_total", "platform_membership_cache_lookups_total"} {
				if _, ok := mfs[name]; !ok {
					t.Errorf("%s not exported", name)
				}
			}
			resp, err := http.Get("http://" + p.HTTP + "/v1/health")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !strings.Contains(string(b), `"name":"pipeline"`) {
				t.Errorf("/v1/health of the pipeline process lacks the pipeline dependency: %s", b)
			}
		})
	}
}
