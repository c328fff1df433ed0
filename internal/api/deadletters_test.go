package api_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/testenv"
)

// seq orders the seeded entries: each one fails a millisecond after the previous one.
var (
	seqMu   sync.Mutex
	seqTime = time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	seqOff  int64
)

// dl is a dead letter of tenant failing at stage, in status, on messages.inbound.
func dl(tenant, stage, class string, st store.DeadLetterStatus, errMsg string, payload []byte) store.DeadLetter {
	seqMu.Lock()
	seqTime = seqTime.Add(time.Millisecond)
	seqOff++
	at, off := seqTime, seqOff
	seqMu.Unlock()
	d := store.DeadLetter{
		ID: store.DeadLetterID(kafka.TopicInbound, 0, off, 1), OriginalTopic: kafka.TopicInbound, OriginalOffset: off,
		Key: []byte("conv-1"), Payload: payload, TenantID: tenant, Stage: stage, Error: errMsg, ErrorClass: class, Attempts: 1,
		Status: st, FirstFailureTime: at, LastFailureTime: at,
		Headers: []store.Header{
			{Key: "content-type", Value: []byte("application/x-protobuf")},
			{Key: "x-binary", Value: []byte{0xff, 0x01}},
			{Key: envelope.HeaderDLQStage, Value: []byte(stage)},
			{Key: envelope.HeaderDLQAttempts, Value: []byte("1")},
		},
	}
	switch st {
	case store.DeadLetterPendingRetry:
		next := at.Add(24 * time.Hour)
		d.NextRetryTime = &next
	case store.DeadLetterRetrying:
		lease := time.Now().Add(time.Hour)
		d.ClaimOwner, d.LeaseUntil, d.ClaimedFrom = "someone", &lease, store.DeadLetterPendingRetry
	}
	return d
}

func (g *gateway) seed(t *testing.T, dls ...store.DeadLetter) []string {
	t.Helper()
	res, err := g.dlst.InsertMany(context.Background(), dls)
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]string, len(dls))
	for i, r := range res {
		if r.Err != nil || r.Duplicate {
			t.Fatalf("seed %s: %+v", dls[i].ID, r)
		}
		ids[i] = dls[i].ID
	}
	return ids
}

func wantCode(t *testing.T, what string, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Errorf("%s: %v, want %s", what, err, code)
	}
}

func listIDs(t *testing.T, g *gateway, ops string, f *platformv1.DeadLetterFilter) []string {
	t.Helper()
	resp, err := g.dls.ListDeadLetters(as(ops), &platformv1.ListDeadLettersRequest{Filter: f, PageSize: 200})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, d := range resp.GetDeadLetters() {
		ids = append(ids, d.GetId())
	}
	return ids
}

// republished returns the records of messages.inbound whose value is one of values.
func republished(t *testing.T, broker string, values ...string) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(broker), kgo.ConsumeTopics(kafka.TopicInbound))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []*kgo.Record
	for len(out) < len(values) && ctx.Err() == nil {
		for _, r := range cl.PollFetches(ctx).Records() {
			if slices.Contains(values, string(r.Value)) {
				out = append(out, r)
			}
		}
	}
	return out
}

