package pipeline

import (
	"context"
	"testing"

	"github.com/msgplatform/platform/internal/envelope/envelopetest"
)

// The pipeline half of the agreement: every row of envelopetest.SendCases, as SendMessage would have
// built and signed it, through authenticate, deserialize and validate. Rows the API accepts pass; rows it
// refuses (internal/api TestSendMessageValidationAgreesWithThePipeline) fail here too, permanently, at
// validate.
func TestValidationAgreesWithTheAPI(t *testing.T) {
	r := testRunner(t, Config{}, authenticateStage{keys: testKeys(t)}, deserializeStage{}, validateStage{})
	for _, c := range envelopetest.SendCases() {
		t.Run(c.Name, func(t *testing.T) {
			it := newItem(record(c.Inbound("conv-1"), false))
			if err := r.process(context.Background(), &Batch{Items: []*Item{it}}); err != nil {
				t.Fatal(err)
			}
			switch {
			case c.Want == envelopetest.Accepted && it.Failed():
				t.Fatalf("refused at %s: %v; the API accepts it", it.Stage(), it.Err())
			case c.Want != envelopetest.Accepted && !it.Failed():
				t.Fatal("passed; the API refuses it")
			case it.Failed() && (it.Stage() != StageValidate || it.Class() != Permanent):
				t.Fatalf("failed %s at %s, want permanent at validate: %v", it.Class(), it.Stage(), it.Err())
			}
		})
	}
}
