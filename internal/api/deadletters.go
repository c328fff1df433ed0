package api

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/audit"
	"github.com/msgplatform/platform/internal/auth"
	"github.com/msgplatform/platform/internal/authz"
	"github.com/msgplatform/platform/internal/dlq"
	"github.com/msgplatform/platform/internal/store"
)

// Limits of DeadLetterService requests.
const (
	maxDeadLetterIDLen   = 300 // bytes; ids are "<topic>-<partition>-<offset>-<attempts>", topics at most 249
	maxDLQFilterFieldLen = 256 // bytes of tenant_id, stage, error_contains
)

// DeadLetterRetrier republishes dead letters (dlq.Retrier).
type DeadLetterRetrier interface {
	RetryNow(ctx context.Context, id, actor string) (store.DeadLetter, error)
	RetryMatching(ctx context.Context, f store.DeadLetterFilter, actor string) (int64, error)
}

// DeadLetterDeps are what the DeadLetterService needs.
type DeadLetterDeps struct {
	Store   *store.DeadLetters
	Retrier DeadLetterRetrier
	// Metrics counts purges (platform_dlq_purged_total); retries are counted by the retrier. nil: not counted.
	Metrics *dlq.Metrics
	Logger  *slog.Logger
	Now     func() time.Time // nil: time.Now
}

// DeadLetters implements platform.v1.DeadLetterService. The access interceptor already required an
// operator role (dlq.read / dlq.write); the handlers confine `operator` to the dead letters of its own
// tenant (another tenant's entry, or one of no tenant, is NOT_FOUND like an unknown id) and let
// `platform_operator` reach every tenant (authz.ReachesAllTenants). Every call is recorded by the audit
// interceptor; the handlers add what only they know (whose entry it was, how many a purge removed) with
// audit.Add.
type DeadLetters struct {
	platformv1.UnimplementedDeadLetterServiceServer
	d DeadLetterDeps
}

// NewDeadLetters returns the DeadLetterService handler.
func NewDeadLetters(d DeadLetterDeps) *DeadLetters {
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	return &DeadLetters{d: d}
}

// ListDeadLetters lists dead letters matching the filter, newest failure first.
func (s *DeadLetters) ListDeadLetters(ctx context.Context, req *platformv1.ListDeadLettersRequest) (*platformv1.ListDeadLettersResponse, error) {
	var v violations
	f := dlqFilter(&v, "filter", req.GetFilter())
	size, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	scope, err := dlqScope(ctx, authz.DLQRead)
	if err != nil {
		return nil, err
	}
	if err := scope.filter(ctx, &f); err != nil {
		return nil, err
	}
	items, next, err := s.d.Store.List(ctx, f, size, req.GetPageToken())
	if err != nil {
		return nil, storeError(ctx, s.d.Logger, "dead letters", err)
	}
	audit.Add(ctx, slog.Int("listed", len(items)))
	out := make([]*platformv1.DeadLetter, len(items))
	for i, d := range items {
		out[i] = deadLetterProto(d)
	}
	return &platformv1.ListDeadLettersResponse{DeadLetters: out, NextPageToken: next}, nil
}

// GetDeadLetter returns one dead letter with its payload (as text too when it is UTF-8).
func (s *DeadLetters) GetDeadLetter(ctx context.Context, req *platformv1.GetDeadLetterRequest) (*platformv1.GetDeadLetterResponse, error) {
	if err := validDeadLetterID(req.GetId()); err != nil {
		return nil, err
	}
	scope, err := dlqScope(ctx, authz.DLQRead)
	if err != nil {
		return nil, err
	}
	d, err := s.get(ctx, scope, req.GetId())
	if err != nil {
		return nil, storeError(ctx, s.d.Logger, "dead letter "+req.GetId(), err)
	}
	return &platformv1.GetDeadLetterResponse{DeadLetter: deadLetterProto(d)}, nil
}

