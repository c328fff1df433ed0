package authz_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc/codes"

	"github.com/msgplatform/platform/internal/authz"
	"github.com/msgplatform/platform/internal/embedded"
	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/testenv"
)

// runCache runs the cache's invalidation subscription for the test and waits until it is up.
func runCache(t *testing.T, c *authz.MembershipCache) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	testenv.Eventually(t, "the invalidation subscription", waitLimit, c.Subscribed)
}

// waitLimit bounds the waits for asynchronous events (pub/sub delivery, a dropped connection noticed):
// the assertion is that they happen, not how fast.
const waitLimit = 10 * time.Second

// An hour-long L1 TTL throughout: whatever drops an entry below is an invalidation or a reset, not expiry.
var longL1 = authz.CacheConfig{L1TTL: time.Hour, SubscriptionCheck: 100 * time.Millisecond}

// Answers come from the in-process cache once the subscription is up, and an invalidation made through
// this process is seen by the very next call.
func TestL1ServesAndLocalInvalidationIsSynchronous(t *testing.T) {
	h := newHarnessWith(t, longL1, "")
	runCache(t, h.cache)
	for range 3 {
		if got := getConversation(t, h, mia); got != codes.OK {
			t.Fatalf("member: %v", got)
		}
	}
	if hits := lookups(t, h.reg, "local_hit"); hits != 2 {
		t.Fatalf("in-process hits = %v, want 2 (the first call fills it)", hits)
	}

	ctx := context.Background()
	if err := h.st.Members.Remove(ctx, tenant, conv, "mia"); err != nil {
		t.Fatal(err)
	}
	if err := h.cache.Invalidate(ctx, tenant, conv, "mia"); err != nil {
		t.Fatal(err)
	}
	if got := getConversation(t, h, mia); got != codes.PermissionDenied {
		t.Errorf("removed member on the next call: %v, want PermissionDenied", got)
	}
}

// An invalidation published by another process (another cache on the same Redis) drops this process's
// in-process entry.
func TestL1RemoteInvalidation(t *testing.T) {
	h := newHarnessWith(t, longL1, "")
	runCache(t, h.cache)
	opts, _ := redis.ParseURL(h.redisSrv.URL())
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { _ = rdb.Close() })
	other, err := authz.NewMembershipCache(rdb, authz.StoreDirectory{Store: h.st}, authz.CacheConfig{}, prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}

	for range 2 {
		if got := getConversation(t, h, nina); got != codes.PermissionDenied {
			t.Fatalf("non-member: %v", got)
		}
	}
	if hits := lookups(t, h.reg, "local_hit"); hits != 1 {
		t.Fatalf("in-process hits = %v, want the negative answer cached", hits)
	}
	received := testenv.Metric(t, h.reg, "platform_membership_cache_invalidations_received_total")
	ctx := context.Background()
	if _, err := h.st.Members.Put(ctx, store.Member{TenantID: tenant, ConversationID: conv, UserID: "nina", Role: store.RoleViewer}); err != nil {
		t.Fatal(err)
	}
	if err := other.Invalidate(ctx, tenant, conv, "nina"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "the invalidation to arrive", waitLimit, func() bool {
		return testenv.Metric(t, h.reg, "platform_membership_cache_invalidations_received_total") > received
	})
	if got := getConversation(t, h, nina); got != codes.OK {
		t.Errorf("added member after the other process's invalidation: %v, want OK", got)
	}
}

// When the subscription is lost the in-process cache is disabled (lookups go to Redis or MongoDB), and
// when it is back the cache starts empty: an invalidation missed meanwhile cannot leave a stale answer.
func TestL1ResetOnSubscriptionLoss(t *testing.T) {
	h := newHarnessWith(t, longL1, "")
	runCache(t, h.cache)
	adam := *callers[4].p
	for range 2 {
		if got := getConversation(t, h, adam); got != codes.OK {
			t.Fatalf("admin: %v", got)
		}
	}
	h.redisSrv.Stop()
	testenv.Eventually(t, "the lost subscription to be noticed", waitLimit, func() bool { return !h.cache.Subscribed() })
	if v := testenv.Metric(t, h.reg, "platform_membership_cache_local_active"); v != 0 {
		t.Errorf("local_active = %v while the subscription is down", v)
	}
	// A change whose invalidation is lost (nobody could publish it).
	if err := h.st.Members.Remove(context.Background(), tenant, conv, "adam"); err != nil {
		t.Fatal(err)
	}
	before := lookups(t, h.reg, "fallback")
	if got := getConversation(t, h, adam); got != codes.PermissionDenied {
		t.Errorf("removed admin while Redis is down: %v, want PermissionDenied from MongoDB", got)
	}
	if got := lookups(t, h.reg, "fallback") - before; got != 1 {
		t.Errorf("fallbacks = %v, want 1: the in-process cache must not answer while unsubscribed", got)
	}

	h.redisSrv.Start()
	testenv.Eventually(t, "the subscription to come back", waitLimit, h.cache.Subscribed)
	if got := getConversation(t, h, adam); got != codes.PermissionDenied {
		t.Errorf("removed admin after the subscription came back: %v, want PermissionDenied", got)
	}
}

