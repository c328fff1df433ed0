// Package loadgen is a load generator for the platform's gRPC API, usable against any deployment. It
// creates conversations and members, offers SendMessage calls at a fixed rate (open loop) for a fixed
// duration, and measures SendMessage's latency and, by watching StreamMessages, how long after
// SendMessage returns each message becomes readable. services/loadgen is its command line; the
// end-to-end benchmark (internal/benchmark/e2e) runs it against an in-process platform.
package loadgen

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
)

// maxUnseenChecks and unseenCheckBudget bound the GetMessage look-ups of unseen messages after the run
// (a look-up can be slow on a struggling deployment).
const (
	maxUnseenChecks   = 20
	unseenCheckBudget = 10 * time.Second
)

// Run sets up the conversations, runs the load and returns what it measured. Progress lines (setup
// steps, then one per ProgressInterval) go to progress, which may be nil. When ctx ends mid-run the
// partial result is returned with ctx's error.
func Run(ctx context.Context, cfg Config, progress io.Writer) (Result, error) {
	c := cfg.withDefaults()
	if err := c.validate(); err != nil {
		return Result{}, fmt.Errorf("loadgen: %w", err)
	}
	if progress == nil {
		progress = io.Discard
	}
	logf := func(format string, a ...any) { fmt.Fprintf(progress, format+"\n", a...) }

	sendConns, streamConns, err := dial(c)
	if err != nil {
		return Result{}, err
	}
	defer func() {
		for _, conns := range [][]*grpc.ClientConn{sendConns, streamConns} {
			for _, cc := range conns {
				_ = cc.Close()
			}
		}
	}()
	ids, err := newIdentities(c)
	if err != nil {
		return Result{}, fmt.Errorf("loadgen: %w", err)
	}
	p := newPlan(c.Conversations, c.Senders)

	logf("loadgen %s: creating %d conversations for %d senders on %s", c.RunID, c.Conversations, len(ids.senders), c.Target)
	convIDs, err := createConversations(ctx, c, ids, platformv1.NewConversationServiceClient(sendConns[0]), p)
	if err != nil {
		return Result{}, fmt.Errorf("loadgen: setup: %w", err)
	}

	// Streams and in-flight calls end with the run.
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	tr := newTracker()
	var streamClients []platformv1.MessageServiceClient
	for _, cc := range streamConns {
		streamClients = append(streamClients, platformv1.NewMessageServiceClient(cc))
	}
	streamClient := streamClients[0]
	w := &watcher{clients: streamClients, md: ids.owner, tr: tr, onPersisted: c.OnPersisted}
	if c.Persist {
		logf("loadgen %s: opening %d message streams", c.RunID, len(convIDs))
		if err := w.start(runCtx, convIDs, c.CallTimeout); err != nil {
			return Result{}, fmt.Errorf("loadgen: %w", err)
		}
		logf("loadgen %s: warm-up: one message per conversation, waiting until each is seen persisted", c.RunID)
		if err := warmup(runCtx, c, ids, p, convIDs, streamClient, tr); err != nil {
			return Result{}, fmt.Errorf("loadgen: %w", err)
		}
	}

	s := newSender(c, ids, p, convIDs, sendConns, tr)
	res := Result{Target: c.Target, Rate: c.Rate, Duration: c.Duration, Conversations: c.Conversations,
		Senders: len(ids.senders), RunID: c.RunID, Scheduled: c.totalMessages(), Persist: c.Persist, Grace: c.Grace}
	logf("loadgen %s: sending %d messages at %d msg/s", c.RunID, res.Scheduled, c.Rate)

	start := time.Now().Add(10 * time.Millisecond)
	var phase atomic.Value
	phase.Store("send")
	stopProgress := startProgress(c.ProgressInterval, progress, start, tr, &phase)
	pc := pacer{rate: c.Rate, total: res.Scheduled, start: start, now: time.Now}
	// A target that cannot keep up holds the pacer back (MaxInFlight); past Duration + CallTimeout the
	// rest is given up on (Sent < Scheduled) rather than stretching the run without bound.
	paceCtx, stopPacing := context.WithDeadline(runCtx, start.Add(c.Duration+c.CallTimeout))
	var lag time.Duration
	res.Sent, lag = pc.run(paceCtx, s.inFlight, func(seq int, due time.Time) { s.fire(runCtx, seq, due) })
	stopPacing()
	res.MaxScheduleLag = max(lag, 0)
	s.wg.Wait()
	if last := s.lastAnswer(); last.After(start) {
		res.Elapsed = last.Sub(start)
	}

	if c.Persist && ctx.Err() == nil {
		phase.Store("drain")
		waitPersisted(ctx, tr, c.Grace)
	}
	waitEnd := time.Now()
	stopProgress()

	res.OK, res.Failed = int(tr.ok.Load()), int(tr.failed.Load())
	if res.Elapsed > 0 {
		res.AchievedRate = float64(res.OK) / res.Elapsed.Seconds()
	}
	res.Errors, res.ErrorSamples = s.errors()
	res.Send = Summarize(s.okLatencies())
	if c.Persist {
		pers := tr.persistence(waitEnd)
		res.Persisted, res.Unseen, res.Early = len(pers.sendToSeen), len(pers.unseen), pers.early
		res.SendToPersisted = Summarize(pers.sendToSeen)
		res.SendToPersistedAll = Summarize(pers.all)
		res.AcceptedToStored = Summarize(pers.acceptedToStored)
		res.StoredToSeen = Summarize(pers.storedToSeen)
		res.StreamReconnects = int(w.reconnects.Load())
		if err := w.lastError(); err != nil {
			res.StreamError = err.Error()
		}
		if ctx.Err() == nil && len(pers.unseen) > 0 {
			res.UnseenChecked, res.UnseenStored = checkUnseen(ctx, c, ids, streamClient, pers.unseen)
		}
	}
	return res, ctx.Err()
}

