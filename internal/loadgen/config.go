package loadgen

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/msgplatform/platform/internal/auth"
)

// Config describes one load run. Zero fields take the defaults documented on each.
type Config struct {
	// Target is the gateway's gRPC address (host:port). Default 127.0.0.1:9090.
	Target string
	// TLS dials with TLS (system roots) instead of plaintext.
	TLS bool

	// Rate is the target SendMessage rate in messages per second (open loop). Default 100.
	Rate int
	// Duration of the send phase. Default 10s. Rate × Duration messages are sent.
	Duration time.Duration
	// Conversations the messages are spread over, round robin. Default 10.
	Conversations int
	// Senders (distinct users) sending them. Default 10. Sender and conversation pairs are dealt round
	// robin, so every sender is a member of the conversations it sends to and nothing more.
	Senders int

	// Tenant of every identity. Default "loadgen".
	Tenant string
	// HMACSecret signs the HS256 tokens of the run's users (the deployment's AUTH_HMAC_SECRET). Default
	// auth.DevHMACSecret, what `make run` checks tokens with when AUTH_HMAC_SECRET is empty.
	HMACSecret string
	// Token, when set, is a pre-minted bearer token (role user) used for every call instead of minting:
	// for deployments whose keys the load generator cannot sign with (JWKS). Its subject creates the
	// conversations and sends every message, so Senders is 1.
	Token string
	// Issuer and Audience go into minted tokens when the deployment checks them (AUTH_ISSUER, AUTH_AUDIENCE).
	Issuer, Audience string
	// RunID makes this run's user ids and titles unique, so runs against one deployment do not mix.
	// Default: random. User ids are "lg-<RunID>-owner" (creates the conversations, reads the streams)
	// and "lg-<RunID>-s<i>" (senders).
	RunID string

	// Persist watches every conversation's StreamMessages and measures SendMessage returning → the
	// message's persisted event arriving. When false only SendMessage is measured (the command line
	// turns it on by default).
	Persist bool
	// Grace is how long to wait after the last send for the persisted events still missing. Default 10s.
	Grace time.Duration
	// WarmupTimeout bounds the warm-up (one message per conversation, seen persisted, before the
	// measured phase) that proves the pipeline and the streams are live. Default 60s.
	WarmupTimeout time.Duration

	// MaxInFlight caps concurrent SendMessage calls. Default max(64, Rate): one second of load. When the
	// cap is reached the scheduler falls behind, and latency, measured from the scheduled send time,
	// shows it.
	MaxInFlight int
	// Conns is the number of gRPC connections the sends are spread over. Default 4. The streams use
	// connections of their own, one per 100 conversations.
	Conns int
	// CallTimeout bounds each SendMessage. Default 10s.
	CallTimeout time.Duration
	// BodyBytes is the size of each message body. Default 160.
	BodyBytes int
	// NoClientMessageID leaves client_message_id empty (by default every send carries one, as real
	// clients do, which costs the gateway an idempotency claim in Redis).
	NoClientMessageID bool

	// ProgressInterval is how often a progress line is written. Default 1s.
	ProgressInterval time.Duration

	// OnPersisted, when set, is called from the stream readers for every persisted event of the run's
	// messages (not the warm-up's), as soon as it arrives. It must not block for long.
	OnPersisted func(conversationID, messageID string)
}

const (
	defaultTarget = "127.0.0.1:9090"
	defaultTenant = "loadgen"
)

// withDefaults fills zero fields.
func (c Config) withDefaults() Config {
	if c.Target == "" {
		c.Target = defaultTarget
	}
	if c.Rate == 0 {
		c.Rate = 100
	}
	if c.Duration == 0 {
		c.Duration = 10 * time.Second
	}
	if c.Conversations == 0 {
		c.Conversations = 10
	}
	if c.Senders == 0 {
		c.Senders = 10
	}
	if c.Token != "" {
		c.Senders = 1
	}
	if c.Tenant == "" {
		c.Tenant = defaultTenant
	}
	if c.HMACSecret == "" {
		c.HMACSecret = auth.DevHMACSecret
	}
	if c.RunID == "" {
		c.RunID = randomID()
	}
	if c.Grace == 0 {
		c.Grace = 10 * time.Second
	}
	if c.WarmupTimeout == 0 {
		c.WarmupTimeout = 60 * time.Second
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = max(64, c.Rate)
	}
	if c.Conns == 0 {
		c.Conns = 4
	}
	if c.CallTimeout == 0 {
		c.CallTimeout = 10 * time.Second
	}
	if c.BodyBytes == 0 {
		c.BodyBytes = 160
	}
	if c.ProgressInterval == 0 {
		c.ProgressInterval = time.Second
	}
	return c
}

func (c Config) validate() error {
	var errs []error
	if c.Rate < 0 {
		errs = append(errs, fmt.Errorf("rate must be positive, got %d", c.Rate))
	}
	if c.Duration < 0 {
		errs = append(errs, fmt.Errorf("duration must be positive, got %s", c.Duration))
	}
	if c.Conversations < 0 || c.Senders < 0 {
		errs = append(errs, fmt.Errorf("conversations and senders must be positive, got %d and %d", c.Conversations, c.Senders))
	}
	if c.Token == "" && len(c.HMACSecret) < auth.MinHMACSecretLen {
		errs = append(errs, fmt.Errorf("HMAC secret is %d bytes; at least %d are required", len(c.HMACSecret), auth.MinHMACSecretLen))
	}
	if c.MaxInFlight < 0 || c.Conns < 0 || c.BodyBytes < 0 {
		errs = append(errs, errors.New("max in-flight, connections and body size must be positive"))
	}
	if c.totalMessages() == 0 && c.Rate > 0 && c.Duration > 0 {
		errs = append(errs, fmt.Errorf("rate %d for %s sends no message", c.Rate, c.Duration))
	}
	return errors.Join(errs...)
}

// totalMessages is how many messages the send phase schedules: Rate × Duration.
func (c Config) totalMessages() int {
	return int(int64(c.Rate) * int64(c.Duration) / int64(time.Second))
}

// OwnerID is the user that creates the run's conversations and reads their streams.
func (c Config) OwnerID() string { return "lg-" + c.RunID + "-owner" }

// SenderID is the user id of sender i.
func (c Config) SenderID(i int) string { return fmt.Sprintf("lg-%s-s%d", c.RunID, i) }

func randomID() string {
	b := make([]byte, 4)
	_, _ = io.ReadFull(rand.Reader, b)
	return hex.EncodeToString(b)
}
