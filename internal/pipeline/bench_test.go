package pipeline_test

import (
	"testing"

	"github.com/msgplatform/platform/internal/benchmark/ingest"
)

// BenchmarkIngest runs ingest.MeasureIngest (the one implementation of the ingest measurement: a
// 50,000-record backlog drained by the pipeline, the store's InsertMany ceiling over the same documents,
// and a plain InsertOne consumer, on one FerretDB, kfake and redis-server, three alternating rounds) and
// reports the medians. Run it with
//
//	go test -run '^$' -bench Ingest -benchtime 1x ./internal/pipeline/
func BenchmarkIngest(b *testing.B) {
	res, err := ingest.MeasureIngest(b, ingest.Options{})
	if err != nil {
		b.Fatal(err)
	}
	for _, m := range []struct {
		name string
		rate float64
	}{{"pipeline", res.PipelinePerSec}, {"insert_one_consumer", res.InsertOnePerSec}, {"insert_many_ceiling", res.CeilingPerSec}} {
		b.Run(m.name, func(b *testing.B) { b.ReportMetric(m.rate, "msgs/s") })
	}
	b.ReportMetric(res.PipelineVsCeiling, "pipeline_vs_store_ceiling")
	b.ReportMetric(res.PipelineVsInsertOne, "pipeline_vs_insert_one")
	b.Logf("pipeline %.0f records/s = %.2f of the store ceiling (%.0f/s) and %.1f× the InsertOne consumer (%.0f/s)",
		res.PipelinePerSec, res.PipelineVsCeiling, res.CeilingPerSec, res.PipelineVsInsertOne, res.InsertOnePerSec)
}
