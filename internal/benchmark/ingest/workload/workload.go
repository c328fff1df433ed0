// Package workload generates the ingest benchmark's messages: what SendMessage would publish to
// messages.inbound for several tenants, conversations of a few members each, senders picked among the
// members, bodies of varied length with some mentions, metadata and client message ids.
//
// A workload is a pure function of its seed and shape: conversation ids, message ids, request ids, send
// times and contents all come from the seed, so two processes given the same seed generate the very same
// messages. The benchmark harness produces them to Kafka while `storebench ceiling` (another process)
// writes the documents the pipeline stores for them, without reading Kafka.
//
// This package links neither FerretDB nor kfake: the benchmark's helper binary uses it.
package workload

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/pipeline"
	"github.com/msgplatform/platform/internal/store"
)

// Defaults of Shape: 300 conversations of 5 members over 3 tenants.
const (
	DefaultTenants       = 3
	DefaultConversations = 300 // in all, dealt round robin over the tenants
	DefaultMembers       = 5   // per conversation, all of them senders
	// MaxWords bounds a body's words (mentions included).
	MaxWords = 120
)

// Shape is the workload's conversations.
type Shape struct {
	Tenants       int
	Conversations int // in all, dealt round robin over the tenants
	Members       int // per conversation, the first its owner; every member sends
}

// WithDefaults fills zero fields with the defaults above.
func (s Shape) WithDefaults() Shape {
	if s.Tenants <= 0 {
		s.Tenants = DefaultTenants
	}
	if s.Conversations <= 0 {
		s.Conversations = DefaultConversations
	}
	if s.Members <= 0 {
		s.Members = DefaultMembers
	}
	return s
}

// Conversation is one conversation of the workload and the users who may send to it.
type Conversation struct {
	Tenant, ID string
	Members    []string // Members[0] is the owner
}

// Workload generates the messages of one seed and shape, in order. It is not safe for concurrent use.
type Workload struct {
	convs []Conversation
	rng   *rand.Rand
	ids   *rand.ChaCha8 // entropy of the ULIDs
	base  time.Time     // send time of the first message
	seq   int
}

// epoch is the send time of a workload's first message, plus its seed in seconds: fixed, so the
// documents of a seed are the same in every process.
var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// New returns the workload of seed and shape (WithDefaults applied): its conversations are fixed (ids
// included), not yet stored (see Create).
func New(seed uint64, shape Shape) *Workload {
	shape = shape.WithDefaults()
	var key [32]byte
	for i := range 8 {
		key[i] = byte(seed >> (8 * i))
	}
	copy(key[8:], "msgplatform ingest workload ids")
	w := &Workload{
		rng:  rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		ids:  rand.NewChaCha8(key),
		base: epoch.Add(time.Duration(seed%1_000_000) * time.Second),
	}
	for c := range shape.Conversations {
		tenant := fmt.Sprintf("tenant-%d", c%shape.Tenants)
		users := make([]string, shape.Members)
		for u := range users {
			users[u] = fmt.Sprintf("user-%d-%d", c, u)
		}
		id := ulid.MustNew(ulid.Timestamp(w.base.Add(-time.Hour)), w.ids).String()
		w.convs = append(w.convs, Conversation{Tenant: tenant, ID: id, Members: users})
	}
	return w
}

// Conversations returns the workload's conversations.
func (w *Workload) Conversations() []Conversation { return w.convs }

// Create stores the workload's conversations and their memberships through st, with their ids: the
// pipeline's tenant and authorize stages look them up.
func (w *Workload) Create(ctx context.Context, st *store.Store) error {
	for i, c := range w.convs {
		ms := make([]store.Member, 0, len(c.Members)-1)
		for _, u := range c.Members[1:] {
			ms = append(ms, store.Member{UserID: u, Role: store.RoleMember})
		}
		conv := store.Conversation{ID: c.ID, TenantID: c.Tenant, Title: fmt.Sprintf("conversation %d", i), CreatorID: c.Members[0]}
		if _, err := st.Conversations.Create(ctx, conv, ms); err != nil {
			return fmt.Errorf("create conversation %d of %s: %w", i, c.Tenant, err)
		}
	}
	return nil
}

// words are what bodies are made of (ASCII and a little non-ASCII, so NFC has something to check).
var words = strings.Fields(`the a to and of is in it you that for on we this be with are have will can just
	not do at so but if meeting deploy review today tomorrow ticket release build merged thanks please
	looks good ship it lunch café naïve déjà vu 👍 ok sure later standup budget roadmap customer invoice
	https://example.com/doc/42 v2.3.1 #incident PR-1187 fixed flaky test retry backoff latency p99`)

// clients are the metadata "client" values the API sees.
var clients = []string{"web/5.12.0", "ios/4.8.1", "android/4.7.9", "desktop/2.1.0", "bot/1.0"}

