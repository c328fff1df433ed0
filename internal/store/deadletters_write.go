package store

import (
	"context"
	"errors"
	"fmt"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// InsertResult is the outcome of one dead letter of InsertMany.
type InsertResult struct {
	// Duplicate: an entry with this id is already stored (a redelivered DLQ record). It counts as success.
	Duplicate bool
	// Err is this item's own failure (the server refused the document); nil on success.
	Err error
}

// InsertMany stores new dead letters with one unordered insert (_id = ID), so a redelivered record is a
// duplicate, never a second entry. err reports a failure of the whole command (which items landed is
// unknown: insert them all again; those that did are duplicates then). Otherwise there is one result per
// item. Defaults: Status pending_retry, CreateTime and UpdateTime now, Version 1, Seq from
// LastFailureTime; DueTime follows NextRetryTime for a pending entry. ID is required.
func (r *DeadLetters) InsertMany(ctx context.Context, dls []DeadLetter) ([]InsertResult, error) {
	if len(dls) == 0 {
		return nil, nil
	}
	now := r.Now()
	docs := make([]any, len(dls))
	for i, d := range dls {
		if d.ID == "" {
			return nil, fmt.Errorf("insert dead letters: item %d: %w", i, errMissing("id"))
		}
		docs[i] = newDeadLetterDoc(d, now)
	}
	results := make([]InsertResult, len(dls))
	err := r.guard.Write(ctx, func(ctx context.Context) error {
		_, err := r.coll.InsertMany(ctx, docs, options.InsertMany().SetOrdered(false))
		return err
	})
	if err == nil {
		return results, nil
	}
	var bwe mongo.BulkWriteException
	if !errors.As(err, &bwe) || len(bwe.WriteErrors) == 0 || bwe.WriteConcernError != nil {
		return nil, fmt.Errorf("insert dead letters: %w", err)
	}
	for _, we := range bwe.WriteErrors {
		if we.Index < 0 || we.Index >= len(results) {
			continue
		}
		if mongo.IsDuplicateKeyError(we.WriteError) {
			results[we.Index].Duplicate = true
		} else {
			results[we.Index].Err = fmt.Errorf("insert dead letter %s: %w", dls[we.Index].ID, we.WriteError)
		}
	}
	return results, nil
}
