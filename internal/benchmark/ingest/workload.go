package ingest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/types/known/timestamppb"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/pipeline"
	"github.com/msgplatform/platform/internal/requestid"
	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/testenv"
)

// conversation is one conversation of the workload and the users who may send to it.
type conversation struct {
	tenant, id string
	members    []string
}

// workload generates what SendMessage would publish: several tenants, conversations of a few members
// each, senders picked among the members, bodies of varied length with some mentions, metadata and
// client message ids. It is seeded, so two runs send the same shapes.
type workload struct {
	convs []conversation
	rng   *rand.Rand
	seq   int
}

// words are what bodies are made of (ASCII and a little non-ASCII, so NFC has something to check).
var words = strings.Fields(`the a to and of is in it you that for on we this be with are have will can just
	not do at so but if meeting deploy review today tomorrow ticket release build merged thanks please
	looks good ship it lunch café naïve déjà vu 👍 ok sure later standup budget roadmap customer invoice
	https://example.com/doc/42 v2.3.1 #incident PR-1187 fixed flaky test retry backoff latency p99`)

// clients are the metadata "client" values the API sees.
var clients = []string{"web/5.12.0", "ios/4.8.1", "android/4.7.9", "desktop/2.1.0", "bot/1.0"}

// createConversations creates the workload's conversations through the store: tenants × per tenant,
// each with members users (the first the owner), all of them allowed to send.
func createConversations(ctx context.Context, st *store.Store, tenants, perTenant, members int, seed uint64) (*workload, error) {
	w := &workload{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
	for t := range tenants {
		tenant := fmt.Sprintf("tenant-%d", t)
		for c := range perTenant {
			users := make([]string, members)
			for u := range users {
				users[u] = fmt.Sprintf("user-%d-%d", c, u)
			}
			ms := make([]store.Member, 0, members-1)
			for _, u := range users[1:] {
				ms = append(ms, store.Member{UserID: u, Role: store.RoleMember})
			}
			conv, err := st.Conversations.Create(ctx, store.Conversation{TenantID: tenant, Title: fmt.Sprintf("conversation %d", c), CreatorID: users[0]}, ms)
			if err != nil {
				return nil, fmt.Errorf("create conversation %d of %s: %w", c, tenant, err)
			}
			w.convs = append(w.convs, conversation{tenant: tenant, id: conv.ID, members: users})
		}
	}
	return w, nil
}

// message returns the next inbound message. Conversations are picked with a skew (a few are busy, most
// are quiet), bodies are 1 to ~120 words (most short), one in five mentions a member, most carry a
// client message id and two or three metadata entries.
func (w *workload) message(now time.Time) *platformv1.InboundMessage {
	r := w.rng
	// Square of a uniform: low indexes (busy conversations) come up more often.
	f := r.Float64()
	c := w.convs[int(f*f*float64(len(w.convs)))]
	sender := c.members[r.IntN(len(c.members))]

	n := 1 + int(r.ExpFloat64()*12)
	n = min(n, 120)
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(' ')
		}
		if r.IntN(40) == 0 {
			b.WriteString("@" + c.members[r.IntN(len(c.members))])
			continue
		}
		b.WriteString(words[r.IntN(len(words))])
	}
	if r.IntN(5) == 0 {
		b.WriteString(" cc @" + c.members[r.IntN(len(c.members))])
	}
	meta := map[string]string{"client": clients[r.IntN(len(clients))], "locale": []string{"en-US", "fr-FR", "de-DE", "ja-JP"}[r.IntN(4)]}
	if r.IntN(3) == 0 {
		meta["thread"] = fmt.Sprintf("th-%d", r.IntN(1000))
	}
	w.seq++
	in := &platformv1.InboundMessage{
		Id:             ulid.MustNew(ulid.Timestamp(now), ulid.DefaultEntropy()).String(),
		TenantId:       c.tenant,
		ConversationId: c.id,
		SenderId:       sender,
		Body:           b.String(),
		Metadata:       meta,
		RequestId:      requestid.New(),
		SendTime:       timestamppb.New(now),
		SenderRoles:    []string{"user"},
	}
	if r.IntN(10) < 8 {
		in.ClientMessageId = fmt.Sprintf("cm-%s-%d", sender, w.seq)
	}
	return in
}

// signingKeys are the keys of the benchmark's configuration (testenv.SigningKeysSpec), with which the
// gateway would have signed the records.
var signingKeys = func() *envelope.Keys {
	k, err := envelope.ParseKeys(testenv.SigningKeysSpec)
	if err != nil {
		panic(err)
	}
	return k
}()

// record encodes in as SendMessage does (envelope.InboundRecord: protobuf, key = conversation id,
// content-type and request id headers, signed).
func record(in *platformv1.InboundMessage) (*kgo.Record, error) {
	return envelope.InboundRecord(in, signingKeys)
}

// storedMessage is the message the pipeline stores for in (what its transform stage builds), for the
// baselines to write the very same documents.
func storedMessage(in *platformv1.InboundMessage) store.Message {
	body := envelope.NormalizeBody(in.GetBody())
	return store.Message{
		ID: in.GetId(), TenantID: in.GetTenantId(), ConversationID: in.GetConversationId(), SenderID: in.GetSenderId(),
		Body: body, ClientMessageID: in.GetClientMessageId(), Metadata: in.GetMetadata(), Mentions: pipeline.Mentions(body),
		State: store.MessagePersisted, RequestID: in.GetRequestId(), CreateTime: in.GetSendTime().AsTime(),
	}
}
