package ingest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/msgplatform/platform/internal/benchmark/ingest/workload"
)

// The binaries are built once per test binary and removed when it exits.
var built struct {
	once sync.Once
	bins Binaries
	err  error
}

func binaries(t *testing.T) *Binaries {
	t.Helper()
	built.once.Do(func() {
		dir, err := os.MkdirTemp("", "platform-ingest-bin-")
		if err != nil {
			built.err = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		built.bins, built.err = BuildBinaries(ctx, dir)
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return &built.bins
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.bins.Dir != "" {
		_ = os.RemoveAll(built.bins.Dir)
	}
	os.Exit(code)
}

// TestMeasureIngestSmall runs the whole measurement at a small scale, every system in its own process:
// each must store exactly its records (MeasureIngest checks the store's count after every run) and every
// process must exit cleanly (the pipeline and the servers on SIGTERM, storebench by itself), or it
// fails. No timing is asserted.
func TestMeasureIngestSmall(t *testing.T) {
	const records, insertOne = 2000, 200
	res, err := MeasureIngest(t, Options{
		Scenarios:        []Scenario{{Name: "small", Encoding: workload.ProtoJSON, Records: records, InsertOne: true}},
		Rounds:           1,
		InsertOneRecords: insertOne,
		Binaries:         binaries(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Scenarios) != 1 || len(res.Rounds) != 1 || res.Records != records || res.InsertOneRecords != insertOne {
		t.Fatalf("result %+v", res)
	}
	round := res.Rounds[0]
	if len(round.Order) != 4 {
		t.Errorf("order %v, want the four systems", round.Order)
	}
	for system, want := range map[string]int{SystemPipeline: records, SystemCeiling: records, SystemConsumer: records, SystemInsertOne: insertOne} {
		if got := round.Runs[system].Records; got != want {
			t.Errorf("%s stored %d records, want %d", system, got, want)
		}
	}
	var out strings.Builder
	if err := res.WriteTables(&out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "| **pipeline** (services/pipeline, cold cache) |") {
		t.Errorf("table lacks the pipeline:\n%s", out.String())
	}
	t.Log(out.String())
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

func TestProcCPUSecondsReadsThisProcess(t *testing.T) {
	deadline := time.Now().Add(100 * time.Millisecond)
	for n := 0; time.Now().Before(deadline); n++ {
		_ = fmt.Sprint(n) // burn some CPU
	}
	cpu, err := procCPUSeconds(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if cpu <= 0 {
		t.Errorf("CPU seconds of this process = %v, want > 0", cpu)
	}
}