// RetryDeadLetter republishes one dead letter to its original topic now, whatever its schedule.
func (s *DeadLetters) RetryDeadLetter(ctx context.Context, req *platformv1.RetryDeadLetterRequest) (*platformv1.RetryDeadLetterResponse, error) {
	if err := validDeadLetterID(req.GetId()); err != nil {
		return nil, err
	}
	scope, err := dlqScope(ctx, authz.DLQWrite)
	if err != nil {
		return nil, err
	}
	id := req.GetId()
	if scope.tenant != "" {
		// The tenant of an entry never changes, so checking it before the retry is enough.
		if _, err := s.get(ctx, scope, id); err != nil {
			return nil, s.retryError(ctx, id, err)
		}
	}
	d, err := s.d.Retrier.RetryNow(ctx, id, actor(scope.p))
	if err != nil {
		return nil, s.retryError(ctx, id, err)
	}
	audit.Add(ctx, slog.String("topic", d.OriginalTopic), slog.Int("attempts", d.Attempts))
	return &platformv1.RetryDeadLetterResponse{DeadLetter: deadLetterProto(d)}, nil
}

// RetryDeadLetters republishes every dead letter matching the filter (never purged ones; without a status,
// pending and parked ones) and returns how many.
func (s *DeadLetters) RetryDeadLetters(ctx context.Context, req *platformv1.RetryDeadLettersRequest) (*platformv1.RetryDeadLettersResponse, error) {
	var v violations
	f := dlqFilter(&v, "filter", req.GetFilter())
	if req.GetFilter().GetStatus() == platformv1.DeadLetterStatus_DEAD_LETTER_STATUS_PURGED {
		v.add("filter.status", "purged dead letters are never retried")
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	scope, err := dlqScope(ctx, authz.DLQWrite)
	if err != nil {
		return nil, err
	}
	if err := scope.filter(ctx, &f); err != nil {
		return nil, err
	}
	n, err := s.d.Retrier.RetryMatching(ctx, f, actor(scope.p))
	audit.Add(ctx, slog.Int64("requeued", n))
	if err != nil {
		if errors.Is(err, dlq.ErrRepublish) {
			return nil, status.Errorf(codes.Unavailable,
				"%d dead letters requeued, others could not be republished (Kafka unavailable); call again to requeue the rest", n)
		}
		return nil, storeError(ctx, s.d.Logger, "dead letters", err)
	}
	return &platformv1.RetryDeadLettersResponse{RequeuedCount: n}, nil
}

// PurgeDeadLetter marks one dead letter purged and drops its payload bytes; its metadata stays (audit
// trail). Purging a purged entry succeeds and changes nothing.
func (s *DeadLetters) PurgeDeadLetter(ctx context.Context, req *platformv1.PurgeDeadLetterRequest) (*platformv1.PurgeDeadLetterResponse, error) {
	if err := validDeadLetterID(req.GetId()); err != nil {
		return nil, err
	}
	scope, err := dlqScope(ctx, authz.DLQWrite)
	if err != nil {
		return nil, err
	}
	id := req.GetId()
	if scope.tenant != "" {
		if _, err := s.get(ctx, scope, id); err != nil {
			return nil, storeError(ctx, s.d.Logger, "dead letter "+id, err)
		}
	}
	_, purged, err := s.d.Store.Purge(ctx, id, actor(scope.p))
	if err != nil {
		if errors.Is(err, store.ErrDeadLetterBusy) || errors.Is(err, store.ErrConflict) {
			return nil, status.Errorf(codes.Aborted, "dead letter %s is being retried right now; try again", id)
		}
		return nil, storeError(ctx, s.d.Logger, "dead letter "+id, err)
	}
	if purged && s.d.Metrics != nil {
		s.d.Metrics.Purged.Inc()
	}
	audit.Add(ctx, slog.Bool("already_purged", !purged))
	return &platformv1.PurgeDeadLetterResponse{}, nil
}

// PurgeDeadLetters purges every dead letter matching a non-empty filter, or all of them with all=true.
func (s *DeadLetters) PurgeDeadLetters(ctx context.Context, req *platformv1.PurgeDeadLettersRequest) (*platformv1.PurgeDeadLettersResponse, error) {
	var v violations
	f := dlqFilter(&v, "filter", req.GetFilter())
	switch {
	case req.GetAll() && !f.IsZero():
		v.add("all", "all=true purges every dead letter; do not combine it with a filter")
	case !req.GetAll() && f.IsZero():
		v.add("filter", "set at least one filter field, or all=true to purge every dead letter")
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	scope, err := dlqScope(ctx, authz.DLQWrite)
	if err != nil {
		return nil, err
	}
	// After the checks above: all=true of an operator purges every dead letter of its tenant.
	if err := scope.filter(ctx, &f); err != nil {
		return nil, err
	}
	n, err := s.d.Store.PurgeMatching(ctx, f, actor(scope.p))
	if err != nil {
		return nil, storeError(ctx, s.d.Logger, "dead letters", err)
	}
	if s.d.Metrics != nil {
		s.d.Metrics.Purged.Add(float64(n))
	}
	audit.Add(ctx, slog.Int64("purged", n))
	return &platformv1.PurgeDeadLettersResponse{PurgedCount: n}, nil
}

// GetDeadLetterStats counts dead letters by status, stage and error class.
func (s *DeadLetters) GetDeadLetterStats(ctx context.Context, req *platformv1.GetDeadLetterStatsRequest) (*platformv1.GetDeadLetterStatsResponse, error) {
	var v violations
	validDLQText(&v, "tenant_id", req.GetTenantId())
	if err := v.err(); err != nil {
		return nil, err
	}
	scope, err := dlqScope(ctx, authz.DLQRead)
	if err != nil {
		return nil, err
	}
	// Stats are per tenant for an operator (its own, with or without tenant_id); platform_operator counts
	// one tenant or, without tenant_id, every entry, those of no tenant included.
	f := store.DeadLetterFilter{TenantID: req.GetTenantId()}
	if err := scope.filter(ctx, &f); err != nil {
		return nil, err
	}
	st, err := s.d.Store.Stats(ctx, f.TenantID)
	if err != nil {
		return nil, storeError(ctx, s.d.Logger, "dead letter stats", err)
	}
	resp := &platformv1.GetDeadLetterStatsResponse{
		Total:        st.Total,
		ByStatus:     map[string]int64{},
		ByStage:      st.ByStage,
		ByErrorClass: map[string]int64{},
	}
	for _, ps := range []platformv1.DeadLetterStatus{
		platformv1.DeadLetterStatus_DEAD_LETTER_STATUS_PENDING_RETRY, platformv1.DeadLetterStatus_DEAD_LETTER_STATUS_PARKED,
		platformv1.DeadLetterStatus_DEAD_LETTER_STATUS_RETRIED, platformv1.DeadLetterStatus_DEAD_LETTER_STATUS_PURGED,
	} {
		resp.ByStatus[ps.String()] = 0
	}
	for k, n := range st.ByStatus {
		resp.ByStatus[statusProto(k).String()] += n
	}
	resp.ByErrorClass[platformv1.ErrorClass_ERROR_CLASS_PERMANENT.String()] = 0
	resp.ByErrorClass[platformv1.ErrorClass_ERROR_CLASS_TRANSIENT.String()] = 0
	for class, n := range st.ByErrorClass {
		resp.ByErrorClass[classProto(class).String()] += n
	}
	if st.OldestPending != nil {
		resp.OldestPendingAge = durationpb.New(max(s.d.Now().Sub(*st.OldestPending), 0))
	}
	return resp, nil
}

// retryError maps the errors of a retry to statuses.
func (s *DeadLetters) retryError(ctx context.Context, id string, err error) error {
	switch {
	case errors.Is(err, store.ErrDeadLetterPurged):
		return status.Errorf(codes.FailedPrecondition, "dead letter %s is purged; purged dead letters are never retried", id)
	case errors.Is(err, dlq.ErrNotRetryable):
		return status.Error(codes.FailedPrecondition, err.Error()) // names the entry and why (retry target, truncated payload)
	case errors.Is(err, store.ErrDeadLetterBusy), errors.Is(err, store.ErrConflict):
		return status.Errorf(codes.Aborted, "dead letter %s is being retried right now; try again", id)
	case errors.Is(err, dlq.ErrRepublish):
		return status.Errorf(codes.Unavailable, "dead letter %s could not be republished (Kafka unavailable); it is unchanged, retry later", id)
	default:
		return storeError(ctx, s.d.Logger, "dead letter "+id, err)
	}
}

// scope is how far a dead-letter call reaches: the caller, and the one tenant it is confined to ("" when
// it reaches every tenant).
type scope struct {
	p      auth.Principal
	tenant string
}

// dlqScope returns the scope of the caller of a call needing perm: every tenant when one of its roles
// reaches all (platform_operator), else its own tenant (operator).
func dlqScope(ctx context.Context, perm authz.Permission) (scope, error) {
	p, err := principal(ctx)
	if err != nil {
		return scope{}, err
	}
	if authz.ReachesAllTenants(p.Roles, perm) {
		audit.Add(ctx, slog.String("scope", "all tenants"))
		return scope{p: p}, nil
	}
	if p.TenantID == "" {
		// Never confine to "": an empty tenant filter matches every tenant.
		return scope{}, status.Error(codes.PermissionDenied, "a tenant operator's token must name its tenant")
	}
	audit.Add(ctx, slog.String("scope", "tenant "+p.TenantID))
	return scope{p: p, tenant: p.TenantID}, nil
}

// filter confines f to the scope's tenant: without a tenant_id, an operator's filter (list, stats, retry
// and purge by filter, purge all) takes its own tenant. Naming another tenant is PERMISSION_DENIED: it
// reveals nothing about that tenant's entries (the answer is the same whether it has any), and an
// operator is not left wondering why the list is empty.
func (sc scope) filter(ctx context.Context, f *store.DeadLetterFilter) error {
	if sc.tenant != "" {
		if f.TenantID != "" && f.TenantID != sc.tenant {
			return status.Errorf(codes.PermissionDenied,
				"role %s reaches only the dead letters of its own tenant %s; %s reaches every tenant",
				authz.PlatformOperator, sc.tenant, authz.PlatformGlobalOperator)
		}
		f.TenantID = sc.tenant
	}
	audit.Add(ctx, slog.Attr{Key: "filter", Value: filterAttrs(*f)})
	return nil
}

// get returns the entry id if the scope reaches it; an entry of another tenant (or of none) is
// store.ErrNotFound, exactly like an unknown id, so its existence never leaks.
func (s *DeadLetters) get(ctx context.Context, sc scope, id string) (store.DeadLetter, error) {
	d, err := s.d.Store.Get(ctx, id)
	if err != nil {
		return store.DeadLetter{}, err
	}
	if sc.tenant != "" && d.TenantID != sc.tenant {
		// The caller gets NOT_FOUND; the audit trail (never shown to callers) says whose entry it was.
		audit.Add(ctx, slog.String("dead_letter_tenant", d.TenantID), slog.Bool("out_of_scope", true))
		return store.DeadLetter{}, fmt.Errorf("dead letter %s of another tenant: %w", id, store.ErrNotFound)
	}
	audit.Add(ctx, slog.String("dead_letter_tenant", d.TenantID), slog.String("stage", d.Stage))
	return d, nil
}

// actor is how an operator is recorded on the entries they change.
func actor(p auth.Principal) string { return "operator " + p.Subject + " (tenant " + p.TenantID + ")" }

func filterAttrs(f store.DeadLetterFilter) slog.Value {
	statuses := make([]string, len(f.Statuses))
	for i, s := range f.Statuses {
		statuses[i] = string(s)
	}
	return slog.GroupValue(
		slog.String("tenant_id", f.TenantID), slog.String("stage", f.Stage), slog.String("status", strings.Join(statuses, ",")),
		slog.String("error_contains", f.ErrorContains), slog.String("error_class", f.ErrorClass),
	)
}

func validDeadLetterID(id string) error {
	switch {
	case id == "":
		return invalid("id", "must not be empty")
	case len(id) > maxDeadLetterIDLen:
		return invalid("id", "at most %d bytes", maxDeadLetterIDLen)
	}
	return nil
}

func validDLQText(v *violations, field, s string) {
	switch {
	case len(s) > maxDLQFilterFieldLen:
		v.add(field, "at most %d bytes", maxDLQFilterFieldLen)
	case !utf8.ValidString(s):
		v.add(field, "must be UTF-8")
	}
}

// dlqFilter validates a filter and turns it into the store's.
func dlqFilter(v *violations, field string, f *platformv1.DeadLetterFilter) store.DeadLetterFilter {
	validDLQText(v, field+".tenant_id", f.GetTenantId())
	validDLQText(v, field+".stage", f.GetStage())
	validDLQText(v, field+".error_contains", f.GetErrorContains())
	out := store.DeadLetterFilter{TenantID: f.GetTenantId(), Stage: f.GetStage(), ErrorContains: f.GetErrorContains()}
	switch f.GetStatus() {
	case platformv1.DeadLetterStatus_DEAD_LETTER_STATUS_UNSPECIFIED:
	case platformv1.DeadLetterStatus_DEAD_LETTER_STATUS_PENDING_RETRY:
		// An entry being republished right now is still waiting, as far as operators are concerned.
		out.Statuses = []store.DeadLetterStatus{store.DeadLetterPendingRetry, store.DeadLetterRetrying}
	case platformv1.DeadLetterStatus_DEAD_LETTER_STATUS_PARKED:
		out.Statuses = []store.DeadLetterStatus{store.DeadLetterParked}
	case platformv1.DeadLetterStatus_DEAD_LETTER_STATUS_RETRIED:
		out.Statuses = []store.DeadLetterStatus{store.DeadLetterRetried}
	case platformv1.DeadLetterStatus_DEAD_LETTER_STATUS_PURGED:
		out.Statuses = []store.DeadLetterStatus{store.DeadLetterPurged}
	default:
		v.add(field+".status", "unknown status %d", f.GetStatus())
	}
	switch f.GetErrorClass() {
	case platformv1.ErrorClass_ERROR_CLASS_UNSPECIFIED:
	case platformv1.ErrorClass_ERROR_CLASS_PERMANENT:
		out.ErrorClass = dlq.ClassPermanent
	case platformv1.ErrorClass_ERROR_CLASS_TRANSIENT:
		out.ErrorClass = dlq.ClassTransient
	default:
		v.add(field+".error_class", "unknown error class %d", f.GetErrorClass())
	}
	return out
}

func statusProto(s store.DeadLetterStatus) platformv1.DeadLetterStatus {
	switch s {
	case store.DeadLetterPendingRetry, store.DeadLetterRetrying:
		return platformv1.DeadLetterStatus_DEAD_LETTER_STATUS_PENDING_RETRY
	case store.DeadLetterParked:
		return platformv1.DeadLetterStatus_DEAD_LETTER_STATUS_PARKED
	case store.DeadLetterRetried:
		return platformv1.DeadLetterStatus_DEAD_LETTER_STATUS_RETRIED
	case store.DeadLetterPurged:
		return platformv1.DeadLetterStatus_DEAD_LETTER_STATUS_PURGED
	default:
		return platformv1.DeadLetterStatus_DEAD_LETTER_STATUS_UNSPECIFIED
	}
}

func classProto(c string) platformv1.ErrorClass {
	switch c {
	case dlq.ClassPermanent:
		return platformv1.ErrorClass_ERROR_CLASS_PERMANENT
	case dlq.ClassTransient:
		return platformv1.ErrorClass_ERROR_CLASS_TRANSIENT
	default:
		return platformv1.ErrorClass_ERROR_CLASS_UNSPECIFIED
	}
}

// deadLetterProto renders an entry. Header values that are not UTF-8 are shown as "base64:<value>" (proto
// strings must be UTF-8); a repeated header key shows its last value.
func deadLetterProto(d store.DeadLetter) *platformv1.DeadLetter {
	out := &platformv1.DeadLetter{
		Id:                d.ID,
		OriginalTopic:     d.OriginalTopic,
		OriginalPartition: d.OriginalPartition,
		OriginalOffset:    d.OriginalOffset,
		Key:               d.Key,
		Payload:           d.Payload,
		TenantId:          utf8Text(d.TenantID),
		Stage:             utf8Text(d.Stage),
		Error:             utf8Text(d.Error),
		ErrorClass:        classProto(d.ErrorClass),
		Attempts:          int32(min(d.Attempts, 1<<31-1)),
		Status:            statusProto(d.Status),
		FirstFailureTime:  timestamppb.New(d.FirstFailureTime),
		LastFailureTime:   timestamppb.New(d.LastFailureTime),
		UpdateTime:        timestamppb.New(d.UpdateTime),
		MessageId:         utf8Text(d.MessageID),
		PayloadTruncated:  d.PayloadTruncated,
		OriginalSize:      d.OriginalSize,
		OriginalSha256:    utf8Text(d.OriginalSHA256),
	}
	if len(d.Payload) > 0 && utf8.Valid(d.Payload) {
		out.PayloadText = string(d.Payload)
	}
	if len(d.Headers) > 0 {
		out.Headers = make(map[string]string, len(d.Headers))
		for _, h := range d.Headers {
			v := string(h.Value)
			if !utf8.Valid(h.Value) {
				v = "base64:" + base64.StdEncoding.EncodeToString(h.Value)
			}
			out.Headers[utf8Text(h.Key)] = v
		}
	}
	if out.Status == platformv1.DeadLetterStatus_DEAD_LETTER_STATUS_PENDING_RETRY && d.NextRetryTime != nil {
		out.NextRetryTime = timestamppb.New(*d.NextRetryTime)
	}
	return out
}

func utf8Text(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }
