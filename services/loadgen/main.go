// Command loadgen offers SendMessage load to a running platform and reports throughput and latency:
//
//	go run ./services/loadgen -target 127.0.0.1:9090 -rate 500 -duration 30s -conversations 50 -senders 100
//
// It creates the conversations (owner: a user of its own) with the senders as members, opens one
// StreamMessages per conversation, sends Rate messages per second for Duration (open loop: the schedule
// does not wait for answers), and measures SendMessage's latency and the time from SendMessage returning
// to the message's persisted event arriving on the stream. A progress line goes to stderr every second;
// the summary table to stdout.
//
// Tokens are minted (HS256) with -hmac-secret, by default $AUTH_HMAC_SECRET or, when unset, the dev
// secret `make run` uses. For deployments with other keys, pass a token of role user with -token.
// Every flag also reads an environment variable, LOADGEN_<FLAG> (e.g. LOADGEN_RATE=2000).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/loadgen"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	env := func(flagName, def string) string {
		if v := getenv("LOADGEN_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))); v != "" {
			return v
		}
		return def
	}
	var bad []string
	envInt := func(name string, def int) int {
		v := env(name, strconv.Itoa(def))
		n, err := strconv.Atoi(v)
		if err != nil {
			bad = append(bad, fmt.Sprintf("LOADGEN_%s=%q is not an integer", strings.ToUpper(strings.ReplaceAll(name, "-", "_")), v))
			return def
		}
		return n
	}
	envDur := func(name string, def time.Duration) time.Duration {
		v := env(name, def.String())
		d, err := time.ParseDuration(v)
		if err != nil {
			bad = append(bad, fmt.Sprintf("LOADGEN_%s=%q is not a duration", strings.ToUpper(strings.ReplaceAll(name, "-", "_")), v))
			return def
		}
		return d
	}
	envBool := func(name string, def bool) bool {
		v := env(name, strconv.FormatBool(def))
		b, err := strconv.ParseBool(v)
		if err != nil {
			bad = append(bad, fmt.Sprintf("LOADGEN_%s=%q is not a boolean", strings.ToUpper(strings.ReplaceAll(name, "-", "_")), v))
			return def
		}
		return b
	}
	var c loadgen.Config
	fs.StringVar(&c.Target, "target", env("target", "127.0.0.1:9090"), "gRPC address of the gateway")
	fs.BoolVar(&c.TLS, "tls", envBool("tls", false), "dial with TLS (system roots)")
	fs.IntVar(&c.Rate, "rate", envInt("rate", 100), "messages per second (open loop)")
	fs.DurationVar(&c.Duration, "duration", envDur("duration", 10*time.Second), "how long to send")
	fs.IntVar(&c.Conversations, "conversations", envInt("conversations", 10), "conversations to spread the messages over")
	fs.IntVar(&c.Senders, "senders", envInt("senders", 10), "distinct sending users")
	fs.StringVar(&c.Tenant, "tenant", env("tenant", "loadgen"), "tenant of the minted tokens")
	// Resolved after parsing, so -h never prints a secret.
	fs.StringVar(&c.HMACSecret, "hmac-secret", "", "HS256 secret to mint tokens with (default $LOADGEN_HMAC_SECRET, $AUTH_HMAC_SECRET, else the devstack's)")
	fs.StringVar(&c.Token, "token", "", "pre-minted bearer token (role user) for every call instead of minting; implies -senders 1 (prefer $LOADGEN_TOKEN: flags show in ps)")
	fs.StringVar(&c.Issuer, "iss", env("iss", getenv("AUTH_ISSUER")), "iss claim of minted tokens (default $AUTH_ISSUER)")
	fs.StringVar(&c.Audience, "aud", env("aud", getenv("AUTH_AUDIENCE")), "aud claim of minted tokens (default $AUTH_AUDIENCE)")
	fs.BoolVar(&c.Persist, "persist", envBool("persist", true), "watch StreamMessages and measure send→persisted latency")
	fs.DurationVar(&c.Grace, "grace", envDur("grace", 10*time.Second), "how long to wait for missing persisted events after the last send")
	fs.IntVar(&c.MaxInFlight, "max-in-flight", envInt("max-in-flight", 0), "cap on concurrent SendMessage calls (0: max(64, rate))")
	fs.IntVar(&c.Conns, "conns", envInt("conns", 4), "gRPC connections the sends are spread over")
	fs.IntVar(&c.BodyBytes, "body-bytes", envInt("body-bytes", 160), "size of each message body")
	fs.BoolVar(&c.NoClientMessageID, "no-client-id", envBool("no-client-id", false), "send without client_message_id (skips the gateway's idempotency claim)")
	fs.StringVar(&c.RunID, "run-id", env("run-id", ""), "suffix of the run's user ids and titles (default random)")
	fs.Usage = func() {
		fmt.Fprint(stderr, `loadgen offers SendMessage load to a running platform and reports throughput and latency.

  loadgen -target 127.0.0.1:9090 -rate 500 -duration 30s -conversations 50 -senders 100

Progress goes to stderr every second, the summary table to stdout. Every flag also reads LOADGEN_<FLAG>.

`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if c.Token == "" {
		c.Token = getenv("LOADGEN_TOKEN")
	}
	for _, v := range []string{c.HMACSecret, getenv("LOADGEN_HMAC_SECRET"), getenv("AUTH_HMAC_SECRET"), auth.DevHMACSecret} {
		if v != "" {
			c.HMACSecret = v
			break
		}
	}
	if len(bad) > 0 {
		fmt.Fprintln(stderr, "loadgen: "+strings.Join(bad, "; "))
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "loadgen: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if c.Rate <= 0 || c.Duration <= 0 || c.Conversations <= 0 || c.Senders <= 0 {
		fmt.Fprintln(stderr, "loadgen: -rate, -duration, -conversations and -senders must be positive")
		return 2
	}

	res, err := loadgen.Run(ctx, c, stderr)
	if res.Scheduled > 0 {
		fmt.Fprintln(stdout)
		if werr := res.WriteTable(stdout); werr != nil {
			fmt.Fprintf(stderr, "loadgen: %v\n", werr)
		}
	}
	if err != nil {
		fmt.Fprintln(stderr, err) // already prefixed "loadgen:"
		return 1
	}
	return 0
}
