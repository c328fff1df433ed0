package scaleout_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/authz"
	"github.com/msgplatform/platform/internal/embedded"
	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/testenv"
)

// The quotas every gateway enforces during the test, per principal, in cost units (a read costs 1, a
// mutation 2). The refill is slow, so spending the burst through one gateway and calling the other is
// refused with seconds to spare; the load spreads over enough principals (sendersPerRate per message per
// second) that each sends once every few seconds, well inside the quota.
const (
	principalRPS   = 1
	principalBurst = 10
	sendersPerRate = 4
)

// Metric names read from the processes (documented in docs/operations.md).
const (
	metricAssigned     = "platform_pipeline_oldest_uncommitted_age_seconds" // one series per assigned partition
	metricLag          = "platform_pipeline_consumer_lag_records"
	metricStored       = "platform_pipeline_messages_total"
	metricLocalHits    = "platform_membership_cache_lookups_total"
	metricLocalActive  = "platform_membership_cache_local_active"
	metricInvalidation = "platform_membership_cache_invalidations_received_total"
	metricDLQRetries   = "platform_dlq_retries_total"
)

const loadTenant = "t-load"

// streamStartedHeader is the header metadata StreamMessages sends once it is subscribed (the API's
// StreamStartedHeader): messages sent after it arrives are on the stream.
const streamStartedHeader = "x-stream-started"

