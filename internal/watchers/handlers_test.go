package watchers

import (
	"context"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	platformv1 "github.com/msgplatform/platform/gen/platform/v1"
	"github.com/msgplatform/platform/internal/events"
	"github.com/msgplatform/platform/internal/store"
	"github.com/msgplatform/platform/internal/store/changes"
)

type fakeCache struct{ calls [][3]string }

func (f *fakeCache) Invalidate(_ context.Context, t, c, u string) error {
	f.calls = append(f.calls, [3]string{t, c, u})
	return nil
}

type fakePub struct{ events []*platformv1.Event }

func (f *fakePub) Publish(_ context.Context, ev *platformv1.Event) error {
	f.events = append(f.events, ev)
	return nil
}

// rawEvent is the change event of op on the document with _id id (full: the document after the change).
func rawEvent(t *testing.T, op string, id any, full bson.D) changes.Event {
	t.Helper()
	key, err := bson.Marshal(bson.D{{Key: "_id", Value: id}})
	if err != nil {
		t.Fatal(err)
	}
	ev := changes.Event{Database: "db", Collection: "x", OperationType: op, DocumentKey: key}
	if full != nil {
		if ev.FullDocument, err = bson.Marshal(full); err != nil {
			t.Fatal(err)
		}
	}
	return ev
}

func TestMembershipInvalidator(t *testing.T) {
	cache := &fakeCache{}
	h := MembershipInvalidator{Cache: cache}
	id := store.MembershipID("t/1", "c%1", "u1")
	for _, op := range []string{changes.OpInsert, changes.OpUpdate, changes.OpReplace, changes.OpDelete, "drop"} {
		if err := h.Handle(context.Background(), rawEvent(t, op, id, nil)); err != nil {
			t.Fatal(err)
		}
	}
	_ = h.Handle(context.Background(), rawEvent(t, changes.OpDelete, "not-a-membership", nil))
	_ = h.Handle(context.Background(), rawEvent(t, changes.OpDelete, int32(7), nil))
	if len(cache.calls) != 4 {
		t.Fatalf("invalidations = %v, want 4 (insert, update, replace, delete)", cache.calls)
	}
	for _, c := range cache.calls {
		if c != [3]string{"t/1", "c%1", "u1"} {
			t.Errorf("invalidated %v", c)
		}
	}
}

func messageDocD(state string, version int64) bson.D {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	d := bson.D{{Key: "_id", Value: "01JMSG"}, {Key: "tenant_id", Value: "t1"}, {Key: "conversation_id", Value: "c1"},
		{Key: "sender_id", Value: "u1"}, {Key: "body", Value: "hi"}, {Key: "state", Value: state},
		{Key: "create_time", Value: at}, {Key: "persist_time", Value: at}, {Key: "update_time", Value: at.Add(time.Minute)},
		{Key: "version", Value: version}, {Key: "request_id", Value: "r1"}}
	if state == string(store.MessageDeleted) {
		d = append(d, bson.E{Key: "delete_time", Value: at.Add(time.Hour)})
	}
	return d
}

func TestMessageEvents(t *testing.T) {
	pub := &fakePub{}
	h := MessageEvents{Publisher: pub}
	ctx := context.Background()
	for _, ev := range []changes.Event{
		rawEvent(t, changes.OpInsert, "01JMSG", messageDocD("persisted", 1)),
		rawEvent(t, changes.OpUpdate, "01JMSG", messageDocD("persisted", 2)),
		rawEvent(t, changes.OpReplace, "01JMSG", messageDocD("deleted", 3)),
		rawEvent(t, changes.OpInsert, "01JMSG", messageDocD("accepted", 1)), // not persisted yet: skipped
		rawEvent(t, changes.OpUpdate, "01JMSG", nil),                        // no full document: skipped
		rawEvent(t, changes.OpDelete, "01JMSG", nil),                        // hard delete: skipped
	} {
		if err := h.Handle(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	want := []struct {
		id  string
		typ platformv1.EventType
	}{
		{"01JMSG", platformv1.EventType_EVENT_TYPE_MESSAGE_PERSISTED}, // same id as the pipeline's notify stage
		{"01JMSG.v2", platformv1.EventType_EVENT_TYPE_MESSAGE_UPDATED},
		{"01JMSG.v3", platformv1.EventType_EVENT_TYPE_MESSAGE_DELETED},
	}
	if len(pub.events) != len(want) {
		t.Fatalf("published %d events, want %d: %v", len(pub.events), len(want), pub.events)
	}
	for i, w := range want {
		ev := pub.events[i]
		if ev.GetId() != w.id || ev.GetType() != w.typ || ev.GetTenantId() != "t1" || ev.GetConversationId() != "c1" ||
			ev.GetMessage().GetId() != "01JMSG" || ev.GetEventTime() == nil {
			t.Errorf("event %d = %v, want id %s type %s", i, ev, w.id, w.typ)
		}
	}
	if pub.events[0].GetActorId() != "u1" || pub.events[0].GetRequestId() != "r1" {
		t.Errorf("persisted event actor/request = %q/%q", pub.events[0].GetActorId(), pub.events[0].GetRequestId())
	}
	if events.MessageEventID("m", 1) != "m" || events.MessageEventID("m", 0) != "m" || events.MessageEventID("m", 12) != "m.v12" {
		t.Error("MessageEventID scheme changed")
	}
}
