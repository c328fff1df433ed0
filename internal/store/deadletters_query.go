package store

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// DeadLetterFilter selects dead letters; zero fields match everything.
type DeadLetterFilter struct {
	TenantID string
	Stage    string
	// Statuses: any of these (empty: every status).
	Statuses []DeadLetterStatus
	// ErrorContains: the error message contains this text, case-insensitively.
	ErrorContains string
	ErrorClass    string
}

// IsZero reports whether the filter matches everything.
func (f DeadLetterFilter) IsZero() bool {
	return f.TenantID == "" && f.Stage == "" && len(f.Statuses) == 0 && f.ErrorContains == "" && f.ErrorClass == ""
}

func (f DeadLetterFilter) query() bson.D {
	q := bson.D{}
	if f.TenantID != "" {
		q = append(q, bson.E{Key: "tenant_id", Value: f.TenantID})
	}
	if f.Stage != "" {
		q = append(q, bson.E{Key: "stage", Value: f.Stage})
	}
	switch len(f.Statuses) {
	case 0:
	case 1:
		q = append(q, bson.E{Key: "status", Value: string(f.Statuses[0])})
	default:
		in := make(bson.A, len(f.Statuses))
		for i, s := range f.Statuses {
			in[i] = string(s)
		}
		q = append(q, bson.E{Key: "status", Value: bson.D{{Key: "$in", Value: in}}})
	}
	if f.ErrorClass != "" {
		q = append(q, bson.E{Key: "error_class", Value: f.ErrorClass})
	}
	if f.ErrorContains != "" {
		q = append(q, bson.E{Key: "error", Value: bson.D{
			{Key: "$regex", Value: regexp.QuoteMeta(f.ErrorContains)}, {Key: "$options", Value: "i"},
		}})
	}
	return q
}

// scope fingerprints the filter for page tokens.
func (f DeadLetterFilter) scope() string {
	statuses := make([]string, len(f.Statuses))
	for i, s := range f.Statuses {
		statuses[i] = string(s)
	}
	slices.Sort(statuses)
	return tokenScope(f.TenantID, f.Stage, strings.Join(statuses, ","), f.ErrorContains, f.ErrorClass)
}

const tokenDeadLetters = "d"

// List returns the dead letters matching f, newest failure first (by Seq), keyset-paginated on Seq: entries
// stored between page fetches never shift later pages. pageSize goes through PageSize; the next page token
// is "" on the last page. ErrBadPageToken for a token issued for another list or filter.
func (r *DeadLetters) List(ctx context.Context, f DeadLetterFilter, pageSize int, pageToken string) ([]DeadLetter, string, error) {
	size := PageSize(pageSize)
	scope := f.scope()
	after, err := decodePageToken(pageToken, tokenDeadLetters, scope)
	if err != nil {
		return nil, "", fmt.Errorf("list dead letters: %w", err)
	}
	docs, err := r.page(ctx, f.query(), after, size)
	if err != nil {
		return nil, "", fmt.Errorf("list dead letters: %w", err)
	}
	next := ""
	if n := pageFit(min(len(docs), size), func(i int) int { return docs[i].contentBytes() }); n < len(docs) {
		docs = docs[:n]
		next = encodePageToken(tokenDeadLetters, scope, docs[n-1].Seq)
	}
	out := make([]DeadLetter, len(docs))
	for i, d := range docs {
		out[i] = d.deadLetter()
	}
	return out, next, nil
}

// page returns up to size+1 documents matching q with seq < after (all when after is ""), seq descending.
func (r *DeadLetters) page(ctx context.Context, q bson.D, after string, size int) ([]deadLetterDoc, error) {
	if after != "" {
		q = append(slices.Clone(q), bson.E{Key: "seq", Value: bson.D{{Key: "$lt", Value: after}}})
	}
	var docs []deadLetterDoc
	if err := r.guard.Read(ctx, func(ctx context.Context) error {
		docs = nil
		cur, err := r.coll.Find(ctx, q, options.Find().SetSort(bson.D{{Key: "seq", Value: -1}}).SetLimit(int64(size)+1))
		if err != nil {
			return err
		}
		return cur.All(ctx, &docs)
	}); err != nil {
		return nil, err
	}
	return docs, nil
}

// Each calls fn for every dead letter matching f, newest first, a page of batch at a time. It walks a
// keyset (entries stored meanwhile are newer and not visited; entries fn changes are not visited twice),
// so fn may change the status of what it is given. It stops at fn's first error.
func (r *DeadLetters) Each(ctx context.Context, f DeadLetterFilter, batch int, fn func([]DeadLetter) error) error {
	batch = PageSize(batch)
	after := ""
	for {
		docs, err := r.page(ctx, f.query(), after, batch)
		if err != nil {
			return fmt.Errorf("walk dead letters: %w", err)
		}
		more := len(docs) > batch
		if more {
			docs = docs[:batch]
		}
		if len(docs) == 0 {
			return nil
		}
		out := make([]DeadLetter, len(docs))
		for i, d := range docs {
			out[i] = d.deadLetter()
		}
		if err := fn(out); err != nil {
			return err
		}
		if !more {
			return nil
		}
		after = docs[len(docs)-1].Seq
	}
}