// streamsPerConn bounds the StreamMessages calls sharing one connection: servers and proxies commonly
// cap concurrent HTTP/2 streams per connection at 100 or so.
const streamsPerConn = 100

// dial opens c.Conns connections for the sends and, apart, enough for one stream per conversation.
func dial(c Config) (sends, streams []*grpc.ClientConn, err error) {
	creds := insecure.NewCredentials()
	if c.TLS {
		creds = credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12})
	}
	nStreams := (c.Conversations + streamsPerConn - 1) / streamsPerConn
	conns := make([]*grpc.ClientConn, 0, c.Conns+nStreams)
	for range c.Conns + nStreams {
		cc, err := grpc.NewClient(c.Target, grpc.WithTransportCredentials(creds))
		if err != nil {
			for _, open := range conns {
				_ = open.Close()
			}
			return nil, nil, fmt.Errorf("loadgen: dial %s: %w", c.Target, err)
		}
		conns = append(conns, cc)
	}
	return conns[:c.Conns], conns[c.Conns:], nil
}

// warmup sends one message per conversation and waits until each is seen persisted: the pipeline's
// consumer group has joined and every stream delivers, so the measured phase does not include start-up.
func warmup(ctx context.Context, c Config, ids identities, p plan, convIDs []string, client platformv1.MessageServiceClient, tr *tracker) error {
	members := p.members(len(convIDs))
	sent := make([]string, len(convIDs))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(setupWorkers)
	for i, conv := range convIDs {
		g.Go(func() error {
			cctx, cancel := context.WithTimeout(withOutgoing(gctx, ids.senders[members[i][0]]), c.CallTimeout)
			defer cancel()
			resp, err := client.SendMessage(cctx, &platformv1.SendMessageRequest{ConversationId: conv, Body: "loadgen warm-up " + c.RunID})
			if err != nil {
				return fmt.Errorf("warm-up send to %s: %w", conv, err)
			}
			sent[i] = resp.GetMessageId()
			tr.returned(sent[i], conv, time.Now(), time.Time{}, true)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	deadline := time.Now().Add(c.WarmupTimeout)
	for {
		missing := 0
		for _, id := range sent {
			if !tr.isSeen(id) {
				missing++
			}
		}
		if missing == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("warm-up: %d of %d messages not seen persisted after %s (is the pipeline running?)", missing, len(sent), c.WarmupTimeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitPersisted waits until every OK message was seen persisted, or grace passes.
func waitPersisted(ctx context.Context, tr *tracker, grace time.Duration) {
	deadline := time.Now().Add(grace)
	for tr.persisted.Load() < tr.ok.Load() && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// checkUnseen looks up some of the unseen messages to tell a missed event from a message not stored.
func checkUnseen(ctx context.Context, c Config, ids identities, client platformv1.MessageServiceClient, unseen []msgRef) (checked, stored int) {
	ctx, cancel := context.WithTimeout(ctx, unseenCheckBudget)
	defer cancel()
	for _, m := range unseen[:min(len(unseen), maxUnseenChecks)] {
		if ctx.Err() != nil {
			break
		}
		cctx, cancel := context.WithTimeout(withOutgoing(ctx, ids.owner), c.CallTimeout)
		_, err := client.GetMessage(cctx, &platformv1.GetMessageRequest{ConversationId: m.conversation, MessageId: m.id})
		cancel()
		checked++
		if err == nil {
			stored++
		}
	}
	return checked, stored
}

// sender makes the measured SendMessage calls.
type sender struct {
	c        Config
	ids      identities
	plan     plan
	convIDs  []string
	clients  []platformv1.MessageServiceClient
	tr       *tracker
	inFlight chan struct{}
	filler   string
	wg       sync.WaitGroup

	// latency[seq] and ok[seq] are written by seq's call only and read after wg.Wait.
	latency []time.Duration
	ok      []bool

	mu      sync.Mutex
	errs    map[string]int
	samples map[string]string
	last    time.Time
}

func newSender(c Config, ids identities, p plan, convIDs []string, conns []*grpc.ClientConn, tr *tracker) *sender {
	s := &sender{c: c, ids: ids, plan: p, convIDs: convIDs, tr: tr, inFlight: make(chan struct{}, c.MaxInFlight),
		latency: make([]time.Duration, c.totalMessages()), ok: make([]bool, c.totalMessages()),
		errs: map[string]int{}, samples: map[string]string{},
		filler: strings.Repeat("the quick brown fox jumps over the lazy dog ", c.BodyBytes/44+1)}
	for _, cc := range conns {
		s.clients = append(s.clients, platformv1.NewMessageServiceClient(cc))
	}
	return s
}

func (s *sender) body(seq, sender int) string {
	b := fmt.Sprintf("loadgen %s message %d from s%d: ", s.c.RunID, seq, sender)
	if n := s.c.BodyBytes - len(b); n > 0 {
		b += s.filler[:n]
	}
	return b
}

// fire starts message seq's call; the pacer took its in-flight slot, which the call gives back.
func (s *sender) fire(ctx context.Context, seq int, due time.Time) {
	s.tr.sent.Add(1)
	s.tr.inFlight.Add(1)
	s.wg.Go(func() {
		defer func() { <-s.inFlight }()
		defer s.tr.inFlight.Add(-1)
		pr := s.plan.forMessage(seq)
		conv := s.convIDs[pr.conversation]
		req := &platformv1.SendMessageRequest{ConversationId: conv, Body: s.body(seq, pr.sender),
			Metadata: map[string]string{"source": "loadgen"}}
		if !s.c.NoClientMessageID {
			req.ClientMessageId = fmt.Sprintf("lg-%s-%d", s.c.RunID, seq)
		}
		cctx, cancel := context.WithTimeout(withOutgoing(ctx, s.ids.senders[pr.sender]), s.c.CallTimeout)
		resp, err := s.clients[seq%len(s.clients)].SendMessage(cctx, req)
		cancel()
		now := time.Now()
		s.latency[seq] = now.Sub(due)
		s.mu.Lock()
		if now.After(s.last) {
			s.last = now
		}
		if err != nil {
			code := status.Code(err).String()
			if s.errs[code] == 0 {
				s.samples[code] = status.Convert(err).Message()
			}
			s.errs[code]++
		}
		s.mu.Unlock()
		if err != nil {
			s.tr.failed.Add(1)
			return
		}
		s.ok[seq] = true
		s.tr.ok.Add(1)
		var accepted time.Time
		if resp.GetCreateTime() != nil {
			accepted = resp.GetCreateTime().AsTime()
		}
		if s.tr.returned(resp.GetMessageId(), conv, now, accepted, false) && s.c.OnPersisted != nil {
			s.c.OnPersisted(conv, resp.GetMessageId())
		}
	})
}

func (s *sender) lastAnswer() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

func (s *sender) okLatencies() []time.Duration {
	out := make([]time.Duration, 0, len(s.latency))
	for seq, ok := range s.ok {
		if ok {
			out = append(out, s.latency[seq])
		}
	}
	return out
}

func (s *sender) errors() (map[string]int, map[string]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.errs, s.samples
}

// startProgress writes a progress line every interval until the returned stop is called (which writes a
// last one).
func startProgress(interval time.Duration, w io.Writer, start time.Time, tr *tracker, phase *atomic.Value) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(interval)
		defer t.Stop()
		lastSent, lastAt := int64(0), start
		line := func(now time.Time) {
			sent := tr.sent.Load()
			rate := 0.0
			if d := now.Sub(lastAt).Seconds(); d > 0 {
				rate = float64(sent-lastSent) / d
			}
			lastSent, lastAt = sent, now
			fmt.Fprintln(w, progressLine(phase.Load().(string), now.Sub(start), sent, tr.ok.Load(), tr.failed.Load(), tr.persisted.Load(), tr.inFlight.Load(), rate))
		}
		for {
			select {
			case <-done:
				line(time.Now())
				return
			case now := <-t.C:
				line(now)
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(done)
			<-finished
		})
	}
}

func progressLine(phase string, elapsed time.Duration, sent, ok, failed, persisted, inFlight int64, rate float64) string {
	return fmt.Sprintf("[%7.1fs] %-5s sent=%d ok=%d failed=%d persisted=%d in_flight=%d rate=%.0f/s",
		max(elapsed, 0).Seconds(), phase, sent, ok, failed, persisted, inFlight, rate)
}
