package ingest

import (
	"fmt"
	"io"
	"strings"
)

// WriteTables writes one Markdown table per scenario: each system's records/s, its ratio to the store
// ceiling, its process's CPU seconds per 10,000 records and its time to the first stored record (medians
// over rounds), then the pipeline's ratio to the ceiling in every round.
func (r Result) WriteTables(w io.Writer) error {
	var b strings.Builder
	for _, s := range r.Scenarios {
		sc := s.Scenario
		fmt.Fprintf(&b, "\ningest %s: %d %s records, %d round(s), medians (backlog produced in %.1fs)\n\n",
			sc.Name, sc.Records, sc.Encoding, len(s.Rounds), s.FillSeconds)
		b.WriteString("| system | records/s | ÷ ceiling | CPU s per 10k records | first stored (ms) |\n|---|---:|---:|---:|---:|\n")
		row := func(name string, perSec, cpu, first float64) {
			vs := "—"
			if s.CeilingPerSec > 0 {
				vs = fmt.Sprintf("%.2f", perSec/s.CeilingPerSec)
			}
			fmt.Fprintf(&b, "| %s | %.0f | %s | %.2f | %.0f |\n", name, perSec, vs, cpu, first)
		}
		row("store ceiling (pre-built documents, 1 writer, InsertMany of 500)¹", s.CeilingPerSec, s.CeilingCPUPer10k, s.CeilingFirstStoredMs)
		fmt.Fprintf(&b, "| **pipeline** (services/pipeline, cold cache) | **%.0f** | **%.2f** | %.2f | %.0f |\n",
			s.PipelinePerSec, s.PipelineVsCeiling, s.PipelineCPUPer10k, s.PipelineFirstStoredMs)
		row("bare consumer (decode, convert, InsertMany of 500, commit)", s.ConsumerPerSec, s.ConsumerCPUPer10k, s.ConsumerFirstStoredMs)
		if sc.InsertOne {
			row(fmt.Sprintf("one insert per record (%d records)²", r.InsertOneRecords), s.InsertOnePerSec, s.InsertOneCPUPer10k, s.InsertOneFirstStoredMs)
		}
		b.WriteString("\nThe ÷ ceiling of the pipeline and the bare consumer are medians of each round's own ratio; the others divide medians.\n")
		b.WriteString("¹ timed from its first write (its documents are built before); every other system from its process's exec.\n")
		if sc.InsertOne {
			fmt.Fprintf(&b, "² rate from its first stored record; pipeline ÷ one insert per record: %.1f× (median of rounds).\n", s.PipelineVsInsertOne)
		}
		for i, rd := range s.Rounds {
			ratio := 0.0
			if rd.Ceiling > 0 {
				ratio = rd.Pipeline / rd.Ceiling
			}
			fmt.Fprintf(&b, "round %d (%s): pipeline %.0f/s, ceiling %.0f/s, consumer %.0f/s → pipeline ÷ ceiling %.3f\n",
				i+1, strings.Join(rd.Order, ", "), rd.Pipeline, rd.Ceiling, rd.Consumer, ratio)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
