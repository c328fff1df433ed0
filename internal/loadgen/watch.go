package loadgen

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	"google.golang.org/grpc/metadata"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
)

// watcher reads every conversation's StreamMessages as the owner and records when each message's
// persisted event arrives. That event is the cheapest honest "readable" signal: the pipeline's notify
// stage publishes it only for records the persist stage stored, after the bulk insert was acknowledged
// (internal/pipeline: Stages runs persist before notify, and runner.process hands a stage only the items
// no earlier stage failed; persistStage.Process returns after store.BulkWriter.Write has the
// InsertMany's answer). The gateway then forwards it to the stream after re-checking the reader's access.
// GetMessage and ListMessages can return the message a little earlier (from the insert's acknowledgement,
// before the event is published and fanned out), so the measure errs on the slow side, never the fast.
type watcher struct {
	clients     []platformv1.MessageServiceClient // conversation i reads through clients[i % len]
	md          metadata.MD
	tr          *tracker
	onPersisted func(conversationID, messageID string)

	reconnects atomic.Int64
	mu         sync.Mutex
	lastErr    error
}

// start opens one stream per conversation and returns once every stream is established (the server sent
// its headers, which it does after subscribing), or the first error. The streams reconnect on failure
// until ctx ends; events published while one is down are missed and show as unseen.
func (w *watcher) start(ctx context.Context, conversations []string, timeout time.Duration) error {
	ready := make(chan error, len(conversations))
	for i, conv := range conversations {
		go w.watch(ctx, w.clients[i%len(w.clients)], conv, ready)
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for range conversations {
		select {
		case err := <-ready:
			if err != nil {
				return err
			}
		case <-deadline.C:
			return fmt.Errorf("open message streams: not all %d established within %s", len(conversations), timeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (w *watcher) watch(ctx context.Context, client platformv1.MessageServiceClient, conv string, ready chan<- error) {
	first := true
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval = 100*time.Millisecond, 2*time.Second
	for {
		st, err := client.StreamMessages(withOutgoing(ctx, w.md), &platformv1.StreamMessagesRequest{ConversationId: conv})
		if err == nil {
			_, err = st.Header()
		}
		if err == nil {
			if first {
				ready <- nil
				first = false
			}
			bo.Reset()
			err = w.read(conv, st)
		}
		if ctx.Err() != nil {
			return
		}
		err = fmt.Errorf("stream of conversation %s: %w", conv, err)
		if first {
			ready <- err
			first = false
		}
		w.reconnects.Add(1)
		w.mu.Lock()
		w.lastErr = err
		w.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(bo.NextBackOff()):
		}
	}
}

type messageStream interface {
	Recv() (*platformv1.StreamMessagesResponse, error)
}

func (w *watcher) read(conv string, st messageStream) error {
	for {
		resp, err := st.Recv()
		if err != nil {
			return err
		}
		if resp.GetType() != platformv1.EventType_EVENT_TYPE_MESSAGE_PERSISTED {
			continue
		}
		at := time.Now()
		m := resp.GetMessage()
		var stored time.Time
		if m.GetPersistTime() != nil {
			stored = m.GetPersistTime().AsTime()
		}
		if w.tr.seen(m.GetId(), at, stored) && w.onPersisted != nil {
			w.onPersisted(conv, m.GetId())
		}
	}
}

// lastError is the most recent stream failure, if any.
func (w *watcher) lastError() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lastErr
}
