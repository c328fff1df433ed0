package store

import (
	"context"
	"errors"
	"fmt"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/x/mongo/driver/topology"
)

// Errors of the store, and how to tell a failure worth retrying from one that is not: one place, used by
// the repositories, the bulk writer, the guard (retry policy and circuit breaker) and the callers that map
// them (the API to status codes, the pipeline to error classes).

// Sentinel errors of the repositories. Callers test them with errors.Is; the API maps them to status codes
// in one place.
var (
	// ErrNotFound: no such document in the caller's tenant. Another tenant's document is ErrNotFound too,
	// so a caller cannot learn that it exists.
	ErrNotFound = errors.New("not found")
	// ErrConflict: an optimistic-concurrency precondition (expected version) did not hold.
	ErrConflict = errors.New("version conflict")
	// ErrAlreadyExists: a document with the same unique key is already stored.
	ErrAlreadyExists = errors.New("already exists")
)

// notFound maps the driver's "no documents" to ErrNotFound and leaves other errors as they are.
func notFound(err error) error {
	if errors.Is(err, mongo.ErrNoDocuments) {
		return ErrNotFound
	}
	return err
}

// Error classes of the bulk writer's per-item results (test them with errors.Is). A transient error is
// worth retrying as it is (the server, the network or the write concern failed, not the document); a
// permanent one will fail the same way every time (the document itself is refused).
var (
	ErrTransient = errors.New("transient store error")
	ErrPermanent = errors.New("permanent store error")
)

// transientCodes are server error codes that say "not now" rather than "never": the retryable-write codes
// of the MongoDB drivers' specification, plus time limits and lock or write conflicts.
var transientCodes = map[int]bool{
	6:     true, // HostUnreachable
	7:     true, // HostNotFound
	24:    true, // LockTimeout
	46:    true, // LockBusy
	50:    true, // MaxTimeMSExpired
	64:    true, // WriteConcernFailed
	89:    true, // NetworkTimeout
	91:    true, // ShutdownInProgress
	112:   true, // WriteConflict
	133:   true, // FailedToSatisfyReadPreference
	189:   true, // PrimarySteppedDown
	262:   true, // ExceededTimeLimit
	9001:  true, // SocketException
	10107: true, // NotWritablePrimary
	11600: true, // InterruptedAtShutdown
	11602: true, // InterruptedDueToReplStateChange
	13435: true, // NotPrimaryNoSecondaryOk
	13436: true, // NotPrimaryOrSecondary
}

func transientCode(code int) bool { return transientCodes[code] }

// IsTransient reports whether err is worth retrying unchanged: the network, a timeout, server selection, a
// server shutting down or stepping down, a driver "retryable" label, a cancelled context, or an error
// already classified ErrTransient. Everything else (including ErrNotFound) is not.
func IsTransient(err error) bool {
	if err == nil {
		return false
	}
	switch {
	case errors.Is(err, ErrTransient):
		return true
	case errors.Is(err, ErrPermanent):
		return false
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, mongo.ErrClientDisconnected), mongo.IsTimeout(err), mongo.IsNetworkError(err):
		return true
	}
	if errors.As(err, new(topology.ServerSelectionError)) {
		return true
	}
	var le mongo.LabeledError
	if errors.As(err, &le) {
		for _, l := range []string{"RetryableWriteError", "TransientTransactionError", "ResumableChangeStreamError"} {
			if le.HasErrorLabel(l) {
				return true
			}
		}
	}
	var se mongo.ServerError
	if errors.As(err, &se) {
		for code := range transientCodes {
			if se.HasErrorCode(code) {
				return true
			}
		}
	}
	return false
}

// ErrUnavailable means the store refused the call without trying it: the MongoDB circuit breaker is open
// (or half-open and already probing). It wraps ErrTransient, so IsTransient reports it and the pipeline
// pauses consumption and retries; the API answers UNAVAILABLE.
var ErrUnavailable = fmt.Errorf("store unavailable: circuit breaker open (%w)", ErrTransient)

// Retryable reports whether an operation that failed with err may be tried again unchanged: a transient
// error (network, timeout, server selection, not primary, shutting down, a RetryableWriteError or
// TransientTransactionError label; see IsTransient), but not the caller's own cancellation or deadline,
// not an open circuit (ErrUnavailable: the point is to stop calling) and never a duplicate key.
func Retryable(err error) bool {
	switch {
	case err == nil,
		errors.Is(err, ErrUnavailable),
		errors.Is(err, context.Canceled),
		mongo.IsDuplicateKeyError(err):
		return false
	}
	return IsTransient(err)
}
