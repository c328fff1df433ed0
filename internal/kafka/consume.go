package kafka

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// DrainContext returns a context for the batch in hand: not cancelled when ctx is (the batch finishes on
// shutdown), but drain after that.
func DrainContext(ctx context.Context, drain time.Duration) (context.Context, context.CancelFunc) {
	bctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	var mu sync.Mutex
	var timer *time.Timer
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		timer = time.AfterFunc(drain, cancel)
	})
	return bctx, func() {
		stop()
		mu.Lock()
		if timer != nil {
			timer.Stop()
		}
		mu.Unlock()
		cancel()
	}
}

// Logger sends franz-go's warnings and errors to slog; its info-level chatter (every assignment and
// metadata refresh) stays out of the service logs.
func Logger(l *slog.Logger) kgo.Logger { return kgoLogger{l} }

type kgoLogger struct{ l *slog.Logger }

func (kgoLogger) Level() kgo.LogLevel { return kgo.LogLevelWarn }

func (k kgoLogger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	switch level {
	case kgo.LogLevelError:
		k.l.Error(msg, keyvals...)
	case kgo.LogLevelWarn:
		k.l.Warn(msg, keyvals...)
	default:
		k.l.Info(msg, keyvals...)
	}
}

// PollLoop is the consumer loop of a group client built with kgo.BlockRebalanceOnPoll: poll at most max
// records, hand a non-empty batch to handle, then allow the rebalance the poll held back, so a partition
// is never revoked while its batch is in hand. It returns nil when ctx ends or the client is closed, and
// handle's error otherwise. Fetch errors are logged, and a loop that only sees errors waits a second.
func PollLoop(ctx context.Context, client *kgo.Client, max int, logger *slog.Logger, handle func(context.Context, kgo.Fetches) error) error {
	for {
		fetches := client.PollRecords(ctx, max)
		if fetches.IsClientClosed() {
			return nil
		}
		fetchErrs := 0
		fetches.EachError(func(topic string, partition int32, err error) {
			if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
				return
			}
			fetchErrs++
			logger.ErrorContext(ctx, "fetch error", "topic", topic, "partition", partition, "error", err)
		})
		if fetches.NumRecords() == 0 {
			client.AllowRebalance()
			if ctx.Err() != nil {
				return nil
			}
			if fetchErrs > 0 { // do not spin on a persistent fetch error
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
			continue
		}
		err := handle(ctx, fetches)
		client.AllowRebalance()
		if err != nil {
			return err
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}