// A subscription that goes silent (connection open, nothing answers) is noticed by the unanswered PING.
func TestL1SilentSubscriptionLoss(t *testing.T) {
	proxy := startProxy(t, testenv.StartRedisServer(t).Addr())
	h := newHarnessWith(t, longL1, proxy.addr)
	runCache(t, h.cache)
	if got := getConversation(t, h, mia); got != codes.OK {
		t.Fatalf("member: %v", got)
	}
	proxy.freeze(true)
	testenv.Eventually(t, "the silent subscription to be noticed", waitLimit, func() bool { return !h.cache.Subscribed() })
	proxy.freeze(false)
	testenv.Eventually(t, "the subscription to come back", waitLimit, h.cache.Subscribed)
	if got := getConversation(t, h, mia); got != codes.OK {
		t.Errorf("member after the subscription came back: %v", got)
	}
}

// proxy forwards TCP connections to Redis; while frozen it forwards nothing and accepts nothing new,
// like a network that silently drops packets.
type proxy struct {
	addr string
	mu   sync.Mutex
	cond *sync.Cond
	cold bool
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{addr: lis.Addr().String()}
	p.cond = sync.NewCond(&p.mu)
	var conns sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	t.Cleanup(func() {
		_ = lis.Close()
		p.freeze(false)
		mu.Lock()
		for _, c := range open {
			_ = c.Close()
		}
		mu.Unlock()
		conns.Wait()
	})
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			p.wait()
			up, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			mu.Lock()
			open = append(open, c, up)
			mu.Unlock()
			conns.Add(2)
			go func() { defer conns.Done(); p.pipe(up, c) }()
			go func() { defer conns.Done(); p.pipe(c, up) }()
		}
	}()
	return p
}

func (p *proxy) freeze(on bool) {
	p.mu.Lock()
	p.cold = on
	p.mu.Unlock()
	p.cond.Broadcast()
}

func (p *proxy) wait() {
	p.mu.Lock()
	for p.cold {
		p.cond.Wait()
	}
	p.mu.Unlock()
}

func (p *proxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		p.wait() // while frozen, data read is held back, never delivered until thawed
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}

// Every label value of the cache's and the authorizer's metrics is exported from the start.
func TestCacheMetricsPreinitialised(t *testing.T) {
	reg := prometheus.NewRegistry()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never used
	t.Cleanup(func() { _ = rdb.Close() })
	cache, err := authz.NewMembershipCache(rdb, nil, authz.CacheConfig{}, reg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := authz.NewAuthorizer(cache, nil, reg); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			for _, l := range m.GetLabel() {
				name += "{" + l.GetName() + "=" + l.GetValue() + "}"
			}
			got[name] = true
		}
	}
	for _, want := range []string{
		"platform_membership_cache_lookups_total{result=local_hit}",
		"platform_membership_cache_lookups_total{result=hit}",
		"platform_membership_cache_lookups_total{result=miss}",
		"platform_membership_cache_lookups_total{result=fallback}",
		"platform_membership_cache_lookups_total{result=error}",
		"platform_membership_cache_redis_errors_total{op=get}",
		"platform_membership_cache_redis_errors_total{op=set}",
		"platform_membership_cache_redis_errors_total{op=invalidate}",
		"platform_membership_cache_redis_errors_total{op=publish}",
		"platform_membership_cache_redis_errors_total{op=subscribe}",
		"platform_membership_cache_local_resets_total{reason=subscribed}",
		"platform_membership_cache_local_resets_total{reason=lost}",
		"platform_membership_cache_local_active",
		"platform_membership_cache_invalidations_received_total",
		"platform_membership_cache_lookup_duration_seconds",
		"platform_authz_decisions_total{permission=conversation.read}{result=allow}",
		"platform_authz_decisions_total{permission=message.send}{result=deny}",
		"platform_authz_decisions_total{permission=dlq.write}{result=unavailable}",
		"platform_authz_decisions_total{permission=message.update}{result=not_found}",
		"platform_authz_decisions_total{permission=message.delete}{result=invalid}",
	} {
		if !got[want] {
			t.Errorf("%s missing from a fresh registry", want)
		}
	}
}

