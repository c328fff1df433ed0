package e2e

import (
	"context"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/loadgen"
)

// TestSendToPersistedSmall runs the measurement at a small scale and checks that it measures what it
// claims: every scheduled message is sent and accepted, every accepted one is seen persisted, a message
// seen on the stream is readable at that moment (GetMessage), and ListMessages holds exactly what was sent.
func TestSendToPersistedSmall(t *testing.T) {
	const rate, d, convs, senders = 200, 2 * time.Second, 10, 20
	p := StartPlatform(t)
	cfg := p.LoadConfig(rate, d)
	cfg.Conversations, cfg.Senders, cfg.RunID = convs, senders, "small"
	cfg.ProgressInterval = 500 * time.Millisecond

	conn, err := grpc.NewClient(p.Addrs.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	messages := platformv1.NewMessageServiceClient(conn)
	tok, err := auth.MintHS256([]byte(p.Secret), auth.Principal{Subject: cfg.OwnerID(), TenantID: "loadgen", Roles: []string{"user"}}, time.Hour, "", "")
	if err != nil {
		t.Fatal(err)
	}
	owner := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)

	// Read a sample of messages back the moment their persisted event arrives.
	const sample = 25
	var (
		mu       sync.Mutex
		checked  int
		readErrs []error
		wg       sync.WaitGroup
	)
	cfg.OnPersisted = func(conv, id string) {
		mu.Lock()
		defer mu.Unlock()
		if checked == sample {
			return
		}
		checked++
		wg.Go(func() {
			r, err := messages.GetMessage(owner, &platformv1.GetMessageRequest{ConversationId: conv, MessageId: id})
			if err == nil && (r.GetMessage().GetId() != id || r.GetMessage().GetState() != platformv1.MessageState_MESSAGE_STATE_PERSISTED) {
				err = fmt.Errorf("GetMessage(%s) = %v", id, r.GetMessage())
			}
			if err != nil {
				mu.Lock()
				readErrs = append(readErrs, err)
				mu.Unlock()
			}
		})
	}

	res, err := run(cfg, t.Output(), "")
	if err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	var out strings.Builder
	_ = res.WriteTable(&out)
	t.Log("\n" + out.String())

	want := rate * int(d/time.Second)
	if res.Scheduled != want || res.Sent != want || res.OK != want || res.Failed != 0 {
		t.Errorf("scheduled %d, sent %d, ok %d, failed %d (%v); want %d sent and ok", res.Scheduled, res.Sent, res.OK, res.Failed, res.Errors, want)
	}
	if res.Persisted != want || res.Unseen != 0 || res.SendToPersisted.N != want {
		t.Errorf("persisted %d, unseen %d (stored: %d of %d checked), samples %d; want all %d persisted",
			res.Persisted, res.Unseen, res.UnseenStored, res.UnseenChecked, res.SendToPersisted.N, want)
	}
	if res.Send.N != want || res.Send.P50 <= 0 || res.Send.P50 > res.Send.P99 || res.Send.P99 > res.Send.Max {
		t.Errorf("SendMessage latency %+v: want %d ordered samples", res.Send, want)
	}
	if res.SendToPersistedAll != res.SendToPersisted {
		t.Errorf("with nothing unseen, the headline latency %+v differs from the seen one %+v", res.SendToPersistedAll, res.SendToPersisted)
	}
	if l := res.SendToPersisted; l.P50 > l.P90 || l.P90 > l.P99 || l.P99 > l.Max || l.Max <= 0 {
		t.Errorf("send→persisted latency %+v is not ordered", l)
	}
	if checked != sample || len(readErrs) > 0 {
		t.Errorf("read back %d messages on their persisted event, want %d; errors: %v", checked, sample, readErrs)
	}

	// ListMessages holds the run's messages and the warm-up's (one per conversation), nothing else.
	lr, err := platformv1.NewConversationServiceClient(conn).ListConversations(owner, &platformv1.ListConversationsRequest{PageSize: 200})
	if err != nil {
		t.Fatal(err)
	}
	if len(lr.GetConversations()) != convs {
		t.Fatalf("owner has %d conversations, want %d", len(lr.GetConversations()), convs)
	}
	total := 0
	for _, c := range lr.GetConversations() {
		token := ""
		for {
			page, err := messages.ListMessages(owner, &platformv1.ListMessagesRequest{ConversationId: c.GetId(), PageSize: 200, PageToken: token})
			if err != nil {
				t.Fatal(err)
			}
			total += len(page.GetMessages())
			if token = page.GetNextPageToken(); token == "" {
				break
			}
		}
	}
	if total != want+convs {
		t.Errorf("ListMessages over the conversations = %d messages, want %d sent + %d warm-up", total, want, convs)
	}

	// The pipeline's stage times are read from the platform's /metrics: every stage ran on some batches.
	stages, err := p.StageTimes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range stages {
		names = append(names, s.Stage)
		if s.Batches == 0 {
			t.Errorf("stage %s ran on no batch", s.Stage)
		}
	}
	if len(stages) == 0 || !slices.Contains(names, "persist") || names[0] != "authenticate" {
		t.Errorf("stages %v: want the pipeline's, in order", names)
	}
	var tbl strings.Builder
	_ = Measurement{Stages: stages}.WriteStages(&tbl)
	t.Log("\n" + tbl.String())
}

