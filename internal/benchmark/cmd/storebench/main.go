// Command storebench is the ingest benchmark's baselines, each run as a process of its own next to the
// production pipeline (internal/benchmark/ingest starts it). It prints one JSON line on stdout
// (workload.Report) when done, and exits 1 with the reason on stderr if it could not store exactly the
// records asked for.
//
//	storebench ceiling  -mongo URI -db NAME -records N -seed S [-chunk 500]
//	storebench consumer -brokers B -mongo URI -db NAME -records N -group G [-batch 500] [-poll P]
//
// ceiling is the store's best: it builds, before its clock starts, the documents the pipeline stores for
// the first N messages of the workload of seed S (workload.Documents: the same messages the harness
// produces to Kafka, converted as the pipeline's transform does), connects and ensures the indexes, then
// writes them with one writer, unordered InsertMany of -chunk documents each. seconds runs from the first
// write to the last acknowledged one, wall_seconds from the process's start.
//
// consumer is a bare franz-go consumer group on messages.inbound from its start: it decodes each record
// (envelope.DecodeInbound, protobuf or protojson by content-type; signatures are not checked), converts
// it as the pipeline's transform does, stores it with unordered InsertMany of up to -batch records, and
// commits the records of a poll (-poll records at most, default -batch: one commit after each insert)
// once they are stored; it stops once N are stored. seconds and first_stored_seconds run from the
// process's start. -batch 1 -poll 1000 is the naive consumer: one insert per record, a commit per poll.
//
// -since (unix nanoseconds) sets the process's start to the moment its parent exec'ed it, so both
// baselines are timed from the same instant as the pipeline process. cpu_seconds is the process's own
// user+system time (getrusage) at its last insert.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/msgplatform/platform/internal/benchmark/ingest/workload"
	"github.com/msgplatform/platform/internal/envelope"
	"github.com/msgplatform/platform/internal/kafka"
	"github.com/msgplatform/platform/internal/store"
)

func main() {
	start := time.Now()
	if err := run(os.Args[1:], start, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "storebench:", err)
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprint(os.Stderr, usage)
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// usageError is a mistake on the command line (exit 2).
type usageError struct{ error }

const usage = `usage:
  storebench ceiling  -mongo URI -db NAME -records N -seed S [-chunk 500]
  storebench consumer -brokers B -mongo URI -db NAME -records N -group G [-batch 500] [-poll P]
`

// common are the flags of both modes.
type common struct {
	mongo, db string
	records   int
	since     int64
	timeout   time.Duration
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.mongo, "mongo", "", "MongoDB URI (required)")
	fs.StringVar(&c.db, "db", "", "database to write the messages collection of (required)")
	fs.IntVar(&c.records, "records", 0, "messages to store (required)")
	fs.Int64Var(&c.since, "since", 0, "unix nanoseconds of the process's start as its parent saw it (default: when main started)")
	fs.DurationVar(&c.timeout, "timeout", 5*time.Minute, "give up after this long")
}

func (c *common) check() error {
	switch {
	case c.mongo == "":
		return usageError{errors.New("-mongo is required")}
	case c.db == "":
		return usageError{errors.New("-db is required")}
	case c.records <= 0:
		return usageError{errors.New("-records must be positive")}
	}
	return nil
}

func run(args []string, start time.Time, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError{errors.New("no mode: want ceiling or consumer")}
	}
	mode, args := args[0], args[1:]
	fs := flag.NewFlagSet("storebench "+mode, flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), usage); fs.PrintDefaults() }
	var c common
	c.register(fs)
	var report workload.Report
	var err error
	switch mode {
	case "ceiling":
		seed := fs.Uint64("seed", 1, "workload seed (the harness's for this scenario)")
		chunk := fs.Int("chunk", store.DefaultBulkMaxDocs, "documents per InsertMany")
		var shape workload.Shape
		shapeFlags(fs, &shape)
		if err := parse(fs, args, &c); err != nil {
			return err
		}
		if *chunk <= 0 {
			return usageError{errors.New("-chunk must be positive")}
		}
		report, err = ceiling(c, start, *seed, shape, *chunk)
	case "consumer":
		brokers := fs.String("brokers", "", "Kafka seed brokers, comma-separated (required)")
		group := fs.String("group", "", "consumer group, new for every run (required)")
		batch := fs.Int("batch", store.DefaultBulkMaxDocs, "records per InsertMany")
		poll := fs.Int("poll", 0, "records per poll, committed once stored (default: -batch)")
		if err := parse(fs, args, &c); err != nil {
			return err
		}
		if *poll <= 0 {
			*poll = *batch
		}
		switch {
		case *brokers == "" || *group == "":
			return usageError{errors.New("-brokers and -group are required")}
		case *batch <= 0:
			return usageError{errors.New("-batch must be positive")}
		}
		report, err = consume(c, start, strings.Split(*brokers, ","), *group, *batch, *poll)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		return usageError{fmt.Errorf("unknown mode %q: want ceiling or consumer", mode)}
	}
	if err != nil {
		return fmt.Errorf("%s: %w", mode, err)
	}
	line, err := json.Marshal(report)
	if err != nil {
		return fmt.Errorf("encode the report: %w", err)
	}
	_, err = fmt.Fprintf(stdout, "%s\n", line)
	return err
}

