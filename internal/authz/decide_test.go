package authz_test

import (
	"context"
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/authz"
	"github.com/msgplatform/platform/internal/store"
)

// fakeDirectory answers every membership question with m (or err), counting the questions.
type fakeDirectory struct {
	m     authz.Membership
	err   error
	calls int
}

func (d *fakeDirectory) Membership(context.Context, string, string, string) (authz.Membership, error) {
	d.calls++
	return d.m, d.err
}

func (d *fakeDirectory) MessageAuthor(context.Context, string, string, string) (string, error) {
	return "", store.ErrNotFound
}

// Decide answers each effect, Status maps each to its gRPC code (with the reason), and a Request's
// Directory answers a cache miss instead of the Authorizer's own.
func TestDecideEffectsAndStatus(t *testing.T) {
	h := newHarness(t)
	a, err := authz.NewAuthorizer(h.cache, authz.StoreDirectory{Store: h.st}, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	tara := *callers[8].p
	zoe := auth.Principal{Subject: "zoe", TenantID: tenant, Roles: []string{"user"}}
	read := func(conversationID string) authz.Request {
		return authz.Request{Permission: authz.ConversationRead, ConversationID: conversationID}
	}
	for _, tc := range []struct {
		name string
		p    auth.Principal
		req  authz.Request
		want authz.Effect
		code codes.Code
	}{
		{"member", mia, read(conv), authz.Allow, codes.OK},
		{"non-member", nina, read(conv), authz.Deny, codes.PermissionDenied},
		{"other tenant", tara, read(conv), authz.NotFound, codes.NotFound},
		{"no conversation id", mia, authz.Request{Permission: authz.MessageSend, RequireMembership: true}, authz.Invalid, codes.InvalidArgument},
		{"override failing", zoe, authz.Request{Permission: authz.ConversationRead, ConversationID: conv,
			Directory: &fakeDirectory{err: errors.New("batch reads failed")}}, authz.Unavailable, codes.Unavailable},
	} {
		d := a.Decide(ctx, tc.p, tc.req)
		if d.Effect != tc.want || d.Allowed() != (tc.want == authz.Allow) {
			t.Errorf("%s: Decide = %v (%q), want %v", tc.name, d.Effect, d.Reason, tc.want)
		}
		err := authz.Status(d)
		if status.Code(err) != tc.code || (err != nil && status.Convert(err).Message() != d.Reason) {
			t.Errorf("%s: Status = %v, want code %v with the reason %q", tc.name, err, tc.code, d.Reason)
		}
		if tc.want != authz.Allow && d.Reason == "" {
			t.Errorf("%s: %v without a reason", tc.name, d.Effect)
		}
	}

	// zoe is in no conversation of the store; the batch's reads (the override) say she is a viewer.
	dir := &fakeDirectory{m: authz.Membership{ConversationExists: true, Role: store.RoleViewer}}
	if d := a.Decide(ctx, zoe, authz.Request{Permission: authz.ConversationRead, ConversationID: conv, Directory: dir}); !d.Allowed() || dir.calls != 1 {
		t.Errorf("with the Directory override: %v (%q) after %d questions, want allow after 1", d.Effect, d.Reason, dir.calls)
	}
}
