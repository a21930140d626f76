package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tallyhq/tally/test/testdb"
	"github.com/tallyhq/tally/workers/natsserver"
	"github.com/tallyhq/tally/workers/receiver"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
	"github.com/tallyhq/tally/workers/worker"
)

type modeConfig struct {
	durability    string
	adminURL      string
	duration      time.Duration
	freshDuration time.Duration
	settings      Settings
	log           *slog.Logger
}

// env is what one durability mode runs on: a fresh JetStream store, a fresh database, and the
// receiver served over loopback HTTP exactly as `tally local` serves it.
type env struct {
	cfg      modeConfig
	js       jetstream.JetStream
	pool     *pgxpool.Pool
	recv     *receiver.Receiver
	baseURL  string
	writeKey string
}

func runMode(ctx context.Context, cfg modeConfig) (*Result, error) {
	dir, err := os.MkdirTemp("", "tally-bench-nats-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	ns, err := natsserver.Start(natsserver.Options{StoreDir: dir, SyncAlways: cfg.durability == "always"})
	if err != nil {
		return nil, err
	}
	defer ns.Shutdown()
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(source.DefaultPublishTimeout))
	if err != nil {
		return nil, err
	}

	dbURL, drop, err := testdb.FreshOn(ctx, cfg.adminURL, "bench")
	if err != nil {
		return nil, err
	}
	defer drop()
	if err := worker.Migrate(ctx, dbURL); err != nil {
		return nil, err
	}
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return nil, err
	}
	defer pool.Close()

	e := &env{cfg: cfg, js: js, pool: pool, writeKey: "bench-write-key-0123456789abcdef"}
	// As tally local does: atomic batches when every write is fsynced, per message otherwise.
	e.recv, err = receiver.New(receiver.Options{JetStream: js, Conn: nc, AtomicBatches: cfg.durability == "always", Logger: cfg.log}, nil)
	if err != nil {
		return nil, err
	}
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	server := receiver.NewServer("", e.recv.Handler(), source.DefaultPublishTimeout)
	go server.Serve(listener) //nolint:errcheck // closed below
	defer server.Close()
	e.baseURL = "http://" + listener.Addr().String()

	res := &Result{Durability: cfg.durability}
	steps := []struct {
		name string
		run  func(context.Context, *Result) error
	}{
		{"JetStream publish ceiling", e.publishCeiling},
		{"Postgres COPY ceiling", e.copyCeiling},
		{"ingest, 100-message batches", e.ingestBatches},
		{"ingest, single messages", e.ingestSingles},
		{"end to end into rows", e.endToEnd},
		{"freshness at a steady rate", e.freshness},
	}
	for _, step := range steps {
		fmt.Fprintf(os.Stderr, "   %s ...\n", step.name)
		if err := step.run(ctx, res); err != nil {
			return nil, fmt.Errorf("%s: %w", step.name, err)
		}
	}
	return res, nil
}

// newSource makes a source with its own stream, so each phase starts from an empty backlog.
func (e *env) newSource(ctx context.Context, name string) (*source.Config, error) {
	src := &source.Config{Namespace: "bench", Name: name, Tenant: "bench-" + name,
		AccountProperty: "accountId", WriteKeys: []string{e.writeKey + "-" + name}}
	if err := stream.Ensure(ctx, e.js, src.Stream(), src.StreamSettings()); err != nil {
		return nil, err
	}
	return src, nil
}

// newServedSource makes a fresh source and points the receiver at it alone.
func (e *env) newServedSource(ctx context.Context, name string) (*source.Config, error) {
	src, err := e.newSource(ctx, name)
	if err != nil {
		return nil, err
	}
	return src, e.recv.SetSources([]*source.Config{src})
}

// servedWithWorker makes a fresh served source with one worker running on it, as tally local runs.
func (e *env) servedWithWorker(ctx context.Context, name string) (*source.Config, func(), error) {
	src, err := e.newServedSource(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	stop, err := e.startWorkers(ctx, src, 1)
	return src, stop, err
}

// startWorkers runs n workers on src until the returned stop is called.
func (e *env) startWorkers(ctx context.Context, src *source.Config, n int) (stop func(), err error) {
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{}, n)
	for i := 0; i < n; i++ {
		w, err := worker.New(worker.Options{Pool: e.pool, JetStream: e.js, Source: src,
			BatchSize: e.cfg.settings.WorkerBatchSize, MaxWait: 50 * time.Millisecond, Logger: e.cfg.log})
		if err != nil {
			cancel()
			return nil, err
		}
		go func() { _ = w.Run(wctx); done <- struct{}{} }()
	}
	return func() {
		cancel()
		for i := 0; i < n; i++ {
			<-done
		}
	}, nil
}

// drained waits until every message of src's stream is acknowledged by a worker, which happens
// only after its rows committed.
func (e *env) drained(ctx context.Context, src *source.Config, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		st, err := stream.Inspect(ctx, e.js, src.Stream())
		if err != nil {
			return err
		}
		if st.Backlog == 0 {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("backlog of %s not drained after %s", src, timeout)
}