func shapeFlags(fs *flag.FlagSet, s *workload.Shape) {
	fs.IntVar(&s.Tenants, "tenants", workload.DefaultTenants, "workload tenants")
	fs.IntVar(&s.Conversations, "conversations", workload.DefaultConversations, "workload conversations, in all")
	fs.IntVar(&s.Members, "members", workload.DefaultMembers, "members per conversation")
}

// parse parses the flags and checks the common ones.
func parse(fs *flag.FlagSet, args []string, c *common) error {
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected arguments %q", fs.Args())}
	}
	return c.check()
}

// origin is the instant the measured times run from: -since when given, else main's start.
func (c common) origin(start time.Time) time.Time {
	if c.since > 0 {
		return time.Unix(0, c.since)
	}
	return start
}

// ceiling writes the workload's documents with one writer (see the package comment).
func ceiling(c common, start time.Time, seed uint64, shape workload.Shape, chunk int) (workload.Report, error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	docs := workload.Documents(seed, shape, c.records)
	st, closeStore, err := openStore(ctx, c)
	if err != nil {
		return workload.Report{}, err
	}
	defer closeStore()

	var first time.Duration
	t0 := time.Now()
	for part := range slices.Chunk(docs, chunk) {
		n, dups, err := st.Messages.InsertMany(ctx, part)
		if err != nil {
			return workload.Report{}, fmt.Errorf("insert: %w", err)
		}
		if n != len(part) || dups != 0 {
			return workload.Report{}, fmt.Errorf("%d of %d inserted, %d duplicates: want a fresh database", n, len(part), dups)
		}
		if first == 0 {
			first = time.Since(t0)
		}
	}
	now := time.Now()
	return workload.Report{Records: len(docs), Seconds: now.Sub(t0).Seconds(), CPUSeconds: cpuSeconds(),
		FirstStoredSeconds: first.Seconds(), WallSeconds: now.Sub(c.origin(start)).Seconds()}, nil
}

// consume is the bare consumer (see the package comment).
func consume(c common, start time.Time, brokers []string, group string, batch, poll int) (workload.Report, error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	origin := c.origin(start)
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumerGroup(group), kgo.ConsumeTopics(kafka.TopicInbound),
		kgo.DisableAutoCommit(), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		return workload.Report{}, fmt.Errorf("kafka consumer: %w", err)
	}
	defer cl.Close()
	st, closeStore, err := openStore(ctx, c)
	if err != nil {
		return workload.Report{}, err
	}
	defer closeStore()

	var report workload.Report
	var last time.Time
	msgs := make([]store.Message, 0, batch)
	for report.Records < c.records {
		fetches := cl.PollRecords(ctx, min(poll, c.records-report.Records))
		if err := ctx.Err(); err != nil {
			return workload.Report{}, fmt.Errorf("%d of %d stored: %w", report.Records, c.records, err)
		}
		if errs := fetches.Errors(); len(errs) > 0 {
			return workload.Report{}, fmt.Errorf("poll %s[%d]: %w", errs[0].Topic, errs[0].Partition, errs[0].Err)
		}
		recs := fetches.Records()
		if len(recs) == 0 {
			continue
		}
		for part := range slices.Chunk(recs, batch) {
			msgs = msgs[:0]
			for _, rec := range part {
				in, err := envelope.DecodeInbound(rec)
				if err != nil {
					return workload.Report{}, fmt.Errorf("record %s[%d]@%d: %w", rec.Topic, rec.Partition, rec.Offset, err)
				}
				msgs = append(msgs, workload.Stored(in))
			}
			n, dups, err := st.Messages.InsertMany(ctx, msgs)
			if err != nil {
				return workload.Report{}, fmt.Errorf("insert: %w", err)
			}
			if n+dups != len(msgs) {
				return workload.Report{}, fmt.Errorf("%d of %d stored", n+dups, len(msgs))
			}
			last = time.Now()
			if report.Records == 0 {
				report.FirstStoredSeconds = last.Sub(origin).Seconds()
			}
			report.Records += len(msgs)
			report.Duplicates += dups
		}
		if err := cl.CommitRecords(ctx, recs...); err != nil {
			return workload.Report{}, fmt.Errorf("commit: %w", err)
		}
	}
	report.CPUSeconds = cpuSeconds()
	report.Seconds = last.Sub(origin).Seconds()
	return report, nil
}

// openStore connects to c.mongo and ensures c.db's indexes (the pipeline's own start-up does the same).
func openStore(ctx context.Context, c common) (*store.Store, func(), error) {
	client, err := store.Connect(ctx, c.mongo)
	if err != nil {
		return nil, nil, err
	}
	closeStore := func() { _ = client.Disconnect(context.Background()) }
	st := store.New(client.Database(c.db))
	if err := st.EnsureIndexes(ctx); err != nil {
		closeStore()
		return nil, nil, fmt.Errorf("indexes of %s: %w", c.db, err)
	}
	return st, closeStore, nil
}