// BenchmarkSendToPersisted measures send_to_persisted_p99_ms_at_2000 (the harness calls
// MeasureSendToPersisted directly). E2E_RATE, E2E_DURATION, E2E_CONVERSATIONS and E2E_SENDERS change the
// load, E2E_CPUPROFILE names a CPU profile to write:
//
//	go test -run '^$' -bench SendToPersisted -benchtime 1x ./internal/benchmark/e2e/
func BenchmarkSendToPersisted(b *testing.B) {
	rate, d := 2000, 30*time.Second
	if v, err := strconv.Atoi(os.Getenv("E2E_RATE")); err == nil && v > 0 {
		rate = v
	}
	if v, err := time.ParseDuration(os.Getenv("E2E_DURATION")); err == nil && v > 0 {
		d = v
	}
	convs, _ := strconv.Atoi(os.Getenv("E2E_CONVERSATIONS"))
	senders, _ := strconv.Atoi(os.Getenv("E2E_SENDERS"))
	for range b.N {
		res, err := Measure(b, Options{Rate: rate, Duration: d, Conversations: convs, Senders: senders,
			Progress: os.Stderr, CPUProfile: os.Getenv("E2E_CPUPROFILE")})
		if err != nil {
			b.Fatal(err)
		}
		_ = res.WriteTable(os.Stderr) // b.Log truncates long output
		_ = res.WriteStages(os.Stderr)
		b.ReportMetric(loadgen.Millis(res.SendToPersistedAll.P99), "send_to_persisted_p99_ms")
		b.ReportMetric(loadgen.Millis(res.SendToPersistedAll.P50), "send_to_persisted_p50_ms")
		b.ReportMetric(loadgen.Millis(res.Send.P99), "send_p99_ms")
		b.ReportMetric(res.AchievedRate, "msgs/s")
		b.ReportMetric(float64(res.Scheduled-res.Sent+res.Failed+res.Unseen), "lost")
	}
}

func TestSustainedP99Millis(t *testing.T) {
	p99 := loadgen.Latency{P99: 42 * time.Millisecond}
	for _, tc := range []struct {
		name string
		r    loadgen.Result
		want float64
	}{
		{"all accepted and seen", loadgen.Result{Scheduled: 1000, OK: 1000, SendToPersistedAll: p99}, 42},
		{"1% not accepted", loadgen.Result{Scheduled: 1000, OK: 990, SendToPersistedAll: p99}, 42},
		{"more than 1% not accepted", loadgen.Result{Scheduled: 1000, OK: 989, SendToPersistedAll: p99}, math.Inf(1)},
		{"more than 1% not seen", loadgen.Result{Scheduled: 1000, OK: 1000, Unseen: 11, SendToPersistedAll: p99}, math.Inf(1)},
	} {
		if got := SustainedP99Millis(tc.r); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
