package main

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"github.com/msgplatform/platform/internal/auth"
)

func TestRun(t *testing.T) {
	env := map[string]string{"AUTH_HMAC_SECRET": auth.DevHMACSecret, "AUTH_ISSUER": "iss", "AUTH_AUDIENCE": "aud"}
	var out, errOut bytes.Buffer
	code := run([]string{"-sub", "alice", "-tenant", "t1", "-roles", "user, operator,,user"}, func(k string) string { return env[k] }, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	v, err := auth.NewVerifier(auth.Config{HMACSecret: []byte(auth.DevHMACSecret), Issuer: "iss", Audience: "aud"})
	if err != nil {
		t.Fatal(err)
	}
	p, err := v.Verify(strings.TrimSuffix(out.String(), "\n"))
	if err != nil {
		t.Fatalf("minted token does not verify: %v (stdout %q)", err, out.String())
	}
	if p.Subject != "alice" || p.TenantID != "t1" || !slices.Equal(p.Roles, []string{"user", "operator"}) {
		t.Fatalf("principal = %+v", p)
	}
	if errOut.Len() != 0 {
		t.Errorf("unexpected stderr: %s", errOut.String())
	}
}

func TestRunRefuses(t *testing.T) {
	tests := []struct {
		name   string
		args   []string
		secret string
		want   string
	}{
		{"no secret", []string{"-sub", "a", "-tenant", "t"}, "", "AUTH_HMAC_SECRET"},
		{"short secret", []string{"-sub", "a", "-tenant", "t"}, "0123456789", "at least 32 bytes"},
		{"no sub", []string{"-tenant", "t"}, auth.DevHMACSecret, "-sub"},
		{"no tenant", []string{"-sub", "a"}, auth.DevHMACSecret, "-tenant"},
		{"bad ttl", []string{"-sub", "a", "-tenant", "t", "-ttl", "-1h"}, auth.DevHMACSecret, "-ttl"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			getenv := func(k string) string {
				if k == "AUTH_HMAC_SECRET" {
					return tc.secret
				}
				return ""
			}
			if code := run(tc.args, getenv, &out, &errOut); code == 0 {
				t.Fatalf("exit 0, stdout %q", out.String())
			}
			if out.Len() != 0 {
				t.Errorf("stdout not empty: %q", out.String())
			}
			if !strings.Contains(errOut.String(), tc.want) {
				t.Errorf("stderr %q does not mention %q", errOut.String(), tc.want)
			}
		})
	}
}
