package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

// Purge marks one dead letter purged and drops its payload bytes (the rest stays as an audit trail). It
// returns the entry as stored and whether this call purged it: purging a purged entry returns it
// unchanged. ErrDeadLetterBusy while a retrier holds a live claim; ErrNotFound.
func (r *DeadLetters) Purge(ctx context.Context, id, actor string) (DeadLetter, bool, error) {
	for attempt := 0; ; attempt++ {
		cur, err := r.get(ctx, id)
		if err != nil {
			return DeadLetter{}, false, fmt.Errorf("purge dead letter %s: %w", id, err)
		}
		if DeadLetterStatus(cur.Status) == DeadLetterPurged {
			return cur.deadLetter(), false, nil
		}
		d, err := r.transition(ctx, "purge", id, cur.Version, func(cur *deadLetterDoc, now time.Time) (bson.D, bson.D, error) {
			status := DeadLetterStatus(cur.Status)
			if status == DeadLetterRetrying && cur.LeaseUntil != nil && cur.LeaseUntil.After(now) {
				return nil, nil, ErrDeadLetterBusy
			}
			return bson.D{
					{Key: "status", Value: string(DeadLetterPurged)},
					{Key: "purge_time", Value: now},
					{Key: "last_actor", Value: actor},
					{Key: "update_time", Value: now},
				}, append(slices.Clone(unsetClaim),
					bson.E{Key: "payload", Value: ""}, bson.E{Key: "due_time", Value: ""}, bson.E{Key: "next_retry_time", Value: ""}),
				nil
		})
		if errors.Is(err, ErrConflict) && attempt < 3 {
			continue // changed between our read and the fence: read it again
		}
		return d, err == nil, err
	}
}

// PurgeMatching marks every dead letter matching f purged (payload dropped), except those already purged
// and those a retrier holds right now, with one multi-document update; it returns how many it purged.
// On MongoDB each document's update is atomic and bumps its version, so a retrier that read it before
// loses its fenced transition. (On FerretDB, where updates are read-then-replace, a purge racing with a
// claim in the same millisecond may lose to it; the devstack runs one scheduler.)
func (r *DeadLetters) PurgeMatching(ctx context.Context, f DeadLetterFilter, actor string) (int64, error) {
	now := r.Now()
	q := f.query()
	q = append(q,
		bson.E{Key: "$and", Value: bson.A{
			bson.D{{Key: "status", Value: bson.D{{Key: "$ne", Value: string(DeadLetterPurged)}}}},
			bson.D{{Key: "$or", Value: bson.A{
				bson.D{{Key: "status", Value: bson.D{{Key: "$ne", Value: string(DeadLetterRetrying)}}}},
				bson.D{{Key: "lease_until", Value: bson.D{{Key: "$lte", Value: now}}}},
			}}},
		}})
	var res *mongo.UpdateResult
	err := r.guard.Write(ctx, func(ctx context.Context) error {
		var err error
		res, err = r.coll.UpdateMany(ctx, q, bson.D{
			{Key: "$set", Value: bson.D{
				{Key: "status", Value: string(DeadLetterPurged)},
				{Key: "purge_time", Value: now},
				{Key: "last_actor", Value: actor},
				{Key: "update_time", Value: now},
			}},
			{Key: "$unset", Value: append(slices.Clone(unsetClaim),
				bson.E{Key: "payload", Value: ""}, bson.E{Key: "due_time", Value: ""}, bson.E{Key: "next_retry_time", Value: ""})},
			{Key: "$inc", Value: bson.D{{Key: "version", Value: int64(1)}}},
		})
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("purge dead letters: %w", err)
	}
	return res.ModifiedCount, nil
}
