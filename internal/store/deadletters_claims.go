package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// claimDoc is a fence of the dead_letter_claims collection: _id "<dead letter id>@<version>".
type claimDoc struct {
	ID         string    `bson:"_id"`
	Token      string    `bson:"token"`
	ExpireTime time.Time `bson:"expire_time"`
}

// fenceTTL bounds how long a fence left behind by a crashed process blocks its entry. A fence normally
// lives for three quick operations (read, update, delete).
const fenceTTL = time.Minute

// Claim is what a retrier asks for.
type Claim struct {
	// Owner names the claiming process (a replica's instance id); it is stored on the entry.
	Owner string
	// Lease is how long the claim holds; after it another retrier may take the entry over.
	Lease time.Duration
	// OnlyDue: claim only a due pending retry or an expired claim (the scheduler). Otherwise any entry that
	// is neither purged nor held by a live claim (an operator's retry).
	OnlyDue bool
	// Actor is recorded as LastActor.
	Actor string
}

// Claim takes d (as read, at its version) for republishing: status retrying, with the claim's owner and
// lease. Errors: ErrConflict when another caller changed or holds the entry (read it again);
// ErrDeadLetterPurged; ErrDeadLetterBusy (a live claim of someone else); ErrDeadLetterNotDue (OnlyDue and
// the entry is not due); ErrNotFound.
func (r *DeadLetters) Claim(ctx context.Context, d DeadLetter, c Claim) (DeadLetter, error) {
	if c.Owner == "" || c.Lease <= 0 {
		return DeadLetter{}, fmt.Errorf("claim dead letter %s: %w", d.ID, errMissing("owner or lease"))
	}
	return r.transition(ctx, "claim", d.ID, d.Version, func(cur *deadLetterDoc, now time.Time) (bson.D, bson.D, error) {
		status := DeadLetterStatus(cur.Status)
		expired := status == DeadLetterRetrying && (cur.LeaseUntil == nil || !cur.LeaseUntil.After(now))
		switch {
		case status == DeadLetterPurged:
			return nil, nil, ErrDeadLetterPurged
		case status == DeadLetterRetrying && !expired:
			return nil, nil, ErrDeadLetterBusy
		case c.OnlyDue && !expired && (status != DeadLetterPendingRetry || cur.DueTime == nil || cur.DueTime.After(now)):
			return nil, nil, ErrDeadLetterNotDue
		}
		from := status
		if status == DeadLetterRetrying {
			from = DeadLetterStatus(cur.ClaimedFrom) // a claim taken over keeps the original intent
		}
		lease := now.Add(c.Lease)
		return bson.D{
			{Key: "status", Value: string(DeadLetterRetrying)},
			{Key: "claim_owner", Value: c.Owner},
			{Key: "lease_until", Value: lease},
			{Key: "due_time", Value: lease},
			{Key: "claimed_from", Value: string(from)},
			{Key: "last_actor", Value: c.Actor},
			{Key: "update_time", Value: now},
		}, nil, nil
	})
}

// holds checks that cur is still claimed by the holder of claimed.
func holds(cur *deadLetterDoc, claimed DeadLetter) error {
	if DeadLetterStatus(cur.Status) != DeadLetterRetrying || cur.ClaimOwner != claimed.ClaimOwner {
		return fmt.Errorf("claim of %s lost (now %s by %q): %w", cur.ID, cur.Status, cur.ClaimOwner, ErrConflict)
	}
	return nil
}

var unsetClaim = bson.D{
	{Key: "claim_owner", Value: ""}, {Key: "lease_until", Value: ""}, {Key: "claimed_from", Value: ""},
}

// MarkRetried records that the claimed entry was republished: status retried, Retries incremented.
// ErrConflict if the claim was lost (its lease expired and another retrier took it).
func (r *DeadLetters) MarkRetried(ctx context.Context, claimed DeadLetter, actor string) (DeadLetter, error) {
	return r.transition(ctx, "mark retried", claimed.ID, claimed.Version, func(cur *deadLetterDoc, now time.Time) (bson.D, bson.D, error) {
		if err := holds(cur, claimed); err != nil {
			return nil, nil, err
		}
		return bson.D{
				{Key: "status", Value: string(DeadLetterRetried)},
				{Key: "retries", Value: cur.Retries + 1},
				{Key: "last_retry_time", Value: now},
				{Key: "last_actor", Value: actor},
				{Key: "note", Value: ""},
				{Key: "update_time", Value: now},
			}, append(slices.Clone(unsetClaim),
				bson.E{Key: "due_time", Value: ""}, bson.E{Key: "next_retry_time", Value: ""}),
			nil
	})
}

