package authz_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/authz"
	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/testenv"
)

func getConversation(t *testing.T, h *harness, p auth.Principal) codes.Code {
	t.Helper()
	d, err := protoregistry.GlobalFiles.FindDescriptorByName("platform.v1.ConversationService.GetConversation")
	if err != nil {
		t.Fatal(err)
	}
	return callGRPC(t, h.conn, d.(protoreflect.MethodDescriptor), token(t, &p))
}

func lookups(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	return testenv.Metric(t, reg, "platform_membership_cache_lookups_total", "result", result)
}

var (
	mia  = auth.Principal{Subject: "mia", TenantID: tenant, Roles: []string{"user"}}
	nina = auth.Principal{Subject: "nina", TenantID: tenant, Roles: []string{"user"}}
)

// A membership change made through the write path (store change + Invalidate) is seen by the very next
// call, although both answers were cached.
func TestCacheInvalidation(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	for range 2 { // the second round is served from Redis
		if got := getConversation(t, h, mia); got != codes.OK {
			t.Fatalf("member: %v", got)
		}
		if got := getConversation(t, h, nina); got != codes.PermissionDenied {
			t.Fatalf("non-member: %v", got)
		}
	}
	if hits := lookups(t, h.reg, "hit"); hits < 2 {
		t.Fatalf("cache hits = %v, want the second round served from Redis", hits)
	}

	if err := h.st.Members.Remove(ctx, tenant, conv, "mia"); err != nil {
		t.Fatal(err)
	}
	if err := h.cache.Invalidate(ctx, tenant, conv, "mia"); err != nil {
		t.Fatal(err)
	}
	if got := getConversation(t, h, mia); got != codes.PermissionDenied {
		t.Errorf("removed member on the next call: %v, want PermissionDenied", got)
	}

	if _, err := h.st.Members.Put(ctx, store.Member{TenantID: tenant, ConversationID: conv, UserID: "nina", Role: store.RoleViewer}); err != nil {
		t.Fatal(err)
	}
	if err := h.cache.Invalidate(ctx, tenant, conv, "nina"); err != nil {
		t.Fatal(err)
	}
	if got := getConversation(t, h, nina); got != codes.OK {
		t.Errorf("added member on the next call: %v, want OK", got)
	}
}

// Redis down: lookups fall back to MongoDB (and are counted). Redis and MongoDB down: fail closed with
// UNAVAILABLE, for members too. Both back: calls succeed again.
func TestCacheOutages(t *testing.T) {
	h := newHarness(t)
	if got := getConversation(t, h, mia); got != codes.OK {
		t.Fatalf("before the outage: %v", got)
	}

	h.redisSrv.Stop()
	before := lookups(t, h.reg, "fallback")
	if got := getConversation(t, h, mia); got != codes.OK {
		t.Errorf("member with Redis down: %v, want OK from MongoDB", got)
	}
	if got := getConversation(t, h, nina); got != codes.PermissionDenied {
		t.Errorf("non-member with Redis down: %v, want PermissionDenied", got)
	}
	if after := lookups(t, h.reg, "fallback"); after-before != 2 {
		t.Errorf("fallbacks counted = %v, want 2", after-before)
	}

	h.mongo.Stop()
	for _, p := range []auth.Principal{mia, nina} {
		if got := getConversation(t, h, p); got != codes.Unavailable {
			t.Errorf("%s with Redis and MongoDB down: %v, want Unavailable (fail closed)", p.Subject, got)
		}
	}

	h.mongo.Start()
	h.redisSrv.Start()
	testenv.Eventually(t, "the member allowed again after Redis and MongoDB came back", 20*time.Second, func() bool {
		return getConversation(t, h, mia) == codes.OK
	})
}

// A lookup racing an invalidation must not write the old answer back: while the guard stands the
// lookup reads MongoDB and leaves the cache alone.
func TestInvalidationGuard(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	if err := h.cache.Invalidate(ctx, tenant, conv, "mia"); err != nil {
		t.Fatal(err)
	}
	m, err := h.cache.Lookup(ctx, tenant, conv, "mia")
	if err != nil || m.Role != store.RoleMember {
		t.Fatalf("Lookup during the guard = %+v, %v", m, err)
	}
	opts, _ := redis.ParseURL(h.redisSrv.URL())
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	if v, err := rdb.Get(ctx, authz.Key(tenant, conv, "mia")).Result(); err != nil || v != "-" {
		t.Fatalf("cache value during the guard = %q, %v; want the guard kept", v, err)
	}
	if ttl := rdb.TTL(ctx, authz.Key(tenant, conv, "mia")).Val(); ttl <= 0 || ttl > 5*time.Second {
		t.Errorf("guard TTL = %v", ttl)
	}
}

func TestKeyLayout(t *testing.T) {
	if got := authz.Key("t:1", "c 1", "u/1"); got != "authz:v1:member:t%3A1:c+1:u%2F1" {
		t.Errorf("Key = %q: parts must be escaped so no id can forge another's key", got)
	}
	if strings.Count(authz.Key("a", "b", "c"), ":") != 5 {
		t.Error("unexpected key shape")
	}
}