// Due returns up to limit entries the scheduler must handle now: pending retries whose time has come and
// claims whose lease expired (their holder died), soonest first.
func (r *DeadLetters) Due(ctx context.Context, limit int) ([]DeadLetter, error) {
	now := r.Now()
	var docs []deadLetterDoc
	if err := r.guard.Read(ctx, func(ctx context.Context) error {
		docs = nil
		cur, err := r.coll.Find(ctx, bson.D{{Key: "due_time", Value: bson.D{{Key: "$lte", Value: now}}}},
			options.Find().SetSort(bson.D{{Key: "due_time", Value: 1}}).SetLimit(int64(limit)))
		if err != nil {
			return err
		}
		return cur.All(ctx, &docs)
	}); err != nil {
		return nil, fmt.Errorf("due dead letters: %w", err)
	}
	out := make([]DeadLetter, len(docs))
	for i, d := range docs {
		out[i] = d.deadLetter()
	}
	return out, nil
}

// DeadLetterStats are counts over the dead letters (of one tenant, or all).
type DeadLetterStats struct {
	Total        int64
	ByStatus     map[DeadLetterStatus]int64
	ByStage      map[string]int64
	ByErrorClass map[string]int64
	// OldestPending is the LastFailureTime of the oldest entry waiting for a retry (pending_retry or
	// retrying); nil when there is none.
	OldestPending *time.Time
}

// Stats counts the dead letters of tenantID ("" for all) by status, stage and error class.
func (r *DeadLetters) Stats(ctx context.Context, tenantID string) (DeadLetterStats, error) {
	match := bson.D{}
	if tenantID != "" {
		match = append(match, bson.E{Key: "tenant_id", Value: tenantID})
	}
	st := DeadLetterStats{ByStatus: map[DeadLetterStatus]int64{}, ByStage: map[string]int64{}, ByErrorClass: map[string]int64{}}
	for _, field := range []string{"status", "stage", "error_class"} {
		counts, err := r.countBy(ctx, match, field)
		if err != nil {
			return DeadLetterStats{}, fmt.Errorf("dead letter stats by %s: %w", field, err)
		}
		for k, n := range counts {
			switch field {
			case "status":
				st.ByStatus[DeadLetterStatus(k)] = n
				st.Total += n
			case "stage":
				st.ByStage[k] = n
			default:
				st.ByErrorClass[k] = n
			}
		}
	}
	pending := append(slices.Clone(match), bson.E{Key: "status", Value: bson.D{{Key: "$in", Value: bson.A{string(DeadLetterPendingRetry), string(DeadLetterRetrying)}}}})
	var oldest deadLetterDoc
	err := r.guard.Read(ctx, func(ctx context.Context) error {
		return r.coll.FindOne(ctx, pending, options.FindOne().
			SetSort(bson.D{{Key: "last_failure_time", Value: 1}}).
			SetProjection(bson.D{{Key: "last_failure_time", Value: 1}})).Decode(&oldest)
	})
	switch {
	case errors.Is(err, mongo.ErrNoDocuments):
	case err != nil:
		return DeadLetterStats{}, fmt.Errorf("dead letter stats: oldest pending: %w", err)
	default:
		t := oldest.LastFailureTime.UTC()
		st.OldestPending = &t
	}
	return st, nil
}

// countBy groups the documents matching match by field and counts them.
func (r *DeadLetters) countBy(ctx context.Context, match bson.D, field string) (map[string]int64, error) {
	var rows []struct {
		ID any   `bson:"_id"`
		N  int64 `bson:"n"`
	}
	if err := r.guard.Read(ctx, func(ctx context.Context) error {
		rows = nil
		cur, err := r.coll.Aggregate(ctx, mongo.Pipeline{
			{{Key: "$match", Value: match}},
			{{Key: "$group", Value: bson.D{{Key: "_id", Value: "$" + field}, {Key: "n", Value: bson.D{{Key: "$sum", Value: 1}}}}}},
		})
		if err != nil {
			return err
		}
		return cur.All(ctx, &rows)
	}); err != nil {
		return nil, err
	}
	out := make(map[string]int64, len(rows))
	for _, row := range rows {
		k, _ := row.ID.(string)
		out[k] += row.N
	}
	return out, nil
}