// Release ends a claim without a republish: back to pending_retry due at next (next nil: the entry's
// earlier retry time), or to parked when status is DeadLetterParked. note says why.
func (r *DeadLetters) Release(ctx context.Context, claimed DeadLetter, status DeadLetterStatus, next *time.Time, note, actor string) (DeadLetter, error) {
	if status != DeadLetterPendingRetry && status != DeadLetterParked && status != DeadLetterRetried {
		return DeadLetter{}, fmt.Errorf("release dead letter %s to %q: not a resting status", claimed.ID, status)
	}
	return r.transition(ctx, "release", claimed.ID, claimed.Version, func(cur *deadLetterDoc, now time.Time) (bson.D, bson.D, error) {
		if err := holds(cur, claimed); err != nil {
			return nil, nil, err
		}
		set := bson.D{
			{Key: "status", Value: string(status)},
			{Key: "note", Value: note},
			{Key: "last_actor", Value: actor},
			{Key: "update_time", Value: now},
		}
		unset := slices.Clone(unsetClaim)
		if status == DeadLetterPendingRetry {
			due := now
			switch {
			case next != nil:
				due = storeTime(*next)
			case cur.NextRetryTime != nil:
				due = *cur.NextRetryTime
			}
			set = append(set, bson.E{Key: "next_retry_time", Value: due}, bson.E{Key: "due_time", Value: due})
		} else {
			unset = append(unset, bson.E{Key: "due_time", Value: ""}, bson.E{Key: "next_retry_time", Value: ""})
		}
		return set, unset, nil
	})
}

// transition applies one fenced status change to the entry id at version (see DeadLetters). decide sees
// the entry as stored under the fence and returns the fields to $set and $unset, or an error to give up.
func (r *DeadLetters) transition(ctx context.Context, what, id string, version int64, decide func(cur *deadLetterDoc, now time.Time) (set, unset bson.D, err error)) (DeadLetter, error) {
	fail := func(err error) (DeadLetter, error) {
		return DeadLetter{}, fmt.Errorf("%s dead letter %s: %w", what, id, err)
	}
	now := r.Now()
	release, err := r.fence(ctx, id+"@"+strconv.FormatInt(version, 10), now)
	if err != nil {
		return fail(err)
	}
	defer release()
	cur, err := r.get(ctx, id)
	if err != nil {
		return fail(err)
	}
	if cur.Version != version {
		return fail(fmt.Errorf("version %d, read %d: %w", cur.Version, version, ErrConflict))
	}
	set, unset, err := decide(&cur, now)
	if err != nil {
		return fail(err)
	}
	update := bson.D{
		{Key: "$set", Value: append(set, bson.E{Key: "version", Value: version + 1})},
	}
	if len(unset) > 0 {
		update = append(update, bson.E{Key: "$unset", Value: unset})
	}
	var doc deadLetterDoc
	err = r.guard.Write(ctx, func(ctx context.Context) error {
		return r.coll.FindOneAndUpdate(ctx, bson.D{{Key: "_id", Value: id}, {Key: "version", Value: version}}, update,
			options.FindOneAndUpdate().SetReturnDocument(options.After)).Decode(&doc)
	})
	if errors.Is(err, mongo.ErrNoDocuments) {
		return fail(fmt.Errorf("changed during the update: %w", ErrConflict))
	}
	if err != nil {
		return fail(err)
	}
	return doc.deadLetter(), nil
}

// fence inserts the claim document fenceID; ErrConflict if someone else holds it. The returned function
// deletes it (best effort: an orphan expires after fenceTTL).
func (r *DeadLetters) fence(ctx context.Context, fenceID string, now time.Time) (func(), error) {
	token := randomToken()
	for attempt := 0; attempt < 2; attempt++ {
		err := r.guard.Write(ctx, func(ctx context.Context) error {
			_, err := r.claims.InsertOne(ctx, claimDoc{ID: fenceID, Token: token, ExpireTime: now.Add(fenceTTL)})
			return err
		})
		if err == nil {
			return func() {
				dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				defer cancel()
				_ = r.guard.Write(dctx, func(ctx context.Context) error {
					_, err := r.claims.DeleteOne(ctx, bson.D{{Key: "_id", Value: fenceID}})
					return err
				})
			}, nil
		}
		if !mongo.IsDuplicateKeyError(err) {
			return nil, fmt.Errorf("claim: %w", err)
		}
		var held claimDoc
		if err := r.guard.Read(ctx, func(ctx context.Context) error {
			return r.claims.FindOne(ctx, bson.D{{Key: "_id", Value: fenceID}}).Decode(&held)
		}); err != nil {
			if errors.Is(err, mongo.ErrNoDocuments) {
				continue // released meanwhile: try once more
			}
			return nil, fmt.Errorf("claim: %w", err)
		}
		if held.ExpireTime.After(now) {
			return nil, fmt.Errorf("held by another retrier: %w", ErrConflict)
		}
		// Left behind by a crash: remove exactly that one (its token), then try once more.
		if err := r.guard.Write(ctx, func(ctx context.Context) error {
			_, err := r.claims.DeleteOne(ctx, bson.D{{Key: "_id", Value: fenceID}, {Key: "token", Value: held.Token}})
			return err
		}); err != nil {
			return nil, fmt.Errorf("claim: remove expired fence: %w", err)
		}
	}
	return nil, fmt.Errorf("held by another retrier: %w", ErrConflict)
}

func randomToken() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
