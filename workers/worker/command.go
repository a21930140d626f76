package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/tallyhq/tally/workers/gcpolicy"
	"github.com/tallyhq/tally/workers/insights"
	"github.com/tallyhq/tally/workers/natsauth"
	"github.com/tallyhq/tally/workers/pool"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
)

// Flags left out on the command line come from TALLY_* variables (bound by main after parsing), so
// required flags are checked in RunE rather than with cobra's MarkFlagRequired.

// Commands are the worker's subcommands of the tally binary: worker and migrate.
func Commands() []*cobra.Command {
	return []*cobra.Command{workerCommand(), migrateCommand()}
}

// configReloadInterval is how often the worker re-reads its mounted source settings, so a change
// of accountProperty or ignoredEvents applies without a restart.
const configReloadInterval = 15 * time.Second

func workerCommand() *cobra.Command {
	var natsURL, natsCreds, databaseURL, sourceConfig, metricsListen, insightsKeyFile string
	var batchSize, batchBytes int
	var maxWait, statementTimeout, lockTimeout time.Duration
	var poolName, credentialsDir string
	var reloadInterval time.Duration
	var poolMaxConns, poolMaxConnsTotal int
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Map one source's messages from JetStream into Postgres",
		Example: `  # What the operator runs in a source's worker pods (the URL comes from TALLY_DATABASE_URL there)
  tally worker --nats-url nats://nats:4222 --source-config /etc/tally/source/source.json \
    --database-url postgres://tally_t_1234@db:5432/tally

  # What the operator runs in a SegmentSourcePool's worker pods: every member, each on its tenant's login
  tally worker --pool platform/shared --nats-url nats://nats:4222 --credentials-dir /etc/tally/credentials`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			log := slog.Default()
			gcpolicy.Apply(log)
			if poolName != "" {
				ref, err := pool.ParseRef(poolName)
				if err != nil {
					return err
				}
				return runPool(ctx, poolCommand{ref: ref, natsURL: natsURL, natsCreds: natsCreds, databaseURL: databaseURL,
					credentialsDir: credentialsDir, metricsListen: metricsListen, reloadInterval: reloadInterval,
					maxConns: poolMaxConns, maxConnsTotal: poolMaxConnsTotal, version: cmd.Root().Version,
					worker: Options{BatchSize: batchSize, MaxWait: maxWait, BatchBytes: batchBytes,
						StatementTimeout: statementTimeout, LockTimeout: lockTimeout}}, log)
			}
			if databaseURL == "" {
				return errors.New("--database-url (or TALLY_DATABASE_URL) is required")
			}
			src, err := source.LoadConfigFile(sourceConfig)
			if err != nil {
				return err
			}
			if err := Migrate(ctx, databaseURL); err != nil {
				return err
			}
			pool, err := pgxpool.New(ctx, databaseURL)
			if err != nil {
				return err
			}
			defer pool.Close()
			// Replies (fetched messages among them) arrive on the source's worker inbox, the only
			// one its NATS user may subscribe to.
			js, reg, drain, err := connectWorker(natsURL, natsCreds, log, natsauth.InboxOption(src.Stream(), natsauth.Worker))
			if err != nil {
				return err
			}
			defer drain()
			w, err := New(Options{Pool: pool, JetStream: js, Source: src,
				BatchSize: batchSize, MaxWait: maxWait, Logger: log, Metrics: NewMetrics(reg),
				BatchBytes: batchBytes, StatementTimeout: statementTimeout, LockTimeout: lockTimeout})
			if err != nil {
				return err
			}
			srv := serveMetrics(metricsListen, reg, w, pool, log)
			defer srv.Close()
			go reloadSource(ctx, w, sourceConfig, log)
			if src.Insights != nil {
				stopInsights, err := runInsights(ctx, src, databaseURL, insightsKeyFile, cmd.Root().Version, reg, log)
				if err != nil {
					return err
				}
				defer stopInsights()
			}
			log.Info("worker started", "source", src.String(), "tenant", src.Tenant)
			return w.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&natsURL, "nats-url", nats.DefaultURL, "NATS server URL")
	f.StringVar(&natsCreds, "nats-creds", "", "NATS credentials file (optional)")
	f.StringVar(&databaseURL, "database-url", "", "Postgres URL (or TALLY_DATABASE_URL)")
	f.StringVar(&sourceConfig, "source-config", "/etc/tally/source/"+source.ConfigFileName, "the source's settings file, re-read periodically")
	f.IntVar(&batchSize, "batch-size", source.DefaultBatchSize, "messages per batch transaction")
	f.DurationVar(&maxWait, "max-wait", source.DefaultMaxWait, "how long a pull stays open to fill a batch; what it has is mapped once an eighth of this old and arrivals pause")
	f.IntVar(&batchBytes, "batch-bytes", DefaultBatchBytes, "most bytes of messages fetched in one batch")
	f.DurationVar(&statementTimeout, "statement-timeout", DefaultStatementTimeout, "Postgres statement_timeout of each statement of a batch transaction")
	f.DurationVar(&lockTimeout, "lock-timeout", DefaultLockTimeout, "Postgres lock_timeout of each lock wait in a batch transaction (the tenant's lock included)")
	f.StringVar(&metricsListen, "metrics-listen", ":9090", "address serving /metrics, /healthz and /readyz")
	f.StringVar(&insightsKeyFile, "insights-write-key-file", "", "file holding the write key insights are pushed with (needed when the source settings have insights)")
	f.StringVar(&poolName, "pool", "", "run every member of this SegmentSourcePool (namespace/name), read from the pool's JetStream bucket, instead of one source (--source-config is then unused)")
	f.StringVar(&credentialsDir, "credentials-dir", "", "with --pool: directory of the pool's own login (pool.database-url), and per member <namespace>.<name>.database-role (its tenant's role, granted to the pool's login, which names the tenant for its transactions) or .database-url (a login of its own; with neither, --database-url) and .insights-write-key")
	f.DurationVar(&reloadInterval, "reload-interval", 10*time.Second, "with --pool: how often the credentials directory is re-read")
	f.IntVar(&poolMaxConns, "max-conns-per-login", DefaultPoolMaxConns, "with --pool: most Postgres connections per login of a member's own (a source naming its database Secret; idle ones close); the pool's own login may use all of --max-conns")
	f.IntVar(&poolMaxConnsTotal, "max-conns", DefaultPoolMaxConnsTotal, "with --pool: most Postgres connections over all logins (idle ones are closed when others need one)")
	return cmd
}