// TestMultiReplica runs two gateways and two pipelines (the production binaries) against one kfake, one
// FerretDB and one redis-server, and under steady SendMessage load through both gateways checks that:
//   - a StreamMessages client on gateway B receives, in order, the messages sent through gateway A;
//   - a member removed through gateway A is denied at once on gateway B, whose in-process cache held
//     the membership (the Redis entry is the invalidation guard by then);
//   - a principal's burst spent through A is refused through B (the quota lives in Redis), and a resend
//     with the same client_message_id through the other gateway returns the same message id;
//   - two DLQ retry schedulers republish each due dead letter exactly once;
//   - after one pipeline is SIGKILLed, the other takes its partitions: every accepted message is stored
//     exactly once and the survivor's consumer lag returns to zero.
//
// Default size: MULTI_REPLICA_MESSAGES=3000 at MULTI_REPLICA_RATE=100 per second (30 s of load), 20 dead
// letters (MULTI_REPLICA_DEAD_LETTERS). A larger run: MULTI_REPLICA_MESSAGES=100000 (rate 500/s unless set;
// 200 dead letters). The rate is a target: on a busy machine the load sends as fast as it is answered.
func TestMultiReplica(t *testing.T) {
	total := envInt(t, "MULTI_REPLICA_MESSAGES", 3000)
	defRate := 100
	if total > 10000 {
		defRate = 500
	}
	rate := envInt(t, "MULTI_REPLICA_RATE", defRate)
	deadLetters := envInt(t, "MULTI_REPLICA_DEAD_LETTERS", max(20, total/500))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	broker, mongoURI := startServers(t)
	const dbName = "platform"
	rs := testenv.StartRedisServer(t)
	gwBin, plBin := testenv.Binary(t, "services/gateway"), testenv.Binary(t, "services/pipeline")
	common := []string{
		"KAFKA_BROKERS=" + broker, "MONGO_URI=" + mongoURI, "MONGO_DATABASE=" + dbName, "REDIS_URL=" + rs.URL(),
		"KAFKA_SIGNING_KEYS=" + testenv.SigningKeysSpec, "AUTH_HMAC_SECRET=" + testenv.TestHMACSecret,
		"LOG_LEVEL=warn", "SHUTDOWN_DRAIN_DELAY=0s", "SHUTDOWN_TIMEOUT=5s", "HEALTH_CHECK_INTERVAL=1s",
		// A SIGKILLed pipeline's partitions move after this, not after the default 45 s.
		"KAFKA_SESSION_TIMEOUT=6s",
		fmt.Sprintf("RATE_LIMIT_PRINCIPAL_RPS=%d", principalRPS), fmt.Sprintf("RATE_LIMIT_PRINCIPAL_BURST=%d", principalBurst),
		"RATE_LIMIT_TENANT_RPS=0",
	}
	// Watchers in exactly one pipeline (config: WATCHERS_ENABLED), the DLQ scheduler in both (its claims
	// are fenced). Small polls, so batches are in hand when one is killed.
	pipeline := func(name, watchers string) *proc {
		return startProc(t, plBin, name, false, slices.Concat(common, []string{
			"WATCHERS_ENABLED=" + watchers, "DLQ_SCHEDULER_ENABLED=true", "PIPELINE_MAX_POLL_RECORDS=200"})...)
	}
	pl1, pl2 := pipeline("pipeline-1", "true"), pipeline("pipeline-2", "false")
	gwA := startProc(t, gwBin, "gateway-a", true, common...)
	gwB := startProc(t, gwBin, "gateway-b", true, common...)

	testenv.Eventually(t, "both gateways ready, their in-process membership caches active", time.Minute, func() bool {
		return gwA.ready() && gwB.ready() && gwA.scrape().sum(metricLocalActive) == 1 && gwB.scrape().sum(metricLocalActive) == 1
	})
	testenv.Eventually(t, "both pipelines in the group, every partition assigned", time.Minute, func() bool {
		a1, a2 := pl1.scrape().byLabel(metricAssigned, "partition"), pl2.scrape().byLabel(metricAssigned, "partition")
		return len(a1) > 0 && len(a2) > 0 && len(a1)+len(a2) == embedded.KafkaPartitions
	})

	client, err := store.Connect(ctx, mongoURI)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Disconnect(context.Background()) })
	db := client.Database(dbName)
	st := store.New(db)
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })

	newConv := func(title, creator string, members ...string) string {
		var ms []store.Member
		for _, m := range members {
			ms = append(ms, store.Member{UserID: m})
		}
		c, err := st.Conversations.Create(ctx, store.Conversation{TenantID: loadTenant, Title: title, CreatorID: creator}, ms)
		if err != nil {
			t.Fatal(err)
		}
		return c.ID
	}
	var loadConvs []string
	for i := range 12 {
		loadConvs = append(loadConvs, newConv(fmt.Sprintf("load %d", i), "load-owner"))
	}
	streamConv := newConv("stream", "stream-owner", "viewer")
	dlqConv := newConv("dead letters", "dlq-owner", "dlq-sender")

	dial := func(p *proc) *grpc.ClientConn {
		conn, err := grpc.NewClient(p.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		return conn
	}
	connA, connB := dial(gwA), dial(gwB)
	msgsA, msgsB := platformv1.NewMessageServiceClient(connA), platformv1.NewMessageServiceClient(connB)
	convsA, convsB := platformv1.NewConversationServiceClient(connA), platformv1.NewConversationServiceClient(connB)

	// The stream on B, then its sender on A: one message at a time, so their order is defined.
	st1 := startStream(ctx, t, msgsB, token(t, "viewer", loadTenant, "user"), streamConv)
	var streamSenders []string
	for i := range 20 * sendersPerRate {
		streamSenders = append(streamSenders, token(t, fmt.Sprintf("stream-svc-%d", i), loadTenant, "service"))
	}
	streamCtx, stopStream := context.WithCancel(ctx)
	var streamSent []string
	var streamErrs atomic.Int64
	streamDone := make(chan struct{})
	go func() {
		defer close(streamDone)
		for i := 0; streamCtx.Err() == nil; i++ {
			resp, err := msgsA.SendMessage(as(streamCtx, streamSenders[i%len(streamSenders)]), &platformv1.SendMessageRequest{
				ConversationId: streamConv, Body: fmt.Sprintf("stream %d", i), ClientMessageId: fmt.Sprintf("stream-%d", i)})
			if err != nil {
				if streamCtx.Err() == nil {
					streamErrs.Add(1)
					t.Logf("stream sender: %v", err)
				}
				continue
			}
			streamSent = append(streamSent, resp.GetMessageId())
			select {
			case <-streamCtx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()

	// The load, through both gateways.
	var loadToks []string
	for i := range sendersPerRate * rate {
		loadToks = append(loadToks, token(t, fmt.Sprintf("svc-%d", i), loadTenant, "service"))
	}
	l := &load{ids: map[string]string{}}
	loadStart := time.Now()
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		l.run(ctx, [2]platformv1.MessageServiceClient{msgsA, msgsB}, loadToks, loadConvs, total, rate)
	}()

	t.Run("quota across gateways", func(t *testing.T) { checkQuota(ctx, t, convsA, convsB) })
	t.Run("idempotency across gateways", func(t *testing.T) { checkIdempotency(ctx, t, msgsA, msgsB, loadConvs[0]) })
	t.Run("member removed through A is denied on B", func(t *testing.T) {
		checkRemoval(ctx, t, convsA, convsB, gwB, rdb)
	})

	// Dead letters due now, republished by whichever scheduler claims each first.
	var dlqIDs map[string]bool
	t.Run("two DLQ schedulers", func(t *testing.T) {
		dlqIDs = checkSchedulers(ctx, t, store.NewDeadLetters(db), dlqConv, deadLetters, pl1, pl2)
	})

	// Kill one pipeline mid-load; the other takes its partitions.
	testenv.Eventually(t, "40% of the load sent", 10*time.Minute, func() bool { return l.sent.Load() >= int64(total)*4/10 })
	sentAtKill := l.sent.Load()
	killedParts := len(pl2.scrape().byLabel(metricAssigned, "partition"))
	storedAtKill := pl1.scrape().sum(metricStored) + pl2.scrape().sum(metricStored)
	pl2.kill(t)
	killed := time.Now()
	testenv.Eventually(t, "the survivor owning every partition", 2*time.Minute, func() bool {
		return len(pl1.scrape().byLabel(metricAssigned, "partition")) == embedded.KafkaPartitions
	})
	rebalance := time.Since(killed)

	<-loadDone
	loadTime := time.Since(loadStart)
	stopStream()
	<-streamDone
	loadEnd := time.Now()

	// Every accepted message stored, and the survivor's lag back to zero.
	msgColl := db.Collection(store.MessagesCollection)
	var storedN int64
	deadline := time.Now().Add(2*time.Minute + time.Duration(total)*time.Millisecond)
	for {
		storedN, err = msgColl.CountDocuments(ctx, bson.D{{Key: "tenant_id", Value: loadTenant}})
		if err != nil {
			t.Fatal(err)
		}
		want := l.acceptedN() + int64(len(streamSent)) + int64(deadLetters) + 1 // + the idempotency check's message
		if storedN >= want || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	var lag map[string]float64
	testenv.Eventually(t, "the survivor's lag at zero on every partition", time.Minute, func() bool {
		lag = pl1.scrape().byLabel(metricLag, "partition")
		if len(lag) != embedded.KafkaPartitions {
			return false
		}
		for _, v := range lag {
			if v != 0 {
				return false
			}
		}
		return true
	})
	lagZero := time.Since(loadEnd)

	// What MongoDB holds of the load, by client_message_id.
	stored := storedLoad(ctx, t, msgColl)
	var lost, duplicated, unknown int
	for id, cid := range l.ids {
		if !slices.Contains(stored[cid], id) {
			lost++
			if lost <= 5 {
				t.Errorf("accepted message %s (%s) not stored", id, cid)
			}
		}
	}
	storedLoadDocs := 0
	for cid, ids := range stored {
		storedLoadDocs += len(ids)
		if len(ids) > 1 {
			duplicated += len(ids) - 1
			t.Errorf("client_message_id %s stored %d times: %v", cid, len(ids), ids)
		}
		if _, ok := l.ids[ids[0]]; !ok {
			unknown++ // stored, but its send failed as far as the client knows
		}
	}

	// What messages.inbound holds: one record per accepted send, one republish per dead letter.
	records, republished := inboundRecords(ctx, t, broker)
	var multi int
	for id := range l.ids {
		if records[id] != 1 {
			multi++
			if multi <= 5 {
				t.Errorf("message %s: %d records on %s, want 1", id, records[id], kafka.TopicInbound)
			}
		}
	}
	var republishedOnce int
	for id := range dlqIDs {
		if republished[id] == 1 {
			republishedOnce++
		} else {
			t.Errorf("dead letter of message %s: republished %d times, want exactly once", id, republished[id])
		}
		if _, err := st.Messages.Get(ctx, loadTenant, dlqConv, id); err != nil {
			t.Errorf("republished dead letter %s not stored: %v", id, err)
		}
	}

	// The stream on B: every message sent through A, in send order.
	got := st1.waitFor(t, streamSent, 30*time.Second)
	distinct, redelivered := firstOccurrences(got)
	if !slices.Equal(distinct, streamSent) {
		t.Errorf("stream on B: %d distinct messages, want the %d sent through A in their order (first mismatch at %d)",
			len(distinct), len(streamSent), mismatchAt(distinct, streamSent))
	}

	t.Logf("load: sent %d, accepted %d, failed %d in %s (%.0f/s, target %d/s) through 2 gateways; stored %d (%d of them with no accepted answer), lost %d, duplicated %d",
		l.sent.Load(), l.acceptedN(), l.failed.Load(), loadTime.Round(time.Millisecond), float64(l.sent.Load())/loadTime.Seconds(), rate,
		storedLoadDocs, unknown, lost, duplicated)
	t.Logf("idempotency: %d resends through the other gateway, %d with the same id and duplicate=true; accepted ids with a record count other than 1 on %s: %d",
		l.resent.Load(), l.resent.Load()-l.resendMismatch.Load(), kafka.TopicInbound, multi)
	t.Logf("pipeline-2 SIGKILLed holding %d of %d partitions, %d of %d load messages sent and %.0f messages stored by then; rebalance (kill → survivor owns all): %s; survivor lag zero %s after the load ended (lag %v)",
		killedParts, embedded.KafkaPartitions, sentAtKill, total, storedAtKill, rebalance.Round(time.Millisecond), lagZero.Round(time.Millisecond), lag)
	t.Logf("stream on B: %d sent through A (%d send errors), %d received, %d distinct in order, %d redelivered copies",
		len(streamSent), streamErrs.Load(), len(got), len(distinct), redelivered)
	t.Logf("dead letters: %d due, %d republished exactly once on %s", len(dlqIDs), republishedOnce, kafka.TopicInbound)
	if l.failed.Load() > 0 || l.resendMismatch.Load() > 0 || streamErrs.Load() > 0 {
		t.Errorf("failed sends %d, resends answered with another id %d, stream send errors %d; want 0 each (first errors: %v)",
			l.failed.Load(), l.resendMismatch.Load(), streamErrs.Load(), l.errs)
	}
}

// load sends total messages at rate through both gateways, alternating, each with its own
// client_message_id; every 25th accepted message is sent again through the other gateway.
type load struct {
	sent, failed, resent, resendMismatch atomic.Int64

	mu   sync.Mutex
	ids  map[string]string // accepted message id → client_message_id
	errs []string          // the first few
}

func (l *load) acceptedN() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return int64(len(l.ids))
}

func (l *load) fail(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errs) < 5 {
		l.errs = append(l.errs, fmt.Sprintf(format, args...))
	}
}

func (l *load) run(ctx context.Context, gws [2]platformv1.MessageServiceClient, toks, convs []string, total, rate int) {
	jobs := make(chan int, 1024)
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for i := range jobs {
				l.send(ctx, gws, toks, convs, i)
			}
		})
	}
	start := time.Now()
	for i := range total {
		if wait := time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))); wait > time.Millisecond {
			time.Sleep(wait)
		}
		if ctx.Err() != nil {
			break
		}
		jobs <- i
	}
	close(jobs)
	wg.Wait()
}

