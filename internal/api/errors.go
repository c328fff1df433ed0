// Package api implements the platform.v1 ConversationService and MessageService handlers: it validates
// requests, calls the store and the Kafka producer, and maps domain errors to gRPC status codes in one
// place. Access control happened before a handler runs (internal/authz).
package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/store"
)

// violations collects field errors for one INVALID_ARGUMENT answer with google.rpc.BadRequest details.
type violations []*errdetails.BadRequest_FieldViolation

func (v *violations) add(field, format string, args ...any) {
	*v = append(*v, &errdetails.BadRequest_FieldViolation{Field: field, Description: fmt.Sprintf(format, args...)})
}

func (v violations) err() error {
	if len(v) == 0 {
		return nil
	}
	msg := "invalid " + v[0].GetField() + ": " + v[0].GetDescription()
	if len(v) > 1 {
		msg = fmt.Sprintf("%s (and %d more)", msg, len(v)-1)
	}
	st, err := status.New(codes.InvalidArgument, msg).WithDetails(&errdetails.BadRequest{FieldViolations: v})
	if err != nil {
		return status.Error(codes.InvalidArgument, msg)
	}
	return st.Err()
}

func invalid(field, format string, args ...any) error {
	var v violations
	v.add(field, format, args...)
	return v.err()
}

// storeError maps a store error to a status; what is not a domain outcome is logged and hidden. A
// deadline or cancellation is the caller's only when the caller's own context ended; any other failure
// the store calls transient (store.IsTransient: network, server selection, timeouts, an open circuit) is
// UNAVAILABLE, so clients retry it.
func storeError(ctx context.Context, logger *slog.Logger, what string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, store.ErrNotFound):
		return status.Errorf(codes.NotFound, "%s not found", what)
	case errors.Is(err, store.ErrConflict):
		return status.Errorf(codes.Aborted, "%s was changed concurrently (version mismatch); read it again and retry", what)
	case errors.Is(err, store.ErrBadPageToken):
		return invalid("page_token", "malformed or expired page token")
	case errors.Is(ctx.Err(), context.Canceled):
		return status.Error(codes.Canceled, "request cancelled")
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded")
	case store.IsTransient(err):
		logger.WarnContext(ctx, "store unavailable", "what", what, "error", err)
		return status.Error(codes.Unavailable, "storage is unavailable; retry later")
	default:
		logger.ErrorContext(ctx, "store error", "what", what, "error", err)
		return status.Error(codes.Internal, "internal error")
	}
}

// principal returns the authenticated caller; the interceptor guarantees one on every protected RPC.
func principal(ctx context.Context) (auth.Principal, error) {
	p, ok := auth.PrincipalFrom(ctx)
	if !ok {
		return auth.Principal{}, status.Error(codes.Unauthenticated, "no authenticated caller")
	}
	return p, nil
}

// pageSize validates a requested page size: 0 means the default, negatives are invalid.
func pageSize(n int32) (int, error) {
	if n < 0 {
		return 0, invalid("page_size", "must not be negative")
	}
	return store.PageSize(int(n)), nil
}

func isNotFound(err error) bool { return errors.Is(err, store.ErrNotFound) }

func itoa(i int) string { return fmt.Sprint(i) }
