package devstack_test

import (
	"bufio"
	"context"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/testenv"
)

// documentedMetric is one metric name of the metrics table of docs/operations.md and the processes said
// to export it.
type documentedMetric struct {
	name  string
	where []string // gateway, pipeline
}

// docsMetrics reads the table under "## Metrics" in docs/operations.md: every backquoted name of the
// first column, with the processes of the last one.
func docsMetrics(t *testing.T) []documentedMetric {
	t.Helper()
	b, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	section := string(b)
	start := strings.Index(section, "\n## Metrics\n")
	if start < 0 {
		t.Fatal("docs/operations.md has no ## Metrics section")
	}
	section = section[start+len("\n## Metrics\n"):]
	if end := strings.Index(section, "\n## "); end >= 0 {
		section = section[:end]
	}
	name := regexp.MustCompile("`([a-z_]+)`")
	var out []documentedMetric
	for _, line := range strings.Split(section, "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 6 || !strings.Contains(cells[1], "`") {
			continue
		}
		where := cells[len(cells)-2]
		var procs []string
		for _, p := range []string{"gateway", "pipeline"} {
			if strings.Contains(where, p) {
				procs = append(procs, p)
			}
		}
		for _, m := range name.FindAllStringSubmatch(cells[1], -1) {
			out = append(out, documentedMetric{name: m[1], where: procs})
		}
	}
	if len(out) < 40 {
		t.Fatalf("read %d metrics from the table of docs/operations.md; the parser no longer matches it", len(out))
	}
	return out
}

// scrapeTypes fetches /metrics and returns each family's type from its # TYPE line.
func scrapeTypes(t *testing.T, addr string) map[string]string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s/metrics = %d", addr, resp.StatusCode)
	}
	types := map[string]string{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			types[f[2]] = f[3]
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return types
}

var nonBaseUnit = regexp.MustCompile(`_(ms|milliseconds|microseconds|minutes|hours|kilobytes|megabytes|mib|kib)(_|$)`)

// TestEveryDocumentedMetricIsExported runs the devstack, drives the traffic a new user would (a
// conversation, messages stored by the pipeline, a record that cannot be decoded and ends in the DLQ), then
// scrapes its /metrics: the devstack runs the gateway and the pipeline roles in one process over one
// registry, so every metric docs/operations.md lists (for the gateway, the pipeline or both) is served by
// that one endpoint, every platform and gRPC metric served is listed there, and the names follow
// Prometheus' rules.
func TestEveryDocumentedMetricIsExported(t *testing.T) {
	// As `make run`: the quotas at their defaults, so the rate limiter's metrics are served too.
	ctx, addrs, _, _ := startDevstack(t, map[string]string{"RATE_LIMIT_PRINCIPAL_RPS": "", "RATE_LIMIT_TENANT_RPS": ""})
	conn, err := grpc.NewClient(addrs.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	as := func(sub string, roles ...string) context.Context {
		tok, err := auth.MintHS256([]byte(auth.DevHMACSecret), auth.Principal{Subject: sub, TenantID: "t1", Roles: roles}, time.Hour, "", "")
		if err != nil {
			t.Fatal(err)
		}
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}
	user, operator := as("ada", "user"), as("oscar", "platform_operator") // the undecodable record belongs to no tenant

	conv, err := platformv1.NewConversationServiceClient(conn).CreateConversation(user, &platformv1.CreateConversationRequest{Title: "metrics"})
	if err != nil {
		t.Fatal(err)
	}
	msgs := platformv1.NewMessageServiceClient(conn)
	sent, err := msgs.SendMessage(user, &platformv1.SendMessageRequest{ConversationId: conv.GetConversation().GetId(), Body: "hello @grace"})
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "the message stored by the pipeline", 30*time.Second, func() bool {
		_, err := msgs.GetMessage(user, &platformv1.GetMessageRequest{ConversationId: conv.GetConversation().GetId(), MessageId: sent.GetMessageId()})
		return err == nil
	})
	if code, _ := getJSON(t, "http://"+addrs.HTTP+"/v1/health"); code != http.StatusOK {
		t.Fatalf("GET /v1/health = %d", code)
	}

	producer, err := kgo.NewClient(kgo.SeedBrokers(addrs.Kafka))
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	if err := producer.ProduceSync(ctx, &kgo.Record{Topic: kafka.TopicInbound, Value: []byte("not a protobuf message")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	dead := platformv1.NewDeadLetterServiceClient(conn)
	testenv.Eventually(t, "the undecodable record in the DLQ", 30*time.Second, func() bool {
		s, err := dead.GetDeadLetterStats(operator, &platformv1.GetDeadLetterStatsRequest{})
		return err == nil && s.GetTotal() > 0
	})

	types := scrapeTypes(t, addrs.Metrics)
	documented := map[string]bool{}
	for _, m := range docsMetrics(t) {
		documented[m.name] = true
		if len(m.where) == 0 {
			t.Errorf("%s: the table of docs/operations.md names no process (gateway, pipeline) that exports it", m.name)
		}
		if _, ok := types[m.name]; !ok {
			t.Errorf("%s: documented (where: %s) but not served by the devstack's /metrics, which serves both roles",
				m.name, strings.Join(m.where, ", "))
		}
	}
	for _, std := range []string{"go_goroutines", "go_memstats_heap_alloc_bytes", "process_resident_memory_bytes", "process_cpu_seconds_total"} {
		if _, ok := types[std]; !ok {
			t.Errorf("/metrics lacks the runtime/process metric %s", std)
		}
	}
	for name, typ := range types {
		if !strings.HasPrefix(name, "platform_") && !strings.HasPrefix(name, "grpc_") {
			continue
		}
		if !documented[name] {
			t.Errorf("the devstack exports %s (%s), which the metrics table of docs/operations.md does not list", name, typ)
		}
		if (typ == "counter") != strings.HasSuffix(name, "_total") {
			t.Errorf("%s is a %s: counters, and only counters, end in _total", name, typ)
		}
		if nonBaseUnit.MatchString(name) {
			t.Errorf("%s: use base units (seconds, bytes)", name)
		}
	}
}
