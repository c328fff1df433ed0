package loadgen

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"
)

// Result is what one run measured.
type Result struct {
	Target                 string
	Rate                   int // target messages/s
	Duration               time.Duration
	Conversations, Senders int
	RunID                  string

	// Scheduled is Rate × Duration; Sent how many calls started: fewer when interrupted, or when the
	// target was so slow that the in-flight cap held the schedule back past Duration + CallTimeout.
	Scheduled, Sent int
	OK, Failed      int
	// Errors counts failed calls by gRPC code; ErrorSamples keeps the first message of each code.
	Errors       map[string]int
	ErrorSamples map[string]string

	// Elapsed runs from the first scheduled send to the last SendMessage answer; AchievedRate is
	// OK ÷ Elapsed.
	Elapsed      time.Duration
	AchievedRate float64
	// MaxScheduleLag is the most a send started after its scheduled time. More than a few milliseconds
	// means the load generator itself (CPU, MaxInFlight) could not offer the target rate.
	MaxScheduleLag time.Duration

	// Send is SendMessage's latency from the scheduled send time to the answer (successful calls), so a
	// late start counts against it.
	Send Latency

	// Persist is true when persistence was watched; the fields below are zero otherwise.
	Persist bool
	// Persisted counts OK messages whose persisted event arrived within Grace after the last answer;
	// Unseen the others.
	Persisted, Unseen int
	Grace             time.Duration
	// SendToPersisted is SendMessage returning → the message's persisted event arriving on
	// StreamMessages: how long until a reader can see what a sender was told is accepted. Events that
	// beat the answer count as 0 (Early says how many).
	SendToPersisted Latency
	// SendToPersistedAll covers every OK message: the seen ones as above, and each unseen one as the time
	// it was waited for (SendMessage returning → the end of the grace period), a lower bound of its
	// latency. Its P99 is the headline number: a missed or lost event can only raise it.
	SendToPersistedAll Latency
	Early              int
	// AcceptedToStored (server's create_time → the pipeline's persist_time) and StoredToSeen
	// (persist_time → event arrival) split SendToPersisted; they compare server and client clocks, so
	// they are meaningful only when the clocks agree (same machine).
	AcceptedToStored, StoredToSeen Latency
	// UnseenChecked of the Unseen messages were looked up with GetMessage; UnseenStored of them were
	// stored (the stream missed their event) and the rest were not (yet) persisted.
	UnseenChecked, UnseenStored int
	// StreamReconnects counts stream failures (each one may have missed events); StreamError is the last.
	StreamReconnects int
	StreamError      string
}

// WriteTable writes the result as a Markdown table with a short header.
func (r Result) WriteTable(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "loadgen run %s against %s: %d msg/s for %s over %d conversations and %d senders\n\n",
		r.RunID, r.Target, r.Rate, r.Duration, r.Conversations, r.Senders)
	b.WriteString("| measure | value |\n|---|---|\n")
	row := func(k, format string, a ...any) { fmt.Fprintf(&b, "| %s | "+format+" |\n", append([]any{k}, a...)...) }
	row("sent / scheduled", "%d / %d", r.Sent, r.Scheduled)
	row("ok / failed", "%d / %d", r.OK, r.Failed)
	row("achieved rate", "%.1f msg/s (target %d)", r.AchievedRate, r.Rate)
	row("max schedule lag", "%.1f ms", Millis(r.MaxScheduleLag))
	latRow := func(name string, l Latency) {
		row(name+" p50 / p90 / p99 / max", "%.1f / %.1f / %.1f / %.1f ms (n=%d)", Millis(l.P50), Millis(l.P90), Millis(l.P99), Millis(l.Max), l.N)
	}
	latRow("SendMessage", r.Send)
	if r.Persist {
		row("persisted / unseen", "%d / %d (grace %s)", r.Persisted, r.Unseen, r.Grace)
		latRow("send→persisted", r.SendToPersisted)
		if r.Unseen > 0 {
			latRow("send→persisted, unseen as waited (lower bound)", r.SendToPersistedAll)
		}
		latRow("  accepted→stored (server clock)", r.AcceptedToStored)
		latRow("  stored→seen (server→client clock)", r.StoredToSeen)
		if r.Early > 0 {
			row("persisted before the answer", "%d (counted as 0 ms)", r.Early)
		}
		if r.UnseenChecked > 0 {
			row("unseen but stored (GetMessage)", "%d of %d checked", r.UnseenStored, r.UnseenChecked)
		}
		if r.StreamReconnects > 0 {
			row("stream reconnects", "%d (last: %s)", r.StreamReconnects, r.StreamError)
		}
	}
	for _, code := range slices.Sorted(maps.Keys(r.Errors)) {
		row("error "+code, "%d (%s)", r.Errors[code], r.ErrorSamples[code])
	}
	_, err := io.WriteString(w, b.String())
	return err
}
