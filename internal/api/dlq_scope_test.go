package api_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/testenv"
)

// auditEvents returns the audit events (msg=audit) the process logged for method (its short name, ""
// for any) in which some attribute equals value ("" for any), decoded from the text handler's lines;
// nested attributes are flattened ("resource.id", "detail.purged").
func (g *gateway) auditEvents(method, value string) []map[string]string {
	var out []map[string]string
	for _, line := range strings.Split(g.logs.String(), "\n") {
		ev := logfmt(line)
		if ev["msg"] != "audit" || (method != "" && !strings.HasSuffix(ev["method"], "/"+method)) {
			continue
		}
		if value == "" || slices.ContainsFunc(mapValues(ev), func(v string) bool { return v == value }) {
			out = append(out, ev)
		}
	}
	return out
}

// auditOf returns the audit events of the call with request id rid.
func (g *gateway) auditOf(rid string) []map[string]string {
	var out []map[string]string
	for _, ev := range g.auditEvents("", rid) {
		if ev["request_id"] == rid {
			out = append(out, ev)
		}
	}
	return out
}

func mapValues(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// logfmt decodes one line of slog's text handler: key=value pairs, values quoted when they need it.
func logfmt(line string) map[string]string {
	out := map[string]string{}
	for line = strings.TrimSpace(line); line != ""; line = strings.TrimLeft(line, " ") {
		eq := strings.IndexByte(line, '=')
		if eq < 0 {
			break
		}
		key, rest := line[:eq], line[eq+1:]
		var val string
		if strings.HasPrefix(rest, `"`) {
			q, err := strconv.QuotedPrefix(rest)
			if err != nil {
				break
			}
			val, _ = strconv.Unquote(q)
			rest = rest[len(q):]
		} else if sp := strings.IndexByte(rest, ' '); sp >= 0 {
			val, rest = rest[:sp], rest[sp:]
		} else {
			val, rest = rest, ""
		}
		out[key] = val
		line = rest
	}
	return out
}

// call is a gRPC context calling with tok under request id rid.
func call(tok, rid string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok, "x-request-id", rid)
}

