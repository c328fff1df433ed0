package loadgen

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/msgplatform/platform/internal/auth"
)

func TestIdentities(t *testing.T) {
	t.Run("minted: an owner and one token per sender", func(t *testing.T) {
		c := Config{RunID: "r1", Senders: 3}.withDefaults()
		id, err := newIdentities(c)
		if err != nil {
			t.Fatal(err)
		}
		if id.ownerID != "lg-r1-owner" || len(id.senders) != 3 {
			t.Fatalf("owner %q with %d senders, want lg-r1-owner with 3", id.ownerID, len(id.senders))
		}
		v, err := auth.NewVerifier(auth.Config{HMACSecret: []byte(auth.DevHMACSecret)})
		if err != nil {
			t.Fatal(err)
		}
		check := func(md metadata.MD, wantSub string) {
			t.Helper()
			p, err := v.Verify(strings.TrimPrefix(md.Get("authorization")[0], "Bearer "))
			if err != nil || p.Subject != wantSub || p.TenantID != "loadgen" || !p.HasRole("user") {
				t.Errorf("token for %s verifies as %+v, %v", wantSub, p, err)
			}
		}
		check(id.owner, "lg-r1-owner")
		for i, md := range id.senders {
			check(md, c.SenderID(i))
		}
	})
	t.Run("pre-minted token: its subject does everything", func(t *testing.T) {
		tok, err := auth.MintHS256([]byte(auth.DevHMACSecret), auth.Principal{Subject: "svc-bot", TenantID: "t9", Roles: []string{"user"}}, time.Hour, "", "")
		if err != nil {
			t.Fatal(err)
		}
		c := Config{Token: tok, Senders: 50}.withDefaults()
		if c.Senders != 1 {
			t.Errorf("senders = %d with a token, want 1", c.Senders)
		}
		id, err := newIdentities(c)
		if err != nil {
			t.Fatal(err)
		}
		if id.ownerID != "svc-bot" || len(id.senders) != 1 || id.senders[0].Get("authorization")[0] != "Bearer "+tok {
			t.Errorf("identities %+v, want svc-bot sending with the token", id)
		}
		if _, err := newIdentities(Config{Token: "not-a-jwt"}.withDefaults()); err == nil {
			t.Error("a malformed token was accepted")
		}
	})
}
