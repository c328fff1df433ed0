package ingest

import "testing"

// TestMeasureIngestSmall runs the whole measurement at a small scale: every phase must store exactly its
// records (MeasureIngest checks the counts after each phase and fails otherwise) and report a rate.
func TestMeasureIngestSmall(t *testing.T) {
	res, err := MeasureIngest(t, Options{Records: 2000, InsertOneRecords: 200, Rounds: 2, CeilingChunk: 500, Conversations: 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Rounds) != 2 || res.Records != 2000 || res.InsertOneRecords != 200 {
		t.Fatalf("result %+v", res)
	}
	for i, r := range res.Rounds {
		if r.Pipeline <= 0 || r.Ceiling <= 0 || r.InsertOne <= 0 || len(r.Order) != 3 {
			t.Fatalf("round %d: %+v", i, r)
		}
	}
	if res.Rounds[0].Order[0] == res.Rounds[1].Order[0] {
		t.Fatalf("rounds did not alternate: %v then %v", res.Rounds[0].Order, res.Rounds[1].Order)
	}
	if res.PipelineVsCeiling <= 0 || res.PipelineVsInsertOne <= 0 {
		t.Fatalf("ratios %+v", res)
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5}} {
		rounds := make([]Round, len(tc.in))
		for i, v := range tc.in {
			rounds[i].Pipeline = v
		}
		if got := median(rounds, func(r Round) float64 { return r.Pipeline }); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}
