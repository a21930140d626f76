// Package local runs the whole pipeline in one process for a first-time user: an embedded NATS
// server with JetStream, the receiver for every SegmentSource found in a directory of manifests,
// and one worker per source writing into Postgres. Its Pipeline is also what the bench measures.
package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"golang.org/x/net/netutil"

	"github.com/tallyhq/tally/workers/natsauth"
	"github.com/tallyhq/tally/workers/natsserver"
	"github.com/tallyhq/tally/workers/receiver"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
	"github.com/tallyhq/tally/workers/worker"
)

// Options shape a local run.
type Options struct {
	Manifests   string // directory of SegmentSource and Secret manifests
	Listen      string // receiver address
	DataDir     string // JetStream files
	NATSPort    int    // -1 picks a free port
	SyncAlways  bool   // fsync every JetStream write before acknowledging
	DatabaseURL string
	BatchSize   int
	MaxWait     time.Duration
	Logger      *slog.Logger
	// Out receives the start-up banner (endpoint and write keys), meant for the person at the
	// terminal, never for the logs.
	Out io.Writer
	// Version is Tally's version: context.library.version of the insights pushed.
	Version string
}

// Run starts everything and blocks until ctx is cancelled, then shuts down in order: stop taking
// requests and drain those in flight, let workers finish their batch, drain NATS.
func Run(ctx context.Context, o Options) error {
	log := o.Logger
	sources, err := LoadManifests(o.Manifests)
	if err != nil {
		return err
	}
	pools, err := poolMembership(o.Manifests, sources)
	if err != nil {
		return err
	}

	// NATS in decentralized JWT mode, as a cluster with per-source NATS users runs it: this
	// connection (the admin) creates the streams, the receiver and each source's workers
	// connect as users of their own.
	auth, adminCreds, err := natsAuth(o.DataDir, log)
	if err != nil {
		return err
	}
	ns, err := natsserver.Start(natsserver.Options{Port: o.NATSPort, StoreDir: o.DataDir, SyncAlways: o.SyncAlways, Auth: auth})
	if err != nil {
		return err
	}
	defer ns.Shutdown()
	adminOpts := []nats.Option{nats.Name("tally-local"), nats.MaxReconnects(-1)}
	var users *natsUsers
	if auth != nil {
		opt, err := natsauth.CredsOption(adminCreds)
		if err != nil {
			return err
		}
		adminOpts = append(adminOpts, opt)
		if users, err = newNATSUsers(ns.ClientURL(), auth); err != nil {
			return err
		}
	}
	nc, err := nats.Connect(ns.ClientURL(), adminOpts...)
	if err != nil {
		return err
	}
	defer nc.Close()

	if err := EnsureDatabase(ctx, o.DatabaseURL); err != nil {
		return err
	}
	if err := worker.Migrate(ctx, o.DatabaseURL); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	pool, err := pgxpool.New(ctx, o.DatabaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()

	tenants := newTenantPools(pool, o.DatabaseURL, log)
	defer tenants.Close()

	// With fsync on every write, one atomic batch per request saves an fsync per message.
	popts := PipelineOptions{Conn: nc, Pool: pool, TenantPool: tenants.Pool, PoolLogins: tenants, AtomicBatches: o.SyncAlways,
		BatchSize: o.BatchSize, MaxWait: o.MaxWait, Logger: log}
	if users != nil {
		if popts.ReceiverConn, err = users.receiver(sources); err != nil {
			return err
		}
		defer func() { _ = users.drain(context.Background()) }() // on an early return; a no-op after the drain below
		popts.WorkerConn = users.worker
		popts.PoolWorkerConn = users.poolWorker
	}
	p, err := NewPipeline(popts)
	if err != nil {
		return err
	}
	if err := p.Serve(ctx, sources); err != nil {
		return err
	}
	listener, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return err
	}
	listener = netutil.LimitListener(listener, receiver.DefaultMaxConnections)
	// Sources of a pool are run by the pool's one worker set, the others by workers of their own.
	members := map[poolRef][]*source.Config{}
	for _, src := range sources {
		if ref, ok := pools[src.String()]; ok {
			members[ref] = append(members[ref], src)
			continue
		}
		if _, err := p.StartWorkers(src, 1); err != nil {
			return errors.Join(err, p.Stop(ctx))
		}
	}
	for ref, srcs := range members {
		if err := p.StartPool(ctx, ref, srcs); err != nil {
			return errors.Join(err, p.Stop(ctx))
		}
	}
	p.Start(listener)
	// After the receiver: insights may go to this very receiver.
	for _, src := range sources {
		if src.Insights == nil {
			continue
		}
		if _, err := p.StartInsights(src, o.Version); err != nil {
			return errors.Join(err, p.Stop(ctx))
		}
	}
	printBanner(o.Out, listener.Addr().String(), ns.ClientURL(), o.DatabaseURL, sources, pools)
	if users != nil {
		fmt.Fprintf(o.Out, "NATS checks users: each source's workers and the receiver have their own; every permission: %s\n",
			filepath.Join(o.DataDir, AdminCredsFile))
	}

	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err = <-p.Err():
		log.Error("stopping after a failure", "err", err)
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if e := p.Stop(shutdownCtx); e != nil {
		log.Warn("http shutdown", "err", e)
	}
	if users != nil {
		if e := users.drain(shutdownCtx); e != nil {
			log.Warn("nats drain", "err", e)
		}
	}
	// Wait until the workers' last acks and naks are flushed before the embedded server stops,
	// or the held messages wait out the ack wait after a restart.
	if e := stream.Drain(shutdownCtx, nc); e != nil {
		log.Warn("nats drain", "err", e)
	}
	return err
}

