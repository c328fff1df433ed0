// Command token prints a development bearer JWT (HS256) for the platform's APIs:
//
//	AUTH_HMAC_SECRET=... go run ./services/token -sub alice -tenant t1 -roles user
//	make token SUB=alice TENANT=t1 ROLES=user   # defaults to the devstack's secret
//
// It signs with AUTH_HMAC_SECRET, the variable the services verify with, and sets iss/aud from
// AUTH_ISSUER/AUTH_AUDIENCE (overridable by -iss/-aud) so the token passes the same checks. Only the
// token goes to stdout, so `TOKEN=$(make token ...)` works.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/msgplatform/platform/internal/auth"
)

// platformRoles are the roles the access rules know; others are minted but warned about.
var platformRoles = []string{"user", "service", "operator", "platform_operator"}

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sub := fs.String("sub", "", "subject: the user id (required)")
	tenant := fs.String("tenant", "", "tenant_id (required)")
	roles := fs.String("roles", "user", "comma-separated roles: user, service, operator, platform_operator (empty = none)")
	ttl := fs.Duration("ttl", 12*time.Hour, "lifetime of the token")
	iss := fs.String("iss", getenv("AUTH_ISSUER"), "iss claim (default $AUTH_ISSUER)")
	aud := fs.String("aud", getenv("AUTH_AUDIENCE"), "aud claim (default $AUTH_AUDIENCE)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "token: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if *sub == "" || *tenant == "" {
		fmt.Fprintln(stderr, "token: -sub and -tenant are required (make token SUB=alice TENANT=t1 ROLES=user)")
		return 2
	}
	if *ttl <= 0 {
		fmt.Fprintln(stderr, "token: -ttl must be positive")
		return 2
	}
	secret := getenv("AUTH_HMAC_SECRET")
	if len(secret) < auth.MinHMACSecretLen {
		fmt.Fprintf(stderr, "token: AUTH_HMAC_SECRET must be set to the services' HS256 secret, at least %d bytes (it has %d)\n",
			auth.MinHMACSecretLen, len(secret))
		return 2
	}

	var rs []string
	for r := range strings.SplitSeq(*roles, ",") {
		if r = strings.TrimSpace(r); r != "" && !slices.Contains(rs, r) {
			rs = append(rs, r)
		}
	}
	for _, r := range rs {
		if !slices.Contains(platformRoles, r) {
			fmt.Fprintf(stderr, "token: warning: %q is not a platform role (%s)\n", r, strings.Join(platformRoles, ", "))
		}
	}

	tok, err := auth.MintHS256([]byte(secret), auth.Principal{Subject: *sub, TenantID: *tenant, Roles: rs}, *ttl, *iss, *aud)
	if err != nil {
		fmt.Fprintf(stderr, "token: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, tok)
	return 0
}
