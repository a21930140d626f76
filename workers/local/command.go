package local

import (
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/tallyhq/tally/workers/gcpolicy"
	"github.com/tallyhq/tally/workers/source"
)

// DefaultDatabaseURL is the machine's local Postgres; the database is created on first run.
const DefaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/tally?sslmode=disable"

// NewCommand is `tally local`.
func NewCommand() *cobra.Command {
	o := Options{}
	cmd := &cobra.Command{
		Use:   "local",
		Short: "Run receiver, workers and an embedded NATS server in one process against the local Postgres",
		Example: `  # The README's first command (make local): the sample SegmentSource and its write key
  tally local --manifests config/samples

  # Your own manifests, another database, the receiver on another port
  tally local --manifests ./tenants --database-url postgres://postgres@127.0.0.1:5432/tally_dev --listen :9000`,
		Long: `Runs the whole pipeline on this machine: an embedded NATS server with JetStream (files under
--data-dir), one receiver on --listen serving every SegmentSource found under --manifests (routed by
write key), and one worker per source writing into --database-url. Reads the same SegmentSource and
Secret manifests you would kubectl apply. Sources naming a SegmentSourcePool of the manifests
(spec.pool) are run as a cluster runs them: by the pool's one worker set, through its bucket.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			o.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
			gcpolicy.Apply(o.Logger)
			o.Out = cmd.OutOrStdout()
			o.Version = cmd.Root().Version
			return Run(ctx, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Manifests, "manifests", "config/samples", "directory of SegmentSource and Secret manifests")
	f.StringVar(&o.Listen, "listen", "127.0.0.1:8080", "address the receiver listens on")
	f.StringVar(&o.DataDir, "data-dir", ".tally/nats", "directory for JetStream's files")
	f.IntVar(&o.NATSPort, "nats-port", -1, "port of the embedded NATS server (-1 picks a free one)")
	f.BoolVar(&o.SyncAlways, "sync-always", false, "fsync every JetStream write before acknowledging (survives an OS crash)")
	f.StringVar(&o.DatabaseURL, "database-url", DefaultDatabaseURL, "Postgres URL; the database is created if missing")
	f.IntVar(&o.BatchSize, "batch-size", source.DefaultBatchSize, "messages a worker commits in one transaction")
	f.DurationVar(&o.MaxWait, "max-wait", source.DefaultMaxWait, "how long a worker's pull stays open to fill a batch; what it has is mapped once an eighth of this old and arrivals pause")
	return cmd
}
