package changes

// CONTRACT TEST HELPER: a scripted MongoDB wire responder.
//
// No MongoDB replica set exists on the machines this was written on, and FerretDB has no change streams,
// so the Manager is tested against this small TCP server that speaks the MongoDB wire protocol and answers
// with the reply shapes the specifications define. It is a contract test of the Manager against those
// documents, not a MongoDB emulation. Sources:
//   - Wire protocol (OP_MSG opcode 2013: header, flagBits, kind-0 body section, kind-1 document
//     sequences; OP_QUERY 2004 / OP_REPLY 1, still used by drivers for the first handshake message):
//     https://www.mongodb.com/docs/manual/reference/mongodb-wire-protocol/
//   - Server discovery (hello reply of a replica-set primary: isWritablePrimary, setName, hosts, primary,
//     me, setVersion, electionId, min/maxWireVersion): specifications/source/server-discovery-and-monitoring/
//     server-discovery-and-monitoring.md, "Parsing a hello or legacy hello response".
//   - Change streams: specifications/source/change-streams/change-streams.md, sections "Server
//     Specification" (aggregate with a $changeStream first stage; cursor replies {cursor: {firstBatch |
//     nextBatch, id, ns, postBatchResumeToken}}), "Response Format" (ChangeStreamDocument: _id resume
//     token, operationType, ns {db, coll}, documentKey, fullDocument, updateDescription; the invalidate
//     event), "Resume Process" / "Updating the Cached Resume Token" (postBatchResumeToken on empty
//     batches), "startAfter" (accepted after an invalidate, where resumeAfter is not), and "Resumable
//     Error" (ChangeStreamHistoryLost 286 is NOT resumable: no ResumableChangeStreamError label).
//   - Error replies {ok: 0, errmsg, code, codeName}: FerretDB answers $changeStream with code 238
//     NotImplemented (seen here, see internal/store/mongo_test.go).
// What it does not model: real oplog semantics, $clusterTime/operationTime gossip, sessions beyond
// accepting lsid, awaitData timing (an empty getMore waits at most 20ms), sharded clusters, auth.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
)

const (
	opReply = 1
	opQuery = 2004
	opMsg   = 2013
)

// cmdError is a scripted server error.
type cmdError struct {
	Code     int32
	CodeName string
	Msg      string
	Labels   []string
}

// step is one scripted reply of a change stream: the aggregate and each getMore consume one step.
type step struct {
	Events []bson.D // the batch (empty: an empty batch)
	PBRT   bson.D   // postBatchResumeToken; nil: the last one given
	Close  bool     // cursor id 0 (the server closed the cursor, e.g. after an invalidate)
	Err    *cmdError
}

// responder is the scripted server. Zero script left for a collection: empty batches with the last PBRT.
type responder struct {
	t    testing.TB
	ln   net.Listener
	addr string
	db   string

	mu          sync.Mutex
	script      map[string][]step
	lastPBRT    map[string]bson.D
	cursors     map[int64]string
	nextCursor  int64
	aggregates  []bson.Raw // change-stream aggregate commands received (the probe excluded)
	getMores    int
	unsupported *cmdError // when set, every aggregate answers it (FerretDB: 238 NotImplemented)
	conns       []net.Conn
}

func newResponder(t testing.TB, db string) *responder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &responder{t: t, ln: ln, addr: ln.Addr().String(), db: db, script: map[string][]step{},
		lastPBRT: map[string]bson.D{}, cursors: map[int64]string{}, nextCursor: 1000}
	go r.accept()
	t.Cleanup(func() {
		_ = ln.Close()
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, c := range r.conns {
			_ = c.Close()
		}
	})
	return r
}

// URI connects as to a one-member replica set.
func (r *responder) URI() string {
	return "mongodb://" + r.addr + "/?replicaSet=rs0&serverSelectionTimeoutMS=3000&connectTimeoutMS=2000"
}

