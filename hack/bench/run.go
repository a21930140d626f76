package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tallyhq/tally/test/testdb"
	"github.com/tallyhq/tally/workers/local"
	"github.com/tallyhq/tally/workers/natsserver"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
	"github.com/tallyhq/tally/workers/worker"
)

type modeConfig struct {
	durability    string
	adminURL      string
	duration      time.Duration
	freshDuration time.Duration
	manyWarmUp    time.Duration // of the many-tenants phase, before it measures
	settings      Settings
	log           *slog.Logger
	phases        []string // words of the phase names to run; all when empty
}

// env is what one durability mode runs on: a fresh JetStream store, a fresh database, and the
// pipeline of `tally local` (receiver over loopback HTTP, workers) on them.
type env struct {
	cfg      modeConfig
	js       jetstream.JetStream
	pool     *pgxpool.Pool
	pipeline *local.Pipeline
	baseURL  string
	writeKey string
	dbURL    string
	// registry holds the pipeline's receiver and worker metrics (lock waits, per-consumer rates).
	registry *prometheus.Registry
}

func runMode(ctx context.Context, cfg modeConfig) (*Result, error) {
	dir, err := os.MkdirTemp("", "tally-bench-nats-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	nc, shutdown, err := startNATS(ctx, dir, cfg)
	if err != nil {
		return nil, err
	}
	defer shutdown()
	defer nc.Close()

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

	// By default as tally local does: atomic batches when every write is fsynced, per message otherwise.
	atomic := cfg.durability == "always"
	if a := cfg.settings.AtomicBatches; a != "auto" {
		atomic = a == "on"
	}
	registry := prometheus.NewRegistry()
	p, err := local.NewPipeline(local.PipelineOptions{Conn: nc, Pool: pool, Registry: registry, AtomicBatches: atomic,
		BatchSize: cfg.settings.WorkerBatchSize, MaxWait: 50 * time.Millisecond, Logger: cfg.log})
	if err != nil {
		return nil, err
	}
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p.Start(listener)
	defer p.Stop(context.WithoutCancel(ctx)) //nolint:errcheck // the bench is over
	e := &env{cfg: cfg, js: p.JetStream(), pool: pool, pipeline: p, baseURL: "http://" + listener.Addr().String(),
		writeKey: "bench-write-key-0123456789abcdef", dbURL: dbURL, registry: registry}

	res := &Result{Durability: cfg.durability, Concurrency: cfg.concurrency()}
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
		{"many tenants, one of them big", e.manyTenants},
	}
	for _, step := range steps {
		if !cfg.runs(step.name) {
			continue
		}
		fmt.Fprintf(os.Stderr, "   %s ...\n", step.name)
		if err := step.run(ctx, res); err != nil {
			return nil, fmt.Errorf("%s: %w", step.name, err)
		}
	}
	return res, nil
}

// startNATS runs the embedded server, or with --nats-nodes 3 a JetStream cluster of three in this
// process, and connects to it (the first node: stream leaders are placed on any, so a cluster's
// publishes and deliveries cross the routes as they do between machines).
func startNATS(ctx context.Context, dir string, cfg modeConfig) (*nats.Conn, func(), error) {
	syncAlways := cfg.durability == "always"
	if cfg.settings.NATSNodes <= 1 {
		ns, err := natsserver.Start(natsserver.Options{StoreDir: dir, SyncAlways: syncAlways})
		if err != nil {
			return nil, nil, err
		}
		nc, err := nats.Connect(ns.ClientURL())
		if err != nil {
			ns.Shutdown()
			return nil, nil, err
		}
		return nc, ns.Shutdown, nil
	}
	nodes, err := natsserver.StartCluster(cfg.settings.NATSNodes, dir, syncAlways)
	if err != nil {
		return nil, nil, err
	}
	shutdown := func() {
		for _, ns := range nodes {
			ns.Shutdown()
		}
	}
	nc, err := nats.Connect(nodes[0].ClientURL())
	if err == nil {
		err = waitForReplicas(ctx, nc, len(nodes))
	}
	if err != nil {
		if nc != nil {
			nc.Close()
		}
		shutdown()
		return nil, nil, err
	}
	return nc, shutdown, nil
}

// waitForReplicas returns once the cluster places a stream of n replicas: it has elected the
// leader that places streams, and that leader knows n servers (it may be elected by two before
// it hears of the third).
func waitForReplicas(ctx context.Context, nc *nats.Conn, n int) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(time.Minute)
	for {
		attempt, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := js.CreateStream(attempt, jetstream.StreamConfig{Name: "BENCH_PROBE", Subjects: []string{"bench.probe"}, Replicas: n})
		if err == nil {
			err = js.DeleteStream(attempt, "BENCH_PROBE")
		}
		cancel()
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		case time.Now().After(deadline):
			return fmt.Errorf("the NATS cluster placed no stream of %d replicas in a minute: %w", n, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// concurrency is --concurrency, or when 0 the clients for the mode: with the default sync, the
// fewest that keep two cores busy (16 clients ingested no more than 8, at twice the latency); with
// fsync always, a trade of throughput against latency: a request waits for its shared batch's
// commit, and the more requests wait at once, the larger and fewer the batches. 8 clients
// ingested a third less than 16, 16 about a quarter less than 32 (37,208-49,540 events/s in six
// runs, at a p99 of 110-170 ms); 48 ingested a little more than 32, at a p99 of 172-216 ms.
func (cfg modeConfig) concurrency() int {
	switch {
	case cfg.settings.Concurrency > 0:
		return cfg.settings.Concurrency
	case cfg.durability == "always":
		return 32
	default:
		return 8
	}
}

// runs reports whether the phase is among those asked for (--phases): every phase when none
// were named, else those whose name contains one of the words.
func (cfg modeConfig) runs(phase string) bool {
	if len(cfg.phases) == 0 {
		return true
	}
	for _, p := range cfg.phases {
		if strings.Contains(phase, p) {
			return true
		}
	}
	return false
}

// newSource makes a source with its own stream, so each phase starts from an empty backlog.
func (e *env) newSource(ctx context.Context, name string) (*source.Config, error) {
	src := &source.Config{Namespace: "bench", Name: name, Tenant: "bench-" + name,
		AccountProperty: "accountId", WriteKeys: []string{e.writeKey + "-" + name}, Partitions: e.cfg.settings.Partitions,
		StreamReplicas: e.cfg.settings.NATSNodes}
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
	return src, e.pipeline.Serve(ctx, []*source.Config{src})
}

// servedWithWorker makes a fresh served source with one worker running on it, as tally local runs.
func (e *env) servedWithWorker(ctx context.Context, name string) (*source.Config, func(), error) {
	src, err := e.newServedSource(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	stop, err := e.pipeline.StartWorkers(src, e.cfg.settings.WorkerReplicas)
	return src, stop, err
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