func (l *load) send(ctx context.Context, gws [2]platformv1.MessageServiceClient, toks, convs []string, i int) {
	tok, cid := toks[i%len(toks)], fmt.Sprintf("load-%d", i)
	req := &platformv1.SendMessageRequest{ConversationId: convs[i%len(convs)], Body: fmt.Sprintf("message %d", i), ClientMessageId: cid}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	l.sent.Add(1)
	resp, err := gws[i%2].SendMessage(as(cctx, tok), req)
	if err != nil {
		l.failed.Add(1)
		l.fail("send %s: %v", cid, err)
		return
	}
	l.mu.Lock()
	l.ids[resp.GetMessageId()] = cid
	l.mu.Unlock()
	if i%25 != 0 {
		return
	}
	l.resent.Add(1)
	again, err := gws[(i+1)%2].SendMessage(as(cctx, tok), req)
	if err != nil || again.GetMessageId() != resp.GetMessageId() || !again.GetDuplicate() {
		l.resendMismatch.Add(1)
		l.fail("resend %s through the other gateway: id %s (first %s), duplicate %v, error %v", cid, again.GetMessageId(), resp.GetMessageId(), again.GetDuplicate(), err)
	}
}

// checkQuota spends a principal's burst through A; a mutation through B is then over quota.
//
// A check Redis does not answer within the limiter's timeout is decided by that gateway alone (fail open,
// by design); on a machine busy enough for that, the round is tried again with a fresh principal.
func checkQuota(ctx context.Context, t *testing.T, convsA, convsB platformv1.ConversationServiceClient) {
	var err error
	for round := range 5 {
		tok := token(t, fmt.Sprintf("quota-user-%d", round), "t-quota", "user")
		for i := range principalBurst {
			if _, err := convsA.ListConversations(as(ctx, tok), &platformv1.ListConversationsRequest{}); err != nil {
				t.Fatalf("read %d of the burst through A: %v", i+1, err)
			}
		}
		_, err = convsB.CreateConversation(as(ctx, tok), &platformv1.CreateConversationRequest{Title: "over quota"})
		if status.Code(err) == codes.ResourceExhausted {
			t.Logf("burst of %d spent through A; B refused the next call: %v (round %d)", principalBurst, status.Convert(err).Message(), round+1)
			return
		}
		t.Logf("round %d: B allowed the call (%v); a check may have fallen back to a local limiter", round+1, err)
	}
	t.Fatalf("burst of %d units spent through A, then a mutation (2 units) through B: %v, want RESOURCE_EXHAUSTED", principalBurst, err)
}

