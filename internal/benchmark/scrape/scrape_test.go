package scrape

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestFetch(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, `# TYPE platform_pipeline_messages_total counter
platform_pipeline_messages_total{result="stored"} 40
platform_pipeline_messages_total{result="duplicate"} 2
# TYPE platform_pipeline_stage_duration_seconds histogram
platform_pipeline_stage_duration_seconds_bucket{stage="persist",le="+Inf"} 4
platform_pipeline_stage_duration_seconds_sum{stage="persist"} 0.2
platform_pipeline_stage_duration_seconds_count{stage="persist"} 4
platform_pipeline_stage_duration_seconds_bucket{stage="validate",le="+Inf"} 0
platform_pipeline_stage_duration_seconds_sum{stage="validate"} 0
platform_pipeline_stage_duration_seconds_count{stage="validate"} 0
`)
	}))
	defer srv.Close()
	m, err := Fetch(context.Background(), srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Sum("platform_pipeline_messages_total"); got != 42 {
		t.Errorf("Sum = %v, want 42", got)
	}
	if got := m.Sum("absent"); got != 0 {
		t.Errorf("Sum(absent) = %v", got)
	}
	h := m.Histogram("platform_pipeline_stage_duration_seconds", "stage")
	if len(h) != 2 || h[0].Label != "persist" || h[0].Count != 4 || h[0].Mean() != 0.05 || h[1].Mean() != 0 {
		t.Errorf("Histogram = %+v", h)
	}
}