// The service as platform_operator, who reaches every tenant (the tenant scoping of `operator` is
// TestOperatorTenantScopeAndAudit's).
func TestDeadLetterService(t *testing.T) {
	g := startGateway(t, testenv.Kafka(t), gatewayOnly)
	ops := testenv.Token(t, "oscar", "t1", "platform_operator")

	t.Run("list with filters and pages", func(t *testing.T) {
		ids := g.seed(t,
			dl("tl", "deserialize", "permanent", store.DeadLetterParked, "Cannot decode protobuf", []byte{0xff, 0xfe}),
			dl("tl", "authorize", "permanent", store.DeadLetterParked, "sender MALLORY is not a member", []byte("b")),
			dl("tl", "persist", "transient", store.DeadLetterPendingRetry, "store unavailable", []byte("c")),
			dl("tl", "persist", "transient", store.DeadLetterRetrying, "store unavailable: timeout", []byte("d")),
			dl("tl", "authorize", "permanent", store.DeadLetterRetried, "sender mallory is not a member", []byte("e")),
			dl("other", "authorize", "permanent", store.DeadLetterParked, "sender mallory is not a member", []byte("f")),
		)
		a, b, c, d, e := ids[0], ids[1], ids[2], ids[3], ids[4]
		for _, tc := range []struct {
			name string
			f    *platformv1.DeadLetterFilter
			want []string
		}{
			{"tenant, newest first", &platformv1.DeadLetterFilter{TenantId: "tl"}, []string{e, d, c, b, a}},
			{"stage", &platformv1.DeadLetterFilter{TenantId: "tl", Stage: "authorize"}, []string{e, b}},
			{"pending includes in-flight", &platformv1.DeadLetterFilter{TenantId: "tl", Status: platformv1.DeadLetterStatus_DEAD_LETTER_STATUS_PENDING_RETRY}, []string{d, c}},
			{"parked", &platformv1.DeadLetterFilter{TenantId: "tl", Status: platformv1.DeadLetterStatus_DEAD_LETTER_STATUS_PARKED}, []string{b, a}},
			{"retried", &platformv1.DeadLetterFilter{TenantId: "tl", Status: platformv1.DeadLetterStatus_DEAD_LETTER_STATUS_RETRIED}, []string{e}},
			{"error substring, any case", &platformv1.DeadLetterFilter{TenantId: "tl", ErrorContains: "Mallory IS"}, []string{e, b}},
			{"error substring is literal", &platformv1.DeadLetterFilter{TenantId: "tl", ErrorContains: "unavailable.*"}, nil},
			{"error class", &platformv1.DeadLetterFilter{TenantId: "tl", ErrorClass: platformv1.ErrorClass_ERROR_CLASS_TRANSIENT}, []string{d, c}},
			{"combined", &platformv1.DeadLetterFilter{TenantId: "tl", Stage: "authorize", ErrorContains: "mallory", Status: platformv1.DeadLetterStatus_DEAD_LETTER_STATUS_PARKED, ErrorClass: platformv1.ErrorClass_ERROR_CLASS_PERMANENT}, []string{b}},
		} {
			if got := listIDs(t, g, ops, tc.f); !slices.Equal(got, tc.want) {
				t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
			}
		}

		var paged []string
		token := ""
		for range 10 {
			resp, err := g.dls.ListDeadLetters(as(ops), &platformv1.ListDeadLettersRequest{Filter: &platformv1.DeadLetterFilter{TenantId: "tl"}, PageSize: 2, PageToken: token})
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.GetDeadLetters()) > 2 {
				t.Fatalf("page of %d", len(resp.GetDeadLetters()))
			}
			for _, x := range resp.GetDeadLetters() {
				paged = append(paged, x.GetId())
			}
			if token = resp.GetNextPageToken(); token == "" {
				break
			}
		}
		if !slices.Equal(paged, []string{e, d, c, b, a}) {
			t.Errorf("pages of 2: %v", paged)
		}
		_, err := g.dls.ListDeadLetters(as(ops), &platformv1.ListDeadLettersRequest{PageSize: -1})
		wantCode(t, "negative page size", err, codes.InvalidArgument)
		_, err = g.dls.ListDeadLetters(as(ops), &platformv1.ListDeadLettersRequest{PageToken: "garbage"})
		wantCode(t, "bad page token", err, codes.InvalidArgument)
		_, err = g.dls.ListDeadLetters(as(ops), &platformv1.ListDeadLettersRequest{Filter: &platformv1.DeadLetterFilter{Status: 42}})
		wantCode(t, "unknown status", err, codes.InvalidArgument)

		code, body := restCall(t, g, ops, "GET", "/v1/dead-letters?filter.tenantId=tl&filter.status=DEAD_LETTER_STATUS_PARKED&pageSize=1", "")
		items, _ := body["deadLetters"].([]any)
		if code != http.StatusOK || len(items) != 1 || items[0].(map[string]any)["id"] != b || body["nextPageToken"] == "" {
			t.Errorf("REST list: %d %v", code, body)
		}
	})

	t.Run("get shows the payload as text or base64", func(t *testing.T) {
		ids := g.seed(t,
			dl("tg", "persist", "transient", store.DeadLetterPendingRetry, "store unavailable", []byte(`{"body":"héllo"}`)),
			dl("tg", "deserialize", "permanent", store.DeadLetterParked, "bad bytes", []byte{0xff, 0x00, 0x80}),
		)
		text, err := g.dls.GetDeadLetter(as(ops), &platformv1.GetDeadLetterRequest{Id: ids[0]})
		if err != nil {
			t.Fatal(err)
		}
		x := text.GetDeadLetter()
		if x.GetPayloadText() != `{"body":"héllo"}` || string(x.GetPayload()) != `{"body":"héllo"}` || x.GetStage() != "persist" ||
			x.GetErrorClass() != platformv1.ErrorClass_ERROR_CLASS_TRANSIENT || x.GetStatus() != platformv1.DeadLetterStatus_DEAD_LETTER_STATUS_PENDING_RETRY ||
			x.GetNextRetryTime() == nil || x.GetAttempts() != 1 || x.GetOriginalTopic() != kafka.TopicInbound || x.GetTenantId() != "tg" ||
			x.GetHeaders()["content-type"] != "application/x-protobuf" || x.GetHeaders()["x-binary"] != "base64:/wE=" ||
			x.GetHeaders()[envelope.HeaderDLQStage] != "persist" || x.GetFirstFailureTime() == nil || x.GetUpdateTime() == nil || string(x.GetKey()) != "conv-1" {
			t.Errorf("text payload entry: %v", x)
		}
		code, body := restCall(t, g, ops, "GET", "/v1/dead-letters/"+ids[1], "")
		y, _ := body["deadLetter"].(map[string]any)
		if code != http.StatusOK || y["payloadText"] != "" || y["payload"] != base64.StdEncoding.EncodeToString([]byte{0xff, 0x00, 0x80}) ||
			y["status"] != "DEAD_LETTER_STATUS_PARKED" || y["errorClass"] != "ERROR_CLASS_PERMANENT" || y["nextRetryTime"] != nil {
			t.Errorf("REST get of a binary payload: %d %v", code, body)
		}
		_, err = g.dls.GetDeadLetter(as(ops), &platformv1.GetDeadLetterRequest{Id: "messages.inbound-9-9-9"})
		wantCode(t, "get missing", err, codes.NotFound)
		_, err = g.dls.GetDeadLetter(as(ops), &platformv1.GetDeadLetterRequest{})
		wantCode(t, "get without id", err, codes.InvalidArgument)
	})

	t.Run("retry one", func(t *testing.T) {
		ids := g.seed(t,
			dl("tr", "authorize", "permanent", store.DeadLetterParked, "not a member", []byte("retry-one")),
			dl("tr", "authorize", "permanent", store.DeadLetterParked, "not a member", []byte("retry-one-rest")),
		)
		resp, err := g.dls.RetryDeadLetter(as(ops), &platformv1.RetryDeadLetterRequest{Id: ids[0]})
		if err != nil {
			t.Fatal(err)
		}
		if x := resp.GetDeadLetter(); x.GetStatus() != platformv1.DeadLetterStatus_DEAD_LETTER_STATUS_RETRIED || x.GetId() != ids[0] {
			t.Errorf("retried entry: %v", x)
		}
		code, body := restCall(t, g, ops, "POST", "/v1/dead-letters/"+ids[1]+":retry", "{}")
		if y, _ := body["deadLetter"].(map[string]any); code != http.StatusOK || y["status"] != "DEAD_LETTER_STATUS_RETRIED" {
			t.Errorf("REST retry: %d %v", code, body)
		}
		recs := republished(t, g.kafka, "retry-one", "retry-one-rest")
		if len(recs) != 2 {
			t.Fatalf("%d records republished, want 2", len(recs))
		}
		for _, r := range recs {
			h := map[string]string{}
			for _, x := range r.Headers {
				h[x.Key] = string(x.Value)
			}
			if string(r.Key) != "conv-1" || h[envelope.HeaderDLQAttempts] != "1" || h[envelope.HeaderDLQStage] != "" || h["content-type"] != "application/x-protobuf" {
				t.Errorf("republished record: key %q headers %v", r.Key, h)
			}
		}
		if evs := g.auditEvents("RetryDeadLetter", ids[0]); len(evs) != 1 || evs[0]["subject"] != "oscar" || evs[0]["tenant"] != "t1" ||
			evs[0]["operator_role"] != "platform_operator" || evs[0]["code"] != "OK" || evs[0]["detail.topic"] != kafka.TopicInbound {
			t.Errorf("retry audit events: %v", evs)
		}

		if _, err := g.dls.PurgeDeadLetter(as(ops), &platformv1.PurgeDeadLetterRequest{Id: ids[0]}); err != nil {
			t.Fatal(err)
		}
		_, err = g.dls.RetryDeadLetter(as(ops), &platformv1.RetryDeadLetterRequest{Id: ids[0]})
		wantCode(t, "retry of a purged entry", err, codes.FailedPrecondition)
		_, err = g.dls.RetryDeadLetter(as(ops), &platformv1.RetryDeadLetterRequest{Id: "messages.inbound-9-9-9"})
		wantCode(t, "retry of a missing entry", err, codes.NotFound)
	})

	t.Run("retry by filter", func(t *testing.T) {
		g.seed(t,
			dl("tf", "authorize", "permanent", store.DeadLetterParked, "not a member", []byte("f1")),
			dl("tf", "authorize", "permanent", store.DeadLetterParked, "not a member", []byte("f2")),
			dl("tf", "authorize", "transient", store.DeadLetterPendingRetry, "redis down", []byte("f3")),
			dl("tf", "authorize", "permanent", store.DeadLetterPurged, "not a member", nil),
			dl("tf", "authorize", "permanent", store.DeadLetterRetried, "not a member", []byte("f4")),
			dl("tf", "deserialize", "permanent", store.DeadLetterParked, "bad bytes", []byte("f5")),
		)
		resp, err := g.dls.RetryDeadLetters(as(ops), &platformv1.RetryDeadLettersRequest{Filter: &platformv1.DeadLetterFilter{TenantId: "tf", Stage: "authorize"}})
		if err != nil || resp.GetRequeuedCount() != 3 {
			t.Fatalf("retry by filter = %v, %v; want 3 (not the purged nor the retried one)", resp, err)
		}
		if recs := republished(t, g.kafka, "f1", "f2", "f3"); len(recs) != 3 {
			t.Errorf("%d records republished, want 3", len(recs))
		}
		resp, err = g.dls.RetryDeadLetters(as(ops), &platformv1.RetryDeadLettersRequest{Filter: &platformv1.DeadLetterFilter{TenantId: "tf", Stage: "authorize"}})
		if err != nil || resp.GetRequeuedCount() != 0 {
			t.Errorf("retry by the same filter again = %v, %v; want 0", resp, err)
		}
		resp, err = g.dls.RetryDeadLetters(as(ops), &platformv1.RetryDeadLettersRequest{Filter: &platformv1.DeadLetterFilter{
			TenantId: "tf", Status: platformv1.DeadLetterStatus_DEAD_LETTER_STATUS_RETRIED}})
		if err != nil || resp.GetRequeuedCount() != 4 {
			t.Errorf("retry of retried entries, named explicitly = %v, %v; want 4", resp, err)
		}
		_, err = g.dls.RetryDeadLetters(as(ops), &platformv1.RetryDeadLettersRequest{Filter: &platformv1.DeadLetterFilter{Status: platformv1.DeadLetterStatus_DEAD_LETTER_STATUS_PURGED}})
		wantCode(t, "retry of purged entries", err, codes.InvalidArgument)
		code, body := restCall(t, g, ops, "POST", "/v1/dead-letters:retry", `{"filter":{"tenantId":"tf","stage":"deserialize"}}`)
		if code != http.StatusOK || body["requeuedCount"] != "1" {
			t.Errorf("REST retry by filter: %d %v", code, body)
		}
	})

	t.Run("purge", func(t *testing.T) {
		ids := g.seed(t,
			dl("tp", "validate", "permanent", store.DeadLetterParked, "empty body", []byte("p1")),
			dl("tp", "validate", "permanent", store.DeadLetterParked, "empty body", []byte("p2")),
			dl("tp", "validate", "permanent", store.DeadLetterParked, "empty body", []byte("p3")),
			dl("tp", "tenant", "permanent", store.DeadLetterParked, "no such conversation", []byte("p4")),
			dl("tp", "persist", "transient", store.DeadLetterRetrying, "store down", []byte("p5")), // held by a retrier
		)
		if _, err := g.dls.PurgeDeadLetter(as(ops), &platformv1.PurgeDeadLetterRequest{Id: ids[0]}); err != nil {
			t.Fatal(err)
		}
		got, err := g.dls.GetDeadLetter(as(ops), &platformv1.GetDeadLetterRequest{Id: ids[0]})
		if x := got.GetDeadLetter(); err != nil || x.GetStatus() != platformv1.DeadLetterStatus_DEAD_LETTER_STATUS_PURGED || x.GetPayload() != nil ||
			x.GetError() != "empty body" || x.GetStage() != "validate" {
			t.Errorf("purged entry: %v, %v (payload dropped, the rest kept)", x, err)
		}
		if _, err := g.dls.PurgeDeadLetter(as(ops), &platformv1.PurgeDeadLetterRequest{Id: ids[0]}); err != nil {
			t.Errorf("purge again: %v", err)
		}
		code, _ := restCall(t, g, ops, "DELETE", "/v1/dead-letters/"+ids[1], "")
		if code != http.StatusOK {
			t.Errorf("REST purge: %d", code)
		}
		_, err = g.dls.PurgeDeadLetter(as(ops), &platformv1.PurgeDeadLetterRequest{Id: ids[4]})
		wantCode(t, "purge of an entry being retried", err, codes.Aborted)
		_, err = g.dls.PurgeDeadLetter(as(ops), &platformv1.PurgeDeadLetterRequest{Id: "messages.inbound-9-9-9"})
		wantCode(t, "purge of a missing entry", err, codes.NotFound)

		_, err = g.dls.PurgeDeadLetters(as(ops), &platformv1.PurgeDeadLettersRequest{})
		wantCode(t, "purge with an empty request", err, codes.InvalidArgument)
		_, err = g.dls.PurgeDeadLetters(as(ops), &platformv1.PurgeDeadLettersRequest{Filter: &platformv1.DeadLetterFilter{}})
		wantCode(t, "purge with an empty filter", err, codes.InvalidArgument)
		_, err = g.dls.PurgeDeadLetters(as(ops), &platformv1.PurgeDeadLettersRequest{All: true, Filter: &platformv1.DeadLetterFilter{Stage: "x"}})
		wantCode(t, "purge with all and a filter", err, codes.InvalidArgument)
		if code, body := restCall(t, g, ops, "POST", "/v1/dead-letters:purge", "{}"); code != http.StatusBadRequest {
			t.Errorf("REST purge with an empty body: %d %v", code, body)
		}

		resp, err := g.dls.PurgeDeadLetters(as(ops), &platformv1.PurgeDeadLettersRequest{Filter: &platformv1.DeadLetterFilter{TenantId: "tp", Stage: "validate"}})
		if err != nil || resp.GetPurgedCount() != 1 {
			t.Errorf("purge by filter = %v, %v; want 1 (two were purged already)", resp, err)
		}
		code, body := restCall(t, g, ops, "POST", "/v1/dead-letters:purge", `{"filter":{"tenantId":"tp","errorContains":"CONVERSATION"}}`)
		if code != http.StatusOK || body["purgedCount"] != "1" {
			t.Errorf("REST purge by filter: %d %v", code, body)
		}
		left := listIDs(t, g, ops, &platformv1.DeadLetterFilter{TenantId: "tp", Status: platformv1.DeadLetterStatus_DEAD_LETTER_STATUS_PURGED})
		if len(left) != 4 {
			t.Errorf("%d purged entries of tp, want 4", len(left))
		}
		waitMetric(t, g, "platform_dlq_purged_total 5") // and one in "retry one"
		if evs := g.auditEvents("PurgeDeadLetters", "tp"); len(evs) != 2 || evs[0]["subject"] != "oscar" || evs[0]["detail.purged"] != "1" ||
			evs[0]["resource.filter.tenant_id"] != "tp" || evs[0]["mutation"] != "true" {
			t.Errorf("purge by filter audit events: %v", evs)
		}
	})

	t.Run("stats", func(t *testing.T) {
		old := dl("ts", "persist", "transient", store.DeadLetterPendingRetry, "store down", []byte("s1"))
		old.LastFailureTime = time.Now().Add(-2 * time.Hour)
		g.seed(t, old,
			dl("ts", "persist", "transient", store.DeadLetterRetrying, "store down", []byte("s2")),
			dl("ts", "authorize", "permanent", store.DeadLetterParked, "not a member", []byte("s3")),
			dl("ts", "authorize", "permanent", store.DeadLetterRetried, "not a member", []byte("s4")),
			dl("ts", "deserialize", "permanent", store.DeadLetterPurged, "bad bytes", nil),
		)
		resp, err := g.dls.GetDeadLetterStats(as(ops), &platformv1.GetDeadLetterStatsRequest{TenantId: "ts"})
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]int64{"DEAD_LETTER_STATUS_PENDING_RETRY": 2, "DEAD_LETTER_STATUS_PARKED": 1, "DEAD_LETTER_STATUS_RETRIED": 1, "DEAD_LETTER_STATUS_PURGED": 1}
		if resp.GetTotal() != 5 || fmt.Sprint(resp.GetByStatus()) != fmt.Sprint(want) ||
			fmt.Sprint(resp.GetByStage()) != "map[authorize:2 deserialize:1 persist:2]" ||
			fmt.Sprint(resp.GetByErrorClass()) != "map[ERROR_CLASS_PERMANENT:3 ERROR_CLASS_TRANSIENT:2]" ||
			resp.GetOldestPendingAge().AsDuration() < 2*time.Hour {
			t.Errorf("stats = %v", resp)
		}
		code, body := restCall(t, g, ops, "GET", "/v1/dead-letters:stats?tenantId=ts", "")
		if code != http.StatusOK || body["total"] != "5" {
			t.Errorf("REST stats: %d %v", code, body)
		}
		all, err := g.dls.GetDeadLetterStats(as(ops), &platformv1.GetDeadLetterStatsRequest{})
		if err != nil || all.GetTotal() <= 5 {
			t.Errorf("stats of every tenant: %v, %v", all, err)
		}
	})

	t.Run("purge everything", func(t *testing.T) {
		before, err := g.dls.GetDeadLetterStats(as(ops), &platformv1.GetDeadLetterStatsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		// Three seeded entries are held by a live claim of a retrier (one each in list, purge and stats): skipped.
		notPurged := before.GetTotal() - before.GetByStatus()["DEAD_LETTER_STATUS_PURGED"] - 3
		resp, err := g.dls.PurgeDeadLetters(as(ops), &platformv1.PurgeDeadLettersRequest{All: true})
		if err != nil || resp.GetPurgedCount() != notPurged {
			t.Errorf("purge all = %v, %v; want %d", resp, err, notPurged)
		}
	})

	t.Run("a plain user is denied every RPC", func(t *testing.T) {
		user := testenv.Token(t, "ursula", "t1", "user")
		ctx := as(user)
		for name, call := range map[string]func() error{
			"List": func() error { _, err := g.dls.ListDeadLetters(ctx, &platformv1.ListDeadLettersRequest{}); return err },
			"Get": func() error {
				_, err := g.dls.GetDeadLetter(ctx, &platformv1.GetDeadLetterRequest{Id: "x"})
				return err
			},
			"Retry": func() error {
				_, err := g.dls.RetryDeadLetter(ctx, &platformv1.RetryDeadLetterRequest{Id: "x"})
				return err
			},
			"Retrys": func() error { _, err := g.dls.RetryDeadLetters(ctx, &platformv1.RetryDeadLettersRequest{}); return err },
			"Purge": func() error {
				_, err := g.dls.PurgeDeadLetter(ctx, &platformv1.PurgeDeadLetterRequest{Id: "x"})
				return err
			},
			"Purges": func() error {
				_, err := g.dls.PurgeDeadLetters(ctx, &platformv1.PurgeDeadLettersRequest{All: true})
				return err
			},
			"Stats": func() error {
				_, err := g.dls.GetDeadLetterStats(ctx, &platformv1.GetDeadLetterStatsRequest{})
				return err
			},
		} {
			wantCode(t, "gRPC "+name+" as a user", call(), codes.PermissionDenied)
		}
		for _, r := range []struct{ method, path, body string }{
			{"GET", "/v1/dead-letters", ""},
			{"GET", "/v1/dead-letters/x", ""},
			{"POST", "/v1/dead-letters/x:retry", "{}"},
			{"POST", "/v1/dead-letters:retry", "{}"},
			{"DELETE", "/v1/dead-letters/x", ""},
			{"POST", "/v1/dead-letters:purge", `{"all":true}`},
			{"GET", "/v1/dead-letters:stats", ""},
		} {
			if code, body := restCall(t, g, user, r.method, r.path, r.body); code != http.StatusForbidden {
				t.Errorf("REST %s %s as a user: %d %v", r.method, r.path, code, body)
			}
		}
		if code, _ := restCall(t, g, "", "GET", "/v1/dead-letters", ""); code != http.StatusUnauthorized {
			t.Errorf("REST list without a token: %d", code)
		}
	})
}