// checkIdempotency sends through A, then again through B with the same client_message_id.
func checkIdempotency(ctx context.Context, t *testing.T, msgsA, msgsB platformv1.MessageServiceClient, conv string) {
	tok := token(t, "idempotent-svc", loadTenant, "service")
	req := &platformv1.SendMessageRequest{ConversationId: conv, Body: "once", ClientMessageId: "idempotency-check"}
	first, err := msgsA.SendMessage(as(ctx, tok), req)
	if err != nil {
		t.Fatal(err)
	}
	again, err := msgsB.SendMessage(as(ctx, tok), req)
	if err != nil {
		t.Fatal(err)
	}
	if again.GetMessageId() != first.GetMessageId() || !again.GetDuplicate() {
		t.Fatalf("resend through B: id %s duplicate %v, want %s and true", again.GetMessageId(), again.GetDuplicate(), first.GetMessageId())
	}
}

// checkRemoval: a member whose membership gateway B holds in its in-process cache is removed through A
// and is denied on B by the very next call.
func checkRemoval(ctx context.Context, t *testing.T, convsA, convsB platformv1.ConversationServiceClient, gwB *proc, rdb *redis.Client) {
	const tenant, rounds = "t-members", 3
	var worst time.Duration
	for r := range rounds {
		owner, member := fmt.Sprintf("owner-%d", r), fmt.Sprintf("member-%d", r)
		ownerTok, memberTok := token(t, owner, tenant, "user"), token(t, member, tenant, "user")
		c, err := convsA.CreateConversation(as(ctx, ownerTok), &platformv1.CreateConversationRequest{Title: "members", MemberIds: []string{member}})
		if err != nil {
			t.Fatal(err)
		}
		conv := c.GetConversation().GetId()
		get := &platformv1.GetConversationRequest{ConversationId: conv}
		hits := gwB.scrape().sum(metricLocalHits, `result="local_hit"`)
		for range 2 {
			if _, err := convsB.GetConversation(as(ctx, memberTok), get); err != nil {
				t.Fatalf("member reading through B: %v", err)
			}
		}
		if got := gwB.scrape().sum(metricLocalHits, `result="local_hit"`) - hits; got < 1 {
			t.Fatalf("B's in-process cache answered %v of the member's reads, want at least 1", got)
		}
		key := authz.Key(tenant, conv, member)
		// A role, or the guard of the invalidation CreateConversation made (it stands GuardTTL).
		if v, err := rdb.Get(ctx, key).Result(); err != nil || (!strings.HasPrefix(v, "r:") && v != "-") {
			t.Fatalf("Redis entry of the membership before the removal: %q, %v; want a role or the guard", v, err)
		}
		received := gwB.scrape().sum(metricInvalidation)

		if _, err := convsA.RemoveMember(as(ctx, ownerTok), &platformv1.RemoveMemberRequest{ConversationId: conv, UserId: member}); err != nil {
			t.Fatal(err)
		}
		removed := time.Now()
		_, err = convsB.GetConversation(as(ctx, memberTok), get)
		worst = max(worst, time.Since(removed))
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("round %d: removed through A, then read through B: %v, want PERMISSION_DENIED", r, err)
		}
		if v, err := rdb.Get(ctx, key).Result(); err != nil || v != "-" {
			t.Errorf("round %d: Redis entry after the removal: %q, %v; want the invalidation guard \"-\"", r, v, err)
		}
		if got := gwB.scrape().sum(metricInvalidation) - received; got < 1 {
			t.Errorf("round %d: B received %v invalidations, want at least 1", r, got)
		}
	}
	t.Logf("%d removals through A, each denied on B by the next call (slowest denial %s after the removal returned)", rounds, worst.Round(time.Microsecond))
}

