package store

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/msgplatform/platform/internal/testenv"
)

func TestRedactURI(t *testing.T) {
	tests := []struct{ in, want string }{
		{"mongodb://user:s3cret@db1:27017,db2:27017/platform?replicaSet=rs0", "mongodb://db1:27017,db2:27017"},
		{"mongodb+srv://u:p@cluster.example.net/", "mongodb+srv://cluster.example.net"},
		{"mongodb://127.0.0.1:27018/", "mongodb://127.0.0.1:27018"},
		{"::not a uri", "(unparsable URI)"},
	}
	for _, tc := range tests {
		if got := RedactURI(tc.in); got != tc.want {
			t.Errorf("RedactURI(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestConnectUnreachableNamesHostNotPassword(t *testing.T) {
	uri := "mongodb://admin:hunter2@" + testenv.FreeAddr(t) + "/?serverSelectionTimeoutMS=200"
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	_, err := Connect(ctx, uri)
	if err == nil {
		t.Fatal("Connect to a closed port succeeded")
	}
	if strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "not reachable") {
		t.Fatalf("error = %v: want the host named and no password", err)
	}
}

func TestChangeStreamsOnFerretDB(t *testing.T) {
	uri := testenv.SharedMongo(t)
	ctx := context.Background()
	client, err := Connect(ctx, uri)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Disconnect(ctx)
	if err := Ping(ctx, client); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	err = CheckChangeStreams(ctx, client.Database(testenv.MongoDatabase(t, uri)))
	if !errors.Is(err, ErrNoChangeStreams) {
		t.Fatalf("FerretDB has no change streams; CheckChangeStreams = %v, want ErrNoChangeStreams", err)
	}
}