// EnsureDatabase creates the database named in url when it does not exist yet, so a first run on
// a fresh machine needs nothing but a running Postgres server.
func EnsureDatabase(ctx context.Context, url string) error {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return fmt.Errorf("database url: %w", err)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err == nil {
		return conn.Close(ctx)
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != pgerrcode.InvalidCatalogName { // no such database
		return fmt.Errorf("connect to Postgres: %w", err)
	}
	name := cfg.Database
	cfg.Database = "postgres"
	admin, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect to Postgres to create database %q: %w", name, err)
	}
	defer admin.Close(ctx)
	_, err = admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	return err
}

func printBanner(out io.Writer, addr, natsURL, dbURL string, sources []*source.Config, pools map[string]poolRef) {
	fmt.Fprintf(out, "Tally is running.\n  receiver:  http://%s\n  nats:      %s\n  postgres:  %s\n", addr, natsURL, redactURL(dbURL))
	for _, s := range sources {
		fmt.Fprintf(out, "  source %s (tenant %s)\n", s, s.Tenant)
		if ref, ok := pools[s.String()]; ok {
			fmt.Fprintf(out, "    pool:      %s\n", ref)
		}
		for _, k := range s.WriteKeys {
			fmt.Fprintf(out, "    write key: %s\n", k)
		}
		if s.Insights != nil {
			fmt.Fprintf(out, "    insights:  to %s every %s\n", s.Insights.Endpoint, s.Insights.Interval)
		}
		if l := s.RateLimit; l != nil {
			fmt.Fprintf(out, "    limit:     %d events/s, bursts of %d\n", l.EventsPerSecond, l.BurstOrDefault())
		}
	}
	fmt.Fprintf(out, "Send a first event:\n  curl -u '%s:' -H 'Content-Type: application/json' http://%s/v1/track -d '{\"userId\":\"u1\",\"event\":\"Signed In\"}'\n",
		firstKey(sources), addr)
}

// redactURL hides a password in a database URL before it is printed.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable database url)"
	}
	return u.Redacted()
}

func firstKey(sources []*source.Config) string {
	for _, s := range sources {
		if len(s.WriteKeys) > 0 {
			return s.WriteKeys[0]
		}
	}
	return ""
}