// The devstack's embedded Redis (miniredis) serves the subscription too: PINGs are answered in subscribed
// mode and invalidations arrive.
func TestL1WithEmbeddedRedis(t *testing.T) {
	mini, err := embedded.StartRedis("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(mini.Close)
	h := newHarnessWith(t, authz.CacheConfig{L1TTL: time.Hour, SubscriptionCheck: 20 * time.Millisecond}, mini.Addr())
	runCache(t, h.cache)
	time.Sleep(200 * time.Millisecond) // several PING rounds
	if !h.cache.Subscribed() {
		t.Fatal("subscription dropped although the server answers PING")
	}
	if got := getConversation(t, h, mia); got != codes.OK {
		t.Fatalf("member: %v", got)
	}
	received := testenv.Metric(t, h.reg, "platform_membership_cache_invalidations_received_total")
	if err := h.cache.Invalidate(context.Background(), tenant, conv, "mia"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "the invalidation to arrive", waitLimit, func() bool {
		return testenv.Metric(t, h.reg, "platform_membership_cache_invalidations_received_total") > received
	})
}

// Prime stores what one read of the store found as lookups would: later lookups of those members read
// neither MongoDB nor (from the in-process cache) Redis; an invalidation guard in Redis wins over it; and
// an invalidation between Note and Prime keeps the primed answer out of the in-process cache.
func TestPrime(t *testing.T) {
	h := newHarnessWith(t, longL1, "")
	runCache(t, h.cache)
	ctx := context.Background()
	lookup := func(user string) authz.Membership {
		t.Helper()
		m, err := h.cache.Lookup(ctx, tenant, conv, user)
		if err != nil {
			t.Fatalf("Lookup(%s): %v", user, err)
		}
		return m
	}
	member := func(role store.Role) authz.Membership { return authz.Membership{ConversationExists: true, Role: role} }

	// "zoe" is no member in MongoDB: whatever answers her as an admin comes from the primed cache.
	n := h.cache.Note()
	h.cache.Prime(ctx, n, tenant, []authz.Member{{ConversationID: conv, UserID: "zoe", Role: store.RoleAdmin}})
	misses, l1Hits := lookups(t, h.reg, "miss"), lookups(t, h.reg, "local_hit")
	if got := lookup("zoe"); got != member(store.RoleAdmin) {
		t.Fatalf("primed member = %+v", got)
	}
	if lookups(t, h.reg, "miss") != misses || lookups(t, h.reg, "local_hit") != l1Hits+1 {
		t.Errorf("a primed member was not answered from the in-process cache")
	}

	// An invalidation guard stands in Redis: priming must not overwrite it.
	if err := h.cache.Invalidate(ctx, tenant, conv, "nina"); err != nil {
		t.Fatal(err)
	}
	h.cache.Prime(ctx, h.cache.Note(), tenant, []authz.Member{{ConversationID: conv, UserID: "nina", Role: store.RoleOwner}})
	if got := lookup("nina"); got != member("") {
		t.Errorf("primed over an invalidation guard: nina = %+v, want MongoDB's answer (not a member)", got)
	}

	// Noted before an invalidation of mia, primed after it (and after the guard expired): Redis may hold
	// the answer (SET NX, as a lookup would), the in-process cache not.
	n = h.cache.Note()
	if err := h.cache.Invalidate(ctx, tenant, conv, "mia"); err != nil {
		t.Fatal(err)
	}
	opts, _ := redis.ParseURL(h.redisSrv.URL())
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	if err := rdb.Del(ctx, authz.Key(tenant, conv, "mia")).Err(); err != nil { // the guard expired
		t.Fatal(err)
	}
	h.cache.Prime(ctx, n, tenant, []authz.Member{{ConversationID: conv, UserID: "mia", Role: store.RoleOwner}})
	l1Hits = lookups(t, h.reg, "local_hit")
	lookup("mia")
	if lookups(t, h.reg, "local_hit") != l1Hits {
		t.Error("an answer noted before an invalidation reached the in-process cache")
	}
}