// checkSchedulers stores n dead letters due now (signed records of conversation conv, as the pipeline
// would have dead-lettered them) and waits until both pipelines' schedulers have republished them all;
// each must be republished once. It returns the dead letters' message ids.
func checkSchedulers(ctx context.Context, t *testing.T, dls *store.DeadLetters, conv string, n int, pipelines ...*proc) map[string]bool {
	keys := testenv.SigningKeys(t)
	due := time.Now().Add(-time.Second)
	ids := map[string]bool{}
	var batch []store.DeadLetter
	for i := range n {
		in := &platformv1.InboundMessage{Id: ulid.Make().String(), TenantId: loadTenant, ConversationId: conv, SenderId: "dlq-sender",
			Body: fmt.Sprintf("dead letter %d", i), ClientMessageId: fmt.Sprintf("dead-letter-%d", i), SendTime: timestamppb.New(due),
			SenderRoles: []string{"user"}}
		rec, err := envelope.InboundRecord(in, keys)
		if err != nil {
			t.Fatal(err)
		}
		var headers []store.Header
		for _, h := range rec.Headers {
			headers = append(headers, store.Header{Key: h.Key, Value: h.Value})
		}
		offset := int64(1_000_000 + i)
		batch = append(batch, store.DeadLetter{ID: store.DeadLetterID(kafka.TopicInbound, 0, offset, 1), OriginalTopic: kafka.TopicInbound,
			OriginalOffset: offset, Key: rec.Key, Payload: rec.Value, Headers: headers, TenantID: loadTenant, Stage: "persist",
			Error: "store unavailable (dead letter made by the test)", ErrorClass: "transient", Attempts: 1, MessageID: in.GetId(),
			Status: store.DeadLetterPendingRetry, NextRetryTime: &due, FirstFailureTime: due, LastFailureTime: due})
		ids[in.GetId()] = true
	}
	before := make([]float64, len(pipelines))
	for i, p := range pipelines {
		before[i] = p.scrape().sum(metricDLQRetries, `result="republished"`)
	}
	res, err := dls.InsertMany(ctx, batch)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Duplicate || r.Err != nil {
			t.Fatalf("insert dead letter %d: duplicate %v, %v", i, r.Duplicate, r.Err)
		}
	}
	start := time.Now()
	testenv.Eventually(t, "every dead letter retried", time.Minute, func() bool {
		s, err := dls.Stats(ctx, loadTenant)
		return err == nil && s.ByStatus[store.DeadLetterRetried] == int64(n)
	})
	took := time.Since(start)
	for _, d := range batch {
		got, err := dls.Get(ctx, d.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Status != store.DeadLetterRetried || got.Retries != 1 {
			t.Errorf("dead letter %s: status %s, %d retries; want retried once", d.ID, got.Status, got.Retries)
		}
	}
	var split []string
	var sum float64
	for i, p := range pipelines {
		v := p.scrape().sum(metricDLQRetries, `result="republished"`) - before[i]
		sum += v
		split = append(split, fmt.Sprintf("%s %.0f", p.name, v))
	}
	t.Logf("%d due dead letters retried in %s; republishes counted by the schedulers: %s (sum %.0f)", n, took.Round(time.Millisecond), strings.Join(split, ", "), sum)
	if sum != float64(n) {
		t.Errorf("the schedulers counted %.0f republishes of %d dead letters, want exactly %d", sum, n, n)
	}
	return ids
}