// End to end through the ingest pipeline: undecodable bytes and an unauthorized sender, produced straight to
// messages.inbound, end as parked dead letters with the right stage and class; once the missing member is
// added, retry by filter lands the message exactly once.
func TestDeadLetterEndToEndThroughThePipeline(t *testing.T) {
	g := startGateway(t, testenv.Kafka(t), gatewayAndPipeline)
	// The undecodable record has no tenant: only platform_operator reaches it.
	ops := testenv.Token(t, "oscar", "t1", "platform_operator")
	alice := testenv.Token(t, "alice", "te")
	conv := newConversation(t, g, alice, "bob")
	ctx := context.Background()

	producer, err := kafka.NewProducer([]string{g.kafka}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	in := &platformv1.InboundMessage{
		Id: ulid.Make().String(), TenantId: "te", ConversationId: conv, SenderId: "mallory", Body: "let me in",
		RequestId: "req-e2e", SendTime: timestamppb.Now(), SenderRoles: []string{"user"},
	}
	value, err := proto.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	// Both signed, as if the gateway had produced them: they get past authenticate.
	keys := testenv.SigningKeys(t)
	ct := []kgo.RecordHeader{{Key: "content-type", Value: []byte("application/x-protobuf")}}
	undecodableRec := &kgo.Record{Topic: kafka.TopicInbound, Key: []byte(conv), Value: []byte{0xff, 0xff, 0xff, 0x01}, Headers: ct}
	unauthorizedRec := &kgo.Record{Topic: kafka.TopicInbound, Key: []byte(conv), Value: value, Headers: ct}
	for _, r := range []*kgo.Record{undecodableRec, unauthorizedRec} {
		if err := keys.Sign(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := producer.ProduceSync(ctx, undecodableRec, unauthorizedRec).FirstErr(); err != nil {
		t.Fatal(err)
	}

	parked := &platformv1.DeadLetterFilter{Status: platformv1.DeadLetterStatus_DEAD_LETTER_STATUS_PARKED}
	var entries []*platformv1.DeadLetter
	testenv.Eventually(t, "both records parked as dead letters", 60*time.Second, func() bool {
		resp, err := g.dls.ListDeadLetters(as(ops), &platformv1.ListDeadLettersRequest{Filter: parked})
		if err != nil {
			t.Fatal(err)
		}
		entries = resp.GetDeadLetters()
		return len(entries) >= 2
	})
	byStage := map[string]*platformv1.DeadLetter{}
	for _, e := range entries {
		byStage[e.GetStage()] = e
	}
	undecodable, unauthorized := byStage[envelope.StageDeserialize], byStage[envelope.StageAuthorize]
	if len(entries) != 2 || undecodable == nil || unauthorized == nil {
		t.Fatalf("dead letters: %v", entries)
	}
	if undecodable.GetErrorClass() != platformv1.ErrorClass_ERROR_CLASS_PERMANENT || string(undecodable.GetPayload()) != "\xff\xff\xff\x01" ||
		undecodable.GetPayloadText() != "" || undecodable.GetOriginalTopic() != kafka.TopicInbound {
		t.Errorf("undecodable: %v", undecodable)
	}
	if unauthorized.GetErrorClass() != platformv1.ErrorClass_ERROR_CLASS_PERMANENT || unauthorized.GetTenantId() != "te" ||
		unauthorized.GetMessageId() != in.GetId() || unauthorized.GetAttempts() != 1 {
		t.Errorf("unauthorized: %v", unauthorized)
	}

	if _, err := g.conv.AddMember(as(alice), &platformv1.AddMemberRequest{ConversationId: conv, UserId: "mallory",
		Role: platformv1.MemberRole_MEMBER_ROLE_MEMBER}); err != nil {
		t.Fatal(err)
	}
	resp, err := g.dls.RetryDeadLetters(as(ops), &platformv1.RetryDeadLettersRequest{Filter: &platformv1.DeadLetterFilter{TenantId: "te", Stage: envelope.StageAuthorize}})
	if err != nil || resp.GetRequeuedCount() != 1 {
		t.Fatalf("retry by filter = %v, %v", resp, err)
	}
	var m store.Message
	testenv.Eventually(t, "the message persisted after the retry", 60*time.Second, func() bool {
		m, err = g.st.Messages.Get(context.Background(), "te", conv, in.GetId())
		return err == nil
	})
	if m.State != store.MessagePersisted || m.SenderID != "mallory" || m.Body != "let me in" {
		t.Errorf("persisted %+v", m)
	}
	msgs, _, err := g.st.Messages.List(context.Background(), "te", conv, 0, "")
	if err != nil || len(msgs) != 1 {
		t.Errorf("%d messages in the conversation, want exactly 1 (%v)", len(msgs), err)
	}
	again, err := g.dls.GetDeadLetter(as(ops), &platformv1.GetDeadLetterRequest{Id: unauthorized.GetId()})
	if err != nil || again.GetDeadLetter().GetStatus() != platformv1.DeadLetterStatus_DEAD_LETTER_STATUS_RETRIED {
		t.Errorf("entry after the retry: %v, %v", again, err)
	}
	stats, err := g.dls.GetDeadLetterStats(as(ops), &platformv1.GetDeadLetterStatsRequest{})
	if err != nil || stats.GetTotal() != 2 {
		t.Errorf("dead letters after the retry: %v, %v (the retried message must not fail again)", stats, err)
	}
}