// Next returns the next inbound message. Conversations are picked with a skew (a few are busy, most are
// quiet), bodies are 1 to MaxWords words (most short), one in five mentions a member, most carry a client
// message id and two or three metadata entries. Send times advance by 1 ms a message.
func (w *Workload) Next() *platformv1.InboundMessage {
	r := w.rng
	// Square of a uniform: low indexes (busy conversations) come up more often.
	f := r.Float64()
	c := w.convs[int(f*f*float64(len(w.convs)))]
	sender := c.Members[r.IntN(len(c.Members))]

	cc := r.IntN(5) == 0 // ends with "cc @member": two more words
	n := min(1+int(r.ExpFloat64()*12), MaxWords)
	if cc {
		n = min(n, MaxWords-2)
	}
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(' ')
		}
		if r.IntN(40) == 0 {
			b.WriteString("@" + c.Members[r.IntN(len(c.Members))])
			continue
		}
		b.WriteString(words[r.IntN(len(words))])
	}
	if cc {
		b.WriteString(" cc @" + c.Members[r.IntN(len(c.Members))])
	}
	meta := map[string]string{"client": clients[r.IntN(len(clients))], "locale": []string{"en-US", "fr-FR", "de-DE", "ja-JP"}[r.IntN(4)]}
	if r.IntN(3) == 0 {
		meta["thread"] = fmt.Sprintf("th-%d", r.IntN(1000))
	}
	sent := w.base.Add(time.Duration(w.seq) * time.Millisecond)
	w.seq++
	in := &platformv1.InboundMessage{
		Id:             ulid.MustNew(ulid.Timestamp(sent), w.ids).String(),
		TenantId:       c.Tenant,
		ConversationId: c.ID,
		SenderId:       sender,
		Body:           b.String(),
		Metadata:       meta,
		RequestId:      ulid.MustNew(ulid.Timestamp(sent), w.ids).String(),
		SendTime:       timestamppb.New(sent),
		SenderRoles:    []string{"user"},
	}
	if r.IntN(10) < 8 {
		in.ClientMessageId = fmt.Sprintf("cm-%s-%d", sender, w.seq)
	}
	return in
}

// Documents returns the documents the pipeline stores for the first n messages of the workload of seed
// and shape (Stored of each).
func Documents(seed uint64, shape Shape, n int) []store.Message {
	w := New(seed, shape)
	docs := make([]store.Message, n)
	for i := range docs {
		docs[i] = Stored(w.Next())
	}
	return docs
}

// Stored is the message the pipeline stores for in: what its transform stage builds (body normalised,
// mentions extracted, state persisted, create time = send time), for the baselines to write the very same
// documents.
func Stored(in *platformv1.InboundMessage) store.Message {
	body := envelope.NormalizeBody(in.GetBody())
	m := store.Message{
		ID: in.GetId(), TenantID: in.GetTenantId(), ConversationID: in.GetConversationId(), SenderID: in.GetSenderId(),
		Body: body, ClientMessageID: in.GetClientMessageId(), Metadata: in.GetMetadata(), Mentions: pipeline.Mentions(body),
		State: store.MessagePersisted, RequestID: in.GetRequestId(),
	}
	if ts := in.GetSendTime(); ts != nil {
		m.CreateTime = ts.AsTime()
	}
	return m
}

// Encoding is how a record's value is encoded.
type Encoding string

// Encodings of records.
const (
	// Protobuf is what SendMessage produces (envelope.InboundRecord).
	Protobuf Encoding = "protobuf"
	// ProtoJSON is the value as protojson with content-type application/json, as a producer outside the
	// gateway may send it; the pipeline decodes both.
	ProtoJSON Encoding = "protojson"
)

// ParseEncoding reads "protobuf" or "protojson".
func ParseEncoding(s string) (Encoding, error) {
	switch e := Encoding(strings.ToLower(strings.TrimSpace(s))); e {
	case Protobuf, ProtoJSON:
		return e, nil
	}
	return "", fmt.Errorf("encoding %q: want %s or %s", s, Protobuf, ProtoJSON)
}

// Record encodes in as a messages.inbound record signed with keys: Protobuf exactly as SendMessage
// does; ProtoJSON with the value protojson.Marshal(in), content-type application/json, the same key
// (conversation id) and request id header.
func Record(in *platformv1.InboundMessage, enc Encoding, keys *envelope.Keys) (*kgo.Record, error) {
	switch enc {
	case Protobuf:
		return envelope.InboundRecord(in, keys)
	case ProtoJSON:
		value, err := protojson.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("encode inbound message %s as protojson: %w", in.GetId(), err)
		}
		r := &kgo.Record{Topic: kafka.TopicInbound, Key: []byte(in.GetConversationId()), Value: value, Headers: []kgo.RecordHeader{
			{Key: envelope.HeaderContentType, Value: []byte(envelope.ContentTypeJSON)},
			{Key: envelope.HeaderRequestID, Value: []byte(in.GetRequestId())},
		}}
		if err := keys.Sign(r); err != nil {
			return nil, fmt.Errorf("sign inbound record %s: %w", in.GetId(), err)
		}
		return r, nil
	}
	return nil, fmt.Errorf("record of %s: unknown encoding %q", in.GetId(), enc)
}

// Report is the one JSON line `storebench` (internal/benchmark/cmd/storebench) prints on stdout when it
// is done.
type Report struct {
	// Records is how many messages it stored.
	Records int `json:"records"`
	// Seconds is the measured time: for the ceiling from its first write to its last acknowledged one,
	// for the consumer from the process's start (exec) to its last acknowledged insert.
	Seconds float64 `json:"seconds"`
	// CPUSeconds is the process's own user+system time, from its start to its last insert.
	CPUSeconds float64 `json:"cpu_seconds"`
	// FirstStoredSeconds is when the first insert was acknowledged, from the same start as Seconds.
	FirstStoredSeconds float64 `json:"first_stored_seconds"`
	// WallSeconds is the ceiling's time from the process's start to its last insert (building the
	// documents included); the consumer's is Seconds.
	WallSeconds float64 `json:"wall_seconds,omitempty"`
	// Duplicates counts records the consumer found already stored (none in a fresh database).
	Duplicates int `json:"duplicates,omitempty"`
}