// storedLoad returns the stored load messages' ids by client_message_id.
func storedLoad(ctx context.Context, t *testing.T, coll *mongo.Collection) map[string][]string {
	cur, err := coll.Find(ctx, bson.D{{Key: "tenant_id", Value: loadTenant}},
		options.Find().SetProjection(bson.D{{Key: "_id", Value: 1}, {Key: "client_message_id", Value: 1}}))
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close(ctx)
	out := map[string][]string{}
	for cur.Next(ctx) {
		var d struct {
			ID  string `bson:"_id"`
			CID string `bson:"client_message_id"`
		}
		if err := cur.Decode(&d); err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(d.CID, "load-") {
			out[d.CID] = append(out[d.CID], d.ID)
		}
	}
	if err := cur.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// inboundRecords reads messages.inbound from start to end: records by message id, and among them the
// republished dead letters (those carrying dlq.attempts).
func inboundRecords(ctx context.Context, t *testing.T, broker string) (records, republished map[string]int) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(broker), kgo.ConsumeTopics(kafka.TopicInbound),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, kafka.TopicInbound)
	if err != nil {
		t.Fatal(err)
	}
	want := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 {
			want[o.Partition] = o.Offset
		}
	})
	records, republished = map[string]int{}, map[string]int{}
	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for len(want) > 0 {
		fs := cl.PollFetches(rctx)
		if err := rctx.Err(); err != nil {
			t.Fatalf("reading %s: %v (partitions left: %v)", kafka.TopicInbound, err, want)
		}
		fs.EachError(func(_ string, p int32, err error) { t.Logf("fetch partition %d: %v", p, err) })
		fs.EachRecord(func(r *kgo.Record) {
			if r.Offset+1 >= want[r.Partition] {
				delete(want, r.Partition)
			}
			m, err := envelope.DecodeInbound(r)
			if err != nil {
				t.Errorf("undecodable record at %d/%d: %v", r.Partition, r.Offset, err)
				return
			}
			records[m.GetId()]++
			if _, ok := envelope.Header(r, envelope.HeaderDLQAttempts); ok {
				republished[m.GetId()]++
			}
		})
	}
	return records, republished
}