func (r *responder) push(coll string, steps ...step) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.script[coll] = append(r.script[coll], steps...)
}

func (r *responder) receivedAggregates() []bson.Raw {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]bson.Raw(nil), r.aggregates...)
}

func (r *responder) accept() {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		r.conns = append(r.conns, c)
		r.mu.Unlock()
		go r.serve(c)
	}
}

func (r *responder) serve(c net.Conn) {
	defer c.Close()
	for {
		var hdr [16]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		size := int32(binary.LittleEndian.Uint32(hdr[0:]))
		reqID := int32(binary.LittleEndian.Uint32(hdr[4:]))
		op := int32(binary.LittleEndian.Uint32(hdr[12:]))
		if size < 16 || size > 48<<20 {
			return
		}
		body := make([]byte, size-16)
		if _, err := io.ReadFull(c, body); err != nil {
			return
		}
		var reply []byte
		switch op {
		case opMsg:
			cmd, err := parseOpMsg(body)
			if err != nil {
				r.t.Logf("responder: %v", err)
				return
			}
			reply = opMsgReply(reqID, r.handle(cmd))
		case opQuery:
			cmd, err := parseOpQuery(body)
			if err != nil {
				r.t.Logf("responder: %v", err)
				return
			}
			reply = opReplyReply(reqID, r.handle(cmd))
		default:
			r.t.Logf("responder: unsupported opcode %d", op)
			return
		}
		if _, err := c.Write(reply); err != nil {
			return
		}
	}
}

// parseOpMsg returns the body (kind 0) document, with kind-1 document sequences appended as arrays.
func parseOpMsg(b []byte) (bson.Raw, error) {
	if len(b) < 5 {
		return nil, errors.New("short OP_MSG")
	}
	flags := binary.LittleEndian.Uint32(b)
	b = b[4:]
	if flags&1 != 0 { // checksumPresent
		b = b[:len(b)-4]
	}
	var doc bson.Raw
	for len(b) > 0 {
		kind := b[0]
		b = b[1:]
		n := int(binary.LittleEndian.Uint32(b))
		switch kind {
		case 0:
			doc = bson.Raw(b[:n])
		case 1: // document sequence: not used by the commands answered here
		default:
			return nil, fmt.Errorf("OP_MSG section kind %d", kind)
		}
		b = b[n:]
	}
	if doc == nil {
		return nil, errors.New("OP_MSG without a body section")
	}
	return doc, doc.Validate()
}

func parseOpQuery(b []byte) (bson.Raw, error) {
	b = b[4:] // flags
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return nil, errors.New("OP_QUERY without collection name")
	}
	b = b[i+1+8:] // name, numberToSkip, numberToReturn
	n := int(binary.LittleEndian.Uint32(b))
	doc := bson.Raw(b[:n])
	return doc, doc.Validate()
}

func header(size, reqID int32, op int32) []byte {
	h := make([]byte, 16)
	binary.LittleEndian.PutUint32(h[0:], uint32(size))
	binary.LittleEndian.PutUint32(h[4:], uint32(reqID+1_000_000))
	binary.LittleEndian.PutUint32(h[8:], uint32(reqID))
	binary.LittleEndian.PutUint32(h[12:], uint32(op))
	return h
}

func opMsgReply(reqID int32, doc bson.D) []byte {
	body, err := bson.Marshal(doc)
	if err != nil {
		panic(err)
	}
	out := header(int32(16+4+1+len(body)), reqID, opMsg)
	out = append(out, 0, 0, 0, 0, 0) // flagBits, section kind 0
	return append(out, body...)
}

func opReplyReply(reqID int32, doc bson.D) []byte {
	body, err := bson.Marshal(doc)
	if err != nil {
		panic(err)
	}
	out := header(int32(16+20+len(body)), reqID, opReply)
	fixed := make([]byte, 20) // responseFlags 0, cursorID 0, startingFrom 0, numberReturned 1
	binary.LittleEndian.PutUint32(fixed[16:], 1)
	out = append(out, fixed...)
	return append(out, body...)
}

