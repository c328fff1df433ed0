package api_test

import (
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/envelope/envelopetest"
	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/testenv"
)

// The API half of the agreement: every row of envelopetest.SendCases through SendMessage. What it
// accepts is published signed and passes envelope.Validate, the pipeline's own check (the pipeline half,
// internal/pipeline TestValidationAgreesWithTheAPI, runs the same rows through its stages); what it
// refuses gets the status the row names, and nothing is published.
func TestSendMessageValidationAgreesWithThePipeline(t *testing.T) {
	g := startGateway(t, testenv.Kafka(t), gatewayOnly)
	keys := testenv.SigningKeys(t)
	accepted := map[string]string{} // message id → case
	for i, c := range envelopetest.SendCases() {
		t.Run(c.Name, func(t *testing.T) {
			conv := fmt.Sprintf("conv-%d", i)
			if c.Want != envelopetest.BadIdentity {
				if _, err := g.st.Conversations.Create(t.Context(), store.Conversation{ID: conv, TenantID: c.Tenant, Title: "t", CreatorID: c.Subject}, nil); err != nil {
					t.Fatal(err)
				}
			}
			tok := testenv.Token(t, c.Subject, c.Tenant, c.Roles...)
			resp, err := g.msgs.SendMessage(as(tok), &platformv1.SendMessageRequest{ConversationId: conv, Body: c.Body,
				ClientMessageId: c.ClientMessageID, Metadata: c.Metadata})
			want := map[envelopetest.Outcome]codes.Code{envelopetest.Accepted: codes.OK,
				envelopetest.InvalidRequest: codes.InvalidArgument, envelopetest.BadIdentity: codes.Unauthenticated}[c.Want]
			if code(err) != want {
				t.Fatalf("SendMessage: %v; want %s", err, want)
			}
			if err == nil {
				accepted[resp.GetMessageId()] = c.Name
			}
		})
	}
	recs := inbound(t, g.kafka, len(accepted))
	if len(recs) != len(accepted) {
		t.Fatalf("%d records published, want %d (one per accepted case)", len(recs), len(accepted))
	}
	for _, r := range recs {
		if err := keys.Verify(r); err != nil {
			t.Errorf("published record does not verify: %v", err)
		}
		in, err := envelope.DecodeInbound(r)
		if err != nil {
			t.Fatal(err)
		}
		name, ok := accepted[in.GetId()]
		if !ok {
			t.Errorf("record %s was not answered ACCEPTED", in.GetId())
			continue
		}
		if err := envelope.Validate(in); err != nil {
			t.Errorf("%s: accepted by the API, refused by the pipeline's validation: %v", name, err)
		}
	}
}