// streamClient collects the message ids a StreamMessages call receives.
type streamClient struct {
	mu   sync.Mutex
	ids  []string
	err  error
	done chan struct{}
}

func startStream(ctx context.Context, t *testing.T, msgs platformv1.MessageServiceClient, tok, conv string) *streamClient {
	t.Helper()
	s, err := msgs.StreamMessages(as(ctx, tok), &platformv1.StreamMessagesRequest{ConversationId: conv})
	if err != nil {
		t.Fatal(err)
	}
	md, err := s.Header()
	if err != nil || len(md.Get(streamStartedHeader)) == 0 {
		t.Fatalf("stream not started: %v (headers %v)", err, md)
	}
	c := &streamClient{done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for {
			resp, err := s.Recv()
			c.mu.Lock()
			if err != nil {
				c.err = err
				c.mu.Unlock()
				return
			}
			if resp.GetType() == platformv1.EventType_EVENT_TYPE_MESSAGE_PERSISTED {
				c.ids = append(c.ids, resp.GetMessage().GetId())
			}
			c.mu.Unlock()
		}
	}()
	return c
}

// waitFor waits until the stream has received every id of want (or limit passes, or the stream ends)
// and returns what it received.
func (c *streamClient) waitFor(t *testing.T, want []string, limit time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		c.mu.Lock()
		got, err := slices.Clone(c.ids), c.err
		c.mu.Unlock()
		seen := map[string]bool{}
		for _, id := range got {
			seen[id] = true
		}
		missing := 0
		for _, id := range want {
			if !seen[id] {
				missing++
			}
		}
		switch {
		case missing == 0:
			return got
		case err != nil && !errors.Is(err, context.Canceled):
			t.Errorf("stream on B ended with %d of %d messages missing: %v", missing, len(want), err)
			return got
		case time.Now().After(deadline):
			t.Errorf("stream on B: %d of %d messages still missing after %v", missing, len(want), limit)
			return got
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// firstOccurrences drops repeated ids, keeping the first of each; redelivered counts the repeats.
func firstOccurrences(ids []string) (distinct []string, redelivered int) {
	seen := map[string]bool{}
	for _, id := range ids {
		if seen[id] {
			redelivered++
			continue
		}
		seen[id] = true
		distinct = append(distinct, id)
	}
	return distinct, redelivered
}

func mismatchAt(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
