package api

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/protoconv"
	"github.com/msgplatform/platform/internal/store"
)

// StreamStartedHeader is the response header metadata StreamMessages sends once the stream is authorized
// and subscribed, before its first item. Header metadata alone does not say so: a call refused by an
// interceptor still sends the headers those set (the request id, the quota) before its error. The REST
// gateway answers 200 and starts the HTTP stream on it (gateway.StreamStartedHeader, the same name; a test
// of internal/app checks they agree).
const StreamStartedHeader = "x-stream-started"

// MaxReplay is the most persisted messages StreamMessages replays after a resume point. A client further
// behind gets FAILED_PRECONDITION and re-lists with ListMessages: a replay that long would hold the
// stream (and the live events buffered behind it) for too long.
const MaxReplay = 1000

// ResumeTooFarBehind is the PreconditionFailure violation type of a resume point with more than
// MaxReplay messages after it.
const ResumeTooFarBehind = "RESUME_POINT_TOO_FAR_BEHIND"

// replay is what a resumed StreamMessages sends before going live: the persisted messages after the
// resume point, oldest first, and the version each had when it was read, so the live events that the
// replay already covers are dropped.
type replay struct {
	msgs     []store.Message
	versions map[string]int64 // message id → version replayed
}

// loadReplay validates req's resume point and reads what follows it. It runs after the live
// subscription is open: a message persisted after this read reaches the subscription, one persisted
// before is in the replay (and its live event, if it comes too, is a duplicate the replay drops). No
// resume point: nothing to replay.
func (s *Messages) loadReplay(ctx context.Context, p auth.Principal, req *platformv1.StreamMessagesRequest) (*replay, error) {
	after := req.GetAfterMessageId()
	if after == "" {
		return &replay{}, nil
	}
	if err := envelope.CheckID(after); err != nil {
		return nil, invalid("after_message_id", "%v", err)
	}
	if _, err := s.Store.Messages.Get(ctx, p.TenantID, req.GetConversationId(), after); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, invalid("after_message_id", "not a message of this conversation")
		}
		return nil, storeError(ctx, s.Logger, "message", err)
	}
	msgs, err := s.Store.Messages.ListAfter(ctx, p.TenantID, req.GetConversationId(), after, MaxReplay+1)
	if err != nil {
		return nil, storeError(ctx, s.Logger, "messages", err)
	}
	if len(msgs) > MaxReplay {
		desc := fmt.Sprintf("more than %d messages follow after_message_id; list them with ListMessages and resume from the newest one listed", MaxReplay)
		st := status.New(codes.FailedPrecondition, desc)
		if d, err := st.WithDetails(&errdetails.PreconditionFailure{Violations: []*errdetails.PreconditionFailure_Violation{
			{Type: ResumeTooFarBehind, Subject: "after_message_id", Description: desc}}}); err == nil {
			st = d
		}
		return nil, st.Err()
	}
	r := &replay{msgs: msgs, versions: make(map[string]int64, len(msgs))}
	for _, m := range msgs {
		r.versions[m.ID] = m.Version
	}
	return r, nil
}

// send sends the replayed messages, as EVENT_TYPE_MESSAGE_PERSISTED items.
func (r *replay) send(srv grpc.ServerStreamingServer[platformv1.StreamMessagesResponse]) error {
	for _, m := range r.msgs {
		if err := srv.Send(&platformv1.StreamMessagesResponse{Type: platformv1.EventType_EVENT_TYPE_MESSAGE_PERSISTED,
			Message: protoconv.MessageToProto(m)}); err != nil {
			return err
		}
	}
	r.msgs = nil
	return nil
}

// covers reports whether the replay already showed the message of ev at ev's version or a later one:
// the live event is then a duplicate. Later changes (an edit or deletion after the replay read the
// message) are not covered.
func (r *replay) covers(ev *platformv1.Event) bool {
	m := ev.GetMessage()
	if m == nil || len(r.versions) == 0 {
		return false
	}
	v, ok := r.versions[m.GetId()]
	return ok && m.GetVersion() <= v
}