func errorReply(e *cmdError) bson.D {
	d := bson.D{{Key: "ok", Value: 0.0}, {Key: "errmsg", Value: e.Msg}, {Key: "code", Value: e.Code}, {Key: "codeName", Value: e.CodeName}}
	if len(e.Labels) > 0 {
		d = append(d, bson.E{Key: "errorLabels", Value: e.Labels})
	}
	return d
}

func (r *responder) handle(cmd bson.Raw) bson.D {
	elems, err := cmd.Elements()
	if err != nil || len(elems) == 0 {
		return errorReply(&cmdError{Code: 9, CodeName: "FailedToParse", Msg: "empty command"})
	}
	switch name := elems[0].Key(); strings.ToLower(name) {
	case "hello", "ismaster":
		return r.hello()
	case "ping", "endsessions":
		return bson.D{{Key: "ok", Value: 1.0}}
	case "killcursors":
		return bson.D{{Key: "cursorsKilled", Value: bson.A{}}, {Key: "ok", Value: 1.0}}
	case "aggregate":
		return r.aggregate(cmd)
	case "getmore":
		return r.getMore(cmd)
	default:
		return errorReply(&cmdError{Code: 59, CodeName: "CommandNotFound", Msg: "no such command: '" + name + "'"})
	}
}

func (r *responder) hello() bson.D {
	return bson.D{
		{Key: "helloOk", Value: true},
		{Key: "isWritablePrimary", Value: true},
		{Key: "ismaster", Value: true},
		{Key: "secondary", Value: false},
		{Key: "setName", Value: "rs0"},
		{Key: "setVersion", Value: int32(1)},
		{Key: "electionId", Value: bson.ObjectID{0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 1}},
		{Key: "hosts", Value: bson.A{r.addr}},
		{Key: "primary", Value: r.addr},
		{Key: "me", Value: r.addr},
		{Key: "maxBsonObjectSize", Value: int32(16 * 1024 * 1024)},
		{Key: "maxMessageSizeBytes", Value: int32(48_000_000)},
		{Key: "maxWriteBatchSize", Value: int32(100_000)},
		{Key: "localTime", Value: bson.NewDateTimeFromTime(time.Now())},
		{Key: "logicalSessionTimeoutMinutes", Value: int32(30)},
		{Key: "connectionId", Value: int32(1)},
		{Key: "minWireVersion", Value: int32(0)},
		{Key: "maxWireVersion", Value: int32(21)},
		{Key: "readOnly", Value: false},
		{Key: "ok", Value: 1.0},
	}
}

func (r *responder) aggregate(cmd bson.Raw) bson.D {
	coll, _ := cmd.Lookup("aggregate").StringValueOK()
	stages, _ := cmd.Lookup("pipeline").Array().Values()
	isChangeStream := len(stages) > 0 && stages[0].Document().Lookup("$changeStream").Type == bson.TypeEmbeddedDocument
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.unsupported != nil {
		return errorReply(r.unsupported)
	}
	if !isChangeStream {
		return errorReply(&cmdError{Code: 2, CodeName: "BadValue", Msg: "responder only answers $changeStream"})
	}
	if len(stages) > 1 { // store.CheckChangeStreams' probe ($changeStream + $match): open and closed at once
		return r.cursorReply(coll, "firstBatch", 0, nil, nil)
	}
	r.aggregates = append(r.aggregates, bytes.Clone(cmd))
	r.nextCursor++
	return r.consume(coll, "firstBatch", r.nextCursor)
}

