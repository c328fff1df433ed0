package changes

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/testenv"
)

func ferretDB(t *testing.T) *mongo.Database {
	t.Helper()
	uri := testenv.SharedMongo(t)
	client, err := mongo.Connect(options.Client().ApplyURI(uri))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Disconnect(context.Background()) })
	return client.Database(testenv.MongoDatabase(t, uri))
}

// Against real FerretDB (no change streams): unsupported is reported, Run returns nil, nothing crashes.
func TestFerretDBUnsupported(t *testing.T) {
	db := ferretDB(t)
	ok, err := Supported(context.Background(), db)
	if err != nil || ok {
		t.Fatalf("Supported on FerretDB = %v, %v; want false, nil", ok, err)
	}
	tokens := newMemTokens(nil)
	h := start(t, db, tokens, Watch{Collection: store.MessagesCollection, Handler: &recorder{tokens: tokens}},
		Watch{Collection: store.MembershipsCollection, Handler: &recorder{tokens: tokens}})
	select {
	case err := <-h.done:
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
		h.done <- nil
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return on FerretDB")
	}
	if got := testutil.ToFloat64(h.m.supported); got != 0 {
		t.Errorf("supported = %v, want 0", got)
	}
}

// store.DecodeMessage reads a change event's fullDocument exactly as the store reads its own documents.
func TestDecodeMessageMatchesStore(t *testing.T) {
	ctx := context.Background()
	db := ferretDB(t)
	s := store.New(db)
	edit := time.Date(2026, 1, 2, 3, 4, 5, 6e6, time.UTC)
	msg := store.Message{ID: "01J0000000000000000000000A", TenantID: "t1", ConversationID: "c1", SenderID: "u1",
		Body: "hi", ClientMessageID: "cm1", Metadata: map[string]string{"a": "1", "b.c": "2"}, Mentions: []string{"u2"},
		PersistTime: time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC), EditTime: &edit, Version: 3, RequestID: "r1"}
	if _, _, err := s.Messages.InsertMany(ctx, []store.Message{msg}); err != nil {
		t.Fatal(err)
	}
	var raw bson.Raw
	if err := db.Collection(store.MessagesCollection).FindOne(ctx, bson.D{{Key: "_id", Value: msg.ID}}).Decode(&raw); err != nil {
		t.Fatal(err)
	}
	got, err := store.DecodeMessage(raw)
	if err != nil {
		t.Fatal(err)
	}
	want, err := s.Messages.Get(ctx, "t1", "c1", msg.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("store.DecodeMessage = %+v\nstore reads  %+v", got, want)
	}
}