// An `operator` reaches the dead letters of its own tenant only, on every DeadLetterService RPC, over gRPC
// and REST: another tenant's entry, or one of no tenant, is NOT_FOUND exactly like an unknown id (and is
// left unchanged), a filter naming another tenant is PERMISSION_DENIED, and filters without a tenant take
// the operator's. `platform_operator` reaches every tenant and the entries of none. Every one of these
// calls, granted or refused, by an operator or by a user asking for dead letters, leaves exactly one audit
// event naming the caller, its tenant, the dead letter and the result, and no payload.
func TestOperatorTenantScopeAndAudit(t *testing.T) {
	g := startGateway(t, testenv.Kafka(t), gatewayOnly)
	oscar := testenv.Token(t, "oscar", "t1", "operator")      // t1's operator
	pat := testenv.Token(t, "pat", "t0", "platform_operator") // the platform's
	ursula := testenv.Token(t, "ursula", "t1", "user")        // nobody's
	ids := g.seed(t,
		dl("t1", "authorize", "permanent", store.DeadLetterParked, "not a member", []byte("scope-secret-a1")),
		dl("t1", "authorize", "permanent", store.DeadLetterParked, "not a member", []byte("scope-secret-a2")),
		dl("t2", "authorize", "permanent", store.DeadLetterParked, "not a member", []byte("scope-secret-b1")),
		dl("", "deserialize", "permanent", store.DeadLetterParked, "bad bytes", []byte("scope-secret-n1")),
	)
	a1, a2, b1, n1 := ids[0], ids[1], ids[2], ids[3]
	const unknown = "messages.inbound-9-9-9"

	rids := 0
	// audited checks the one audit event of the call rid: who, tenant, code, and want's other attributes.
	audited := func(t *testing.T, rid, subject, tenant, role string, code codes.Code, want map[string]string) {
		t.Helper()
		evs := g.auditOf(rid)
		if len(evs) != 1 {
			t.Errorf("call %s: %d audit events, want exactly 1: %v", rid, len(evs), evs)
			return
		}
		ev := evs[0]
		all := map[string]string{"subject": subject, "tenant": tenant, "operator_role": role, "code": code.String()}
		if code == codes.PermissionDenied {
			all["code"] = "PERMISSION_DENIED"
		} else if code == codes.NotFound {
			all["code"] = "NOT_FOUND"
		}
		for k, v := range want {
			all[k] = v
		}
		for k, v := range all {
			if ev[k] != v {
				t.Errorf("call %s: audit %s = %q, want %q (event %v)", rid, k, ev[k], v, ev)
			}
		}
	}
	next := func() string { rids++; return fmt.Sprintf("scope-req-%d", rids) }
	listed := func(t *testing.T, resp *platformv1.ListDeadLettersResponse) []string {
		t.Helper()
		var out []string
		for _, d := range resp.GetDeadLetters() {
			out = append(out, d.GetId())
		}
		slices.Sort(out)
		return out
	}
	sorted := func(ids ...string) []string { slices.Sort(ids); return ids }
	stillParked := func(t *testing.T, id string) {
		t.Helper()
		d, err := g.dlst.Get(context.Background(), id)
		if err != nil || d.Status != store.DeadLetterParked || len(d.Payload) == 0 {
			t.Errorf("%s after refused calls: %+v, %v; want it parked with its payload", id, d.Status, err)
		}
	}

	t.Run("operator of t1", func(t *testing.T) {
		rid := next()
		resp, err := g.dls.ListDeadLetters(call(oscar, rid), &platformv1.ListDeadLettersRequest{})
		if err != nil || !slices.Equal(listed(t, resp), sorted(a1, a2)) {
			t.Errorf("list: %v, %v; want only t1's %s, %s", listed(t, resp), err, a1, a2)
		}
		audited(t, rid, "oscar", "t1", "operator", codes.OK, map[string]string{"detail.listed": "2", "detail.filter.tenant_id": "t1"})

		rid = next()
		resp, err = g.dls.ListDeadLetters(call(oscar, rid), &platformv1.ListDeadLettersRequest{Filter: &platformv1.DeadLetterFilter{TenantId: "t1"}})
		if err != nil || !slices.Equal(listed(t, resp), sorted(a1, a2)) {
			t.Errorf("list naming t1: %v, %v", listed(t, resp), err)
		}
		audited(t, rid, "oscar", "t1", "operator", codes.OK, map[string]string{"resource.filter.tenant_id": "t1"})

		rid = next()
		_, err = g.dls.ListDeadLetters(call(oscar, rid), &platformv1.ListDeadLettersRequest{Filter: &platformv1.DeadLetterFilter{TenantId: "t2"}})
		wantCode(t, "list naming t2", err, codes.PermissionDenied)
		audited(t, rid, "oscar", "t1", "operator", codes.PermissionDenied, map[string]string{"resource.filter.tenant_id": "t2"})

		rid = next()
		got, err := g.dls.GetDeadLetter(call(oscar, rid), &platformv1.GetDeadLetterRequest{Id: a1})
		if err != nil || got.GetDeadLetter().GetPayloadText() != "scope-secret-a1" {
			t.Errorf("get own: %v, %v", got, err)
		}
		audited(t, rid, "oscar", "t1", "operator", codes.OK, map[string]string{"resource.id": a1, "detail.dead_letter_tenant": "t1"})

		_, unknownErr := g.dls.GetDeadLetter(call(oscar, next()), &platformv1.GetDeadLetterRequest{Id: unknown})
		for _, id := range []string{b1, n1} {
			rid = next()
			_, err = g.dls.GetDeadLetter(call(oscar, rid), &platformv1.GetDeadLetterRequest{Id: id})
			wantCode(t, "get of "+id, err, codes.NotFound)
			// Word for word the answer to an unknown id: existence does not leak.
			if strings.ReplaceAll(status.Convert(err).Message(), id, "X") != strings.ReplaceAll(status.Convert(unknownErr).Message(), unknown, "X") {
				t.Errorf("get of %s: %q, unknown id: %q", id, status.Convert(err).Message(), status.Convert(unknownErr).Message())
			}
			audited(t, rid, "oscar", "t1", "operator", codes.NotFound, map[string]string{"resource.id": id, "detail.out_of_scope": "true"})
		}

		rid = next()
		_, err = g.dls.RetryDeadLetter(call(oscar, rid), &platformv1.RetryDeadLetterRequest{Id: b1})
		wantCode(t, "retry of t2's", err, codes.NotFound)
		audited(t, rid, "oscar", "t1", "operator", codes.NotFound, map[string]string{"resource.id": b1, "mutation": "true"})
		rid = next()
		_, err = g.dls.PurgeDeadLetter(call(oscar, rid), &platformv1.PurgeDeadLetterRequest{Id: n1})
		wantCode(t, "purge of a tenantless one", err, codes.NotFound)
		audited(t, rid, "oscar", "t1", "operator", codes.NotFound, map[string]string{"resource.id": n1})
		stillParked(t, b1)
		stillParked(t, n1)

		rid = next()
		r, err := g.dls.RetryDeadLetter(call(oscar, rid), &platformv1.RetryDeadLetterRequest{Id: a1})
		if err != nil || r.GetDeadLetter().GetStatus() != platformv1.DeadLetterStatus_DEAD_LETTER_STATUS_RETRIED {
			t.Errorf("retry own: %v, %v", r, err)
		}
		audited(t, rid, "oscar", "t1", "operator", codes.OK, map[string]string{"resource.id": a1, "mutation": "true"})

		rid = next()
		st, err := g.dls.GetDeadLetterStats(call(oscar, rid), &platformv1.GetDeadLetterStatsRequest{})
		if err != nil || st.GetTotal() != 2 {
			t.Errorf("stats: %v, %v; want t1's 2", st, err)
		}
		audited(t, rid, "oscar", "t1", "operator", codes.OK, map[string]string{"detail.filter.tenant_id": "t1"})
		rid = next()
		_, err = g.dls.GetDeadLetterStats(call(oscar, rid), &platformv1.GetDeadLetterStatsRequest{TenantId: "t2"})
		wantCode(t, "stats of t2", err, codes.PermissionDenied)
		audited(t, rid, "oscar", "t1", "operator", codes.PermissionDenied, map[string]string{"resource.tenant_id": "t2"})

		rid = next()
		rr, err := g.dls.RetryDeadLetters(call(oscar, rid), &platformv1.RetryDeadLettersRequest{Filter: &platformv1.DeadLetterFilter{Stage: "authorize"}})
		if err != nil || rr.GetRequeuedCount() != 1 {
			t.Errorf("retry by filter: %v, %v; want 1 (a2: a1 is retried, b1 is t2's)", rr, err)
		}
		audited(t, rid, "oscar", "t1", "operator", codes.OK, map[string]string{"detail.requeued": "1", "detail.filter.tenant_id": "t1"})
		stillParked(t, b1)

		// REST goes through the same interceptors: the same NOT_FOUND, the same one event.
		rid = next()
		req, _ := http.NewRequest("GET", g.rest+"/v1/dead-letters/"+b1, nil)
		req.Header.Set("Authorization", "Bearer "+oscar)
		req.Header.Set("X-Request-Id", rid)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = res.Body.Close()
		if res.StatusCode != http.StatusNotFound {
			t.Errorf("REST get of t2's: %d", res.StatusCode)
		}
		audited(t, rid, "oscar", "t1", "operator", codes.NotFound, map[string]string{"resource.id": b1})

		rid = next()
		p, err := g.dls.PurgeDeadLetters(call(oscar, rid), &platformv1.PurgeDeadLettersRequest{All: true})
		if err != nil || p.GetPurgedCount() != 2 {
			t.Errorf("purge all: %v, %v; want t1's 2", p, err)
		}
		audited(t, rid, "oscar", "t1", "operator", codes.OK, map[string]string{"detail.purged": "2", "detail.filter.tenant_id": "t1"})
		stillParked(t, b1)
		stillParked(t, n1)
	})

	t.Run("platform operator", func(t *testing.T) {
		rid := next()
		resp, err := g.dls.ListDeadLetters(call(pat, rid), &platformv1.ListDeadLettersRequest{})
		if err != nil || !slices.Equal(listed(t, resp), sorted(a1, a2, b1, n1)) {
			t.Errorf("list: %v, %v; want every tenant's and the tenantless one", listed(t, resp), err)
		}
		audited(t, rid, "pat", "t0", "platform_operator", codes.OK, map[string]string{"detail.scope": "all tenants", "detail.listed": "4"})
		for _, id := range []string{b1, n1} {
			rid = next()
			got, err := g.dls.GetDeadLetter(call(pat, rid), &platformv1.GetDeadLetterRequest{Id: id})
			if err != nil || got.GetDeadLetter().GetId() != id {
				t.Errorf("get %s: %v, %v", id, got, err)
			}
			audited(t, rid, "pat", "t0", "platform_operator", codes.OK,
				map[string]string{"resource.id": id, "detail.dead_letter_tenant": got.GetDeadLetter().GetTenantId()})
		}
		rid = next()
		resp, err = g.dls.ListDeadLetters(call(pat, rid), &platformv1.ListDeadLettersRequest{Filter: &platformv1.DeadLetterFilter{TenantId: "t2"}})
		if err != nil || !slices.Equal(listed(t, resp), []string{b1}) {
			t.Errorf("list of t2: %v, %v", listed(t, resp), err)
		}
		audited(t, rid, "pat", "t0", "platform_operator", codes.OK, map[string]string{"resource.filter.tenant_id": "t2"})
	})

	t.Run("a user asking for dead letters is refused and audited", func(t *testing.T) {
		rid := next()
		_, err := g.dls.GetDeadLetter(call(ursula, rid), &platformv1.GetDeadLetterRequest{Id: a1})
		wantCode(t, "user get", err, codes.PermissionDenied)
		audited(t, rid, "ursula", "t1", "", codes.PermissionDenied, map[string]string{"resource.id": a1, "permission": "dlq.read"})
		rid = next()
		_, err = g.dls.PurgeDeadLetters(call(ursula, rid), &platformv1.PurgeDeadLettersRequest{All: true})
		wantCode(t, "user purge", err, codes.PermissionDenied)
		audited(t, rid, "ursula", "t1", "", codes.PermissionDenied, map[string]string{"permission": "dlq.write"})
		stillParked(t, b1)
	})

	// The trail names entries, never their payloads; and it is counted.
	if logs := g.logs.String(); strings.Contains(logs, "scope-secret") {
		t.Errorf("a payload reached the logs:\n%s", logs)
	}
	waitMetric(t, g, `platform_audit_events_total{permission="dlq.read",result="NOT_FOUND"} 4`) // b1, n1, unknown, REST b1
	waitMetric(t, g, `platform_audit_events_total{permission="dlq.write",result="PERMISSION_DENIED"} 1`)
}
