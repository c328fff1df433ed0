package latency

import (
	"fmt"
	"testing"
	"time"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/tracing/tracingtest"
)

// TracingResult is what tracing costs on the latency goals: the REST/gRPC ratio again on a gateway that
// traces every call, and the p50 of a traced gateway over an untraced one for the same calls.
type TracingResult struct {
	RESTvsGRPC RESTResult // on the traced gateway; goal as untraced, ≤ 2.0
	// Traced ÷ untraced gateway, p50 over p50, side by side: GetConversation over gRPC and over REST, and
	// SendMessage over gRPC (which also writes the traceparent into the Kafka record).
	GetGRPC, GetREST, Send Pair
	SpansExported          int64 // what the OTLP sink received: proof that the traced gateway traced
	Rounds, Calls          int
}

// MeasureTracing starts two gateways over the same servers, one with tracing off (the default) and one
// exporting every span (OTEL_TRACES_SAMPLER=always_on) over OTLP/gRPC, as a user turns it on, to a receiver
// in this process that counts and drops them (tracingtest), and measures them side by side (see alternate).
func MeasureTracing(tb testing.TB, rounds, calls int) (TracingResult, error) {
	sink := tracingtest.Start(tb)
	plain, err := newGateway(tb)
	if err != nil {
		return TracingResult{}, err
	}
	// The SDK's exporter and sampler read the process environment (what a deployment sets); the
	// platform's config reads the same variable to switch tracing on.
	otel := map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + sink.GRPCAddr, "OTEL_TRACES_SAMPLER": "always_on"}
	for k, v := range otel {
		tb.Setenv(k, v)
	}
	traced, err := newGateway(tb, otel)
	if err != nil {
		return TracingResult{}, err
	}
	res := TracingResult{Rounds: rounds, Calls: calls}
	if res.RESTvsGRPC, err = traced.measure(rounds, calls); err != nil {
		return res, fmt.Errorf("traced gateway: %w", err)
	}
	if res.GetGRPC, err = alternate(rounds, calls,
		func() error { _, err := traced.getGRPC(traced.member); return err },
		func() error { _, err := plain.getGRPC(plain.member); return err }); err != nil {
		return res, fmt.Errorf("GetConversation over gRPC, traced vs not: %w", err)
	}
	if res.GetREST, err = alternate(rounds, calls,
		func() error { _, err := traced.getREST(traced.member); return err },
		func() error { _, err := plain.getREST(plain.member); return err }); err != nil {
		return res, fmt.Errorf("GetConversation over REST, traced vs not: %w", err)
	}
	if res.Send, err = alternate(rounds, calls, traced.send, plain.send); err != nil {
		return res, fmt.Errorf("SendMessage, traced vs not: %w", err)
	}
	// The SDK's batch processor exports every 5 s (OTEL_BSP_SCHEDULE_DELAY): wait for a first export.
	for deadline := time.Now().Add(15 * time.Second); sink.Spans() == 0 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	if res.SpansExported = sink.Spans(); res.SpansExported == 0 {
		return res, fmt.Errorf("the traced gateway exported no span in 15 s: tracing was not on")
	}
	return res, nil
}

// send sends one short message to the gateway's conversation as its owner.
func (g *gateway) send() error {
	_, err := g.msgs.SendMessage(withToken(g.member), &platformv1.SendMessageRequest{ConversationId: g.conversation, Body: "bench"})
	return err
}
