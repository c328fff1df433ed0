package backlog

import (
	"io"
	"os"
	"testing"

	"github.com/msgplatform/platform/internal/benchmark/ingest"
)

// TestMeasureRSSSmall drains a small backlog through the real pipeline binary: every record stored (the
// measurement checks MongoDB's count itself) and a peak RSS read from the kernel.
func TestMeasureRSSSmall(t *testing.T) {
	r, err := MeasureRSS(t, 3000, ingest.FillBacklog, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if r.Records != 3000 || r.PeakRSSMiB <= 1 || r.RecordsPerSec <= 0 {
		t.Errorf("result = %+v", r)
	}
	t.Logf("%+v", r)
}

func TestMemoryMiBReadsThisProcess(t *testing.T) {
	rss, err := memoryMiB(os.Getpid(), "VmRSS")
	if err != nil {
		t.Fatal(err)
	}
	hwm, err := memoryMiB(os.Getpid(), "VmHWM")
	if err != nil {
		t.Fatal(err)
	}
	if rss <= 0 || hwm < rss {
		t.Errorf("VmRSS %.1f MiB, VmHWM %.1f MiB: want 0 < RSS ≤ peak", rss, hwm)
	}
}