func (r *responder) getMore(cmd bson.Raw) bson.D {
	id, _ := cmd.Lookup("getMore").Int64OK()
	r.mu.Lock()
	coll, ok := r.cursors[id]
	r.getMores++
	empty := len(r.script[coll]) == 0
	r.mu.Unlock()
	if !ok {
		return errorReply(&cmdError{Code: 43, CodeName: "CursorNotFound", Msg: fmt.Sprintf("cursor id %d not found", id)})
	}
	if empty {
		// awaitData: hold an empty getMore a little, then answer an empty batch without consuming a step
		// pushed meanwhile (it belongs to a later getMore, possibly of a later stream).
		time.Sleep(20 * time.Millisecond)
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.cursorReply(coll, "nextBatch", id, nil, r.lastPBRT[coll])
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.consume(coll, "nextBatch", id)
}

// consume answers the collection's next scripted step. r.mu is held.
func (r *responder) consume(coll, batchField string, id int64) bson.D {
	var s step
	if q := r.script[coll]; len(q) > 0 {
		s, r.script[coll] = q[0], q[1:]
	}
	if s.Err != nil {
		delete(r.cursors, id)
		return errorReply(s.Err)
	}
	if s.PBRT != nil {
		r.lastPBRT[coll] = s.PBRT
	}
	if s.Close {
		delete(r.cursors, id)
		id = 0
	} else {
		r.cursors[id] = coll
	}
	return r.cursorReply(coll, batchField, id, s.Events, r.lastPBRT[coll])
}

func (r *responder) cursorReply(coll, batchField string, id int64, events []bson.D, pbrt bson.D) bson.D {
	batch := bson.A{}
	for _, e := range events {
		batch = append(batch, e)
	}
	cur := bson.D{{Key: batchField, Value: batch}}
	if pbrt != nil {
		cur = append(cur, bson.E{Key: "postBatchResumeToken", Value: pbrt})
	}
	cur = append(cur, bson.E{Key: "id", Value: id}, bson.E{Key: "ns", Value: r.db + "." + coll})
	return bson.D{{Key: "cursor", Value: cur}, {Key: "ok", Value: 1.0}}
}

// token is a resume token shaped as the server's ({_data: hex string}).
func token(n int) bson.D {
	return bson.D{{Key: "_data", Value: fmt.Sprintf("8265A1B2C3%08X2B022C0100296E5A1004", n)}}
}

func rawToken(t testing.TB, n int) bson.Raw {
	b, err := bson.Marshal(token(n))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// changeEvent builds a ChangeStreamDocument ("Response Format").
func changeEvent(n int, op, db, coll string, id any, full bson.D) bson.D {
	ev := bson.D{
		{Key: "_id", Value: token(n)},
		{Key: "operationType", Value: op},
		{Key: "clusterTime", Value: bson.Timestamp{T: uint32(1_700_000_000 + n), I: 1}},
		{Key: "wallTime", Value: bson.NewDateTimeFromTime(time.Unix(int64(1_700_000_000+n), 0))},
		{Key: "ns", Value: bson.D{{Key: "db", Value: db}, {Key: "coll", Value: coll}}},
		{Key: "documentKey", Value: bson.D{{Key: "_id", Value: id}}},
	}
	if op == OpUpdate {
		ev = append(ev, bson.E{Key: "updateDescription", Value: bson.D{
			{Key: "updatedFields", Value: bson.D{{Key: "role", Value: "admin"}}},
			{Key: "removedFields", Value: bson.A{}}, {Key: "truncatedArrays", Value: bson.A{}}}})
	}
	if full != nil {
		ev = append(ev, bson.E{Key: "fullDocument", Value: full})
	}
	return ev
}

func invalidateEvent(n int) bson.D {
	return bson.D{
		{Key: "_id", Value: token(n)},
		{Key: "operationType", Value: OpInvalidate},
		{Key: "clusterTime", Value: bson.Timestamp{T: uint32(1_700_000_000 + n), I: 1}},
		{Key: "wallTime", Value: bson.NewDateTimeFromTime(time.Unix(int64(1_700_000_000+n), 0))},
	}
}