// runInsights runs the source's insights pusher beside the worker, on a connection of its own,
// until the returned stop. Of all the worker replicas, the one holding the source's lock pushes.
func runInsights(ctx context.Context, src *source.Config, databaseURL, keyFile, version string,
	reg prometheus.Registerer, log *slog.Logger,
) (stop func(), err error) {
	if keyFile == "" {
		return nil, errors.New("the source settings have insights: --insights-write-key-file is required")
	}
	data, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("insights write key: %w", err)
	}
	keys := source.ParseWriteKeys(string(data))
	if len(keys) == 0 {
		return nil, fmt.Errorf("insights write key: %s holds no key", keyFile)
	}
	return startPusher(ctx, src, DatabaseLogin{URL: databaseURL}, keys[0], version, insights.NewMetrics(reg), log)
}

// startPusher runs the source's insights pusher, pushing with writeKey, until the returned stop.
func startPusher(ctx context.Context, src *source.Config, login DatabaseLogin, writeKey, version string,
	metrics *insights.Metrics, log *slog.Logger,
) (stop func(), err error) {
	conn, err := login.connConfig(src.Tenant)
	if err != nil {
		return nil, err
	}
	settings := *src.Insights
	settings.WriteKey = writeKey
	withKey := *src
	withKey.Insights = &settings
	p, err := insights.New(insights.Options{Source: &withKey, Conn: conn, LibraryVersion: version,
		Logger: log, Metrics: metrics})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = p.Run(ctx)
	}()
	return func() { cancel(); <-done }, nil
}

func reloadSource(ctx context.Context, w *Worker, file string, log *slog.Logger) {
	t := time.NewTicker(configReloadInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c, err := source.LoadConfigFile(file)
		if err == nil {
			err = w.UpdateSource(ctx, c)
		}
		if err != nil {
			log.Warn("source settings not reloaded", "file", file, "err", err)
		}
	}
}

func serveMetrics(addr string, reg prometheus.Gatherer, w *Worker, pool *pgxpool.Pool, log *slog.Logger) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(rw http.ResponseWriter, _ *http.Request) { _, _ = rw.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(rw http.ResponseWriter, r *http.Request) {
		if !w.Ready() {
			http.Error(rw, "not ready: consumer not bound or Postgres unavailable", http.StatusServiceUnavailable)
			return
		}
		// An idle worker has no failing batch to notice Postgres going away; ask it.
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := pool.Ping(ctx); err != nil {
			http.Error(rw, "not ready: Postgres unavailable", http.StatusServiceUnavailable)
			return
		}
		_, _ = rw.Write([]byte("ok\n"))
	})
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "addr", addr, "err", err)
		}
	}()
	return srv
}

func migrateCommand() *cobra.Command {
	var databaseURL string
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Create or upgrade the tally schema in Postgres",
		Example: `  # As the schema's owner (the operator's manager does this by itself at start)
  tally migrate --database-url postgres://tally:secret@db:5432/tally`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if databaseURL == "" {
				return errors.New("--database-url (or TALLY_DATABASE_URL) is required")
			}
			return MigrateWithProgress(cmd.Context(), databaseURL, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&databaseURL, "database-url", "", "Postgres URL (or TALLY_DATABASE_URL)")
	return cmd
}

// connectWorker opens a worker process's NATS connection (replies on the inbox its NATS user may
// subscribe to) and its metrics registry. drain waits for the connection's drain, so the last
// batches' acks reach NATS before the process exits.
func connectWorker(natsURL, natsCreds string, log *slog.Logger, inbox nats.Option) (js jetstream.JetStream, reg *prometheus.Registry, drain func(), err error) {
	nc, err := stream.Connect(natsURL, natsCreds, "tally-worker", log, inbox)
	if err != nil {
		return nil, nil, nil, err
	}
	drain = func() {
		drainCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = stream.Drain(drainCtx, nc)
	}
	if js, err = jetstream.New(nc); err != nil {
		drain()
		return nil, nil, nil, err
	}
	// A registry of our own, not the default one: nothing registers behind our back.
	reg = prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return js, reg, drain, nil
}
