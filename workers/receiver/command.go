package receiver

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"golang.org/x/net/netutil"

	"github.com/tallyhq/tally/workers/gcpolicy"
	"github.com/tallyhq/tally/workers/natsauth"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
)

// commandConfig holds the flags of `tally receiver`.
type commandConfig struct {
	listen         string
	natsURL        string
	natsCreds      string
	sourceConfig   string
	writeKeysFile  string
	sharedSecrets  string
	publishTimeout time.Duration
	reloadInterval time.Duration
	maxPending     int
	shutdownDelay  time.Duration
	shutdownGrace  time.Duration
	atomicBatches  bool
	maxRequests    int
	maxBytes       int64
	maxConnections int
	headerTimeout  time.Duration
	// pool, when set, serves every member of a SegmentSourcePool instead of one source.
	pool             string
	sharedSecretsDir string
}

// NewCommand is `tally receiver`: the receiver of one SegmentSource as the operator deploys it,
// reading the source from the mounted ConfigMap and Secret and publishing to the stream the
// operator created.
func NewCommand() *cobra.Command {
	cfg := commandConfig{}
	cmd := &cobra.Command{
		Use:   "receiver",
		Short: "Serve Segment's Tracking API for one SegmentSource and publish to its JetStream stream",
		Example: `  # What the operator runs in a source's receiver pods
  tally receiver --listen :8080 --nats-url nats://nats:4222 --source-config /etc/tally/source/source.json \
    --write-keys-file /etc/tally/write-keys/writeKey

  # What the operator runs in a SegmentSourcePool's receiver pods: every member, by key digest
  tally receiver --pool platform/shared --nats-url nats://nats:4222 --shared-secrets-dir /etc/tally/shared-secrets`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
			gcpolicy.Apply(log)
			return runCommand(ctx, cfg, log, nil)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.listen, "listen", ":8080", "address to serve HTTP on")
	f.StringVar(&cfg.natsURL, "nats-url", nats.DefaultURL, "NATS server URL(s), comma-separated")
	f.StringVar(&cfg.natsCreds, "nats-creds", "", "NATS credentials file (optional)")
	f.StringVar(&cfg.sourceConfig, "source-config", "/etc/tally/source/"+source.ConfigFileName, "the source's settings, as the operator's ConfigMap mounts them")
	f.StringVar(&cfg.sharedSecrets, "shared-secrets-file", "", "the secrets Segment signs its deliveries to /v1/segment with (X-Signature), one per line; none when empty")
	f.StringVar(&cfg.writeKeysFile, "write-keys-file", "/etc/tally/write-keys/writeKey", "the source's write keys, one per line, as its Secret mounts them")
	f.DurationVar(&cfg.publishTimeout, "publish-timeout", source.DefaultPublishTimeout, "how long a request waits for JetStream's acknowledgements before answering 503")
	f.BoolVar(&cfg.atomicBatches, "atomic-batches", false, "publish requests as JetStream atomic batches, concurrent requests sharing them (group commit); faster only when NATS fsyncs every write (sync_interval: always)")
	f.DurationVar(&cfg.reloadInterval, "reload-interval", 10*time.Second, "how often the source files are re-read (key rotation)")
	f.IntVar(&cfg.maxPending, "max-pending", DefaultMaxPending, "unacknowledged publishes one request may have in flight")
	f.DurationVar(&cfg.shutdownDelay, "shutdown-delay", source.DefaultShutdownDelay, "on SIGTERM, how long to keep serving with /readyz at 503 before refusing new connections, so traffic moves to other receivers first")
	f.DurationVar(&cfg.shutdownGrace, "shutdown-timeout", 30*time.Second, "how long shutdown waits for requests in flight (after --shutdown-delay)")
	f.IntVar(&cfg.maxRequests, "max-requests-in-flight", DefaultMaxRequestsInFlight, "requests served at once; more are answered 429 with Retry-After")
	f.Int64Var(&cfg.maxBytes, "max-bytes-in-flight", DefaultMaxBytesInFlight, "bytes of request bodies and their messages held at once; past it requests are answered 429 with Retry-After (the default suits a 256 MiB memory limit)")
	f.IntVar(&cfg.maxConnections, "max-connections", DefaultMaxConnections, "open client connections; more wait in the listen backlog")
	f.DurationVar(&cfg.headerTimeout, "read-header-timeout", DefaultReadHeaderTimeout, "how long a connection may take to send a request's headers (slow senders are cut off)")
	f.StringVar(&cfg.pool, "pool", "", "serve every member of this SegmentSourcePool (namespace/name), read from the pool's JetStream bucket, instead of one source (--source-config and --write-keys-file are then unused)")
	f.StringVar(&cfg.sharedSecretsDir, "shared-secrets-dir", "", "with --pool: directory of the members' shared secrets, one file <namespace>.<name> per member, re-read every --reload-interval")
	return cmd
}

// runCommand runs the receiver until ctx ends, then shuts down gracefully: turn /readyz to 503
// and keep serving for the shutdown delay (Kubernetes routes traffic to a terminating pod until
// its endpoints update), then stop accepting, let the requests in flight finish (and their
// PubAcks arrive), then drain the NATS connection. ready, when set, learns the address it
// listens on.
func runCommand(ctx context.Context, cfg commandConfig, log *slog.Logger, ready func(addr string)) error {
	if cfg.pool != "" {
		return runPoolCommand(ctx, cfg, log, ready)
	}
	files := &sourceFiles{configFile: cfg.sourceConfig, writeKeysFile: cfg.writeKeysFile, sharedSecretsFile: cfg.sharedSecrets}
	src, err := files.load()
	if err != nil {
		return err
	}
	nc, err := connectNATS(cfg, src, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	rcv, err := newCommandReceiver(cfg, nc, log, []*source.Config{src})
	if err != nil {
		return err
	}
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go files.watch(watchCtx, cfg.reloadInterval, log, func(c *source.Config) error {
		return rcv.SetSources([]*source.Config{c})
	})
	return serve(ctx, cfg, rcv, rcv.Handler(), nc, log, ready, "source", src.String(), "writeKeys", len(src.WriteKeys))
}

// newCommandReceiver builds the receiver of the command on nc, with a metrics registry of its own.
func newCommandReceiver(cfg commandConfig, nc *nats.Conn, log *slog.Logger, sources []*source.Config) (*Receiver, error) {
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(max(4*cfg.maxPending, 4096)),
		// Acks a timed-out request stopped waiting for must not stay pending forever.
		jetstream.WithPublishAsyncTimeout(cfg.publishTimeout))
	if err != nil {
		return nil, err
	}
	// A registry of our own, not the default one: nothing registers behind our back.
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return New(Options{JetStream: js, Conn: nc, PublishTimeout: cfg.publishTimeout, MaxPending: cfg.maxPending,
		AtomicBatches: cfg.atomicBatches, Logger: log, Metrics: NewMetrics(reg), Gatherer: reg,
		MaxRequestsInFlight: cfg.maxRequests, MaxBytesInFlight: cfg.maxBytes},
		sources)
}

// serve serves handler until ctx ends, then shuts down gracefully (see runCommand). logAttrs
// describe what is served in the start-up line.
func serve(ctx context.Context, cfg commandConfig, rcv *Receiver, handler http.Handler, nc *nats.Conn, log *slog.Logger,
	ready func(addr string), logAttrs ...any,
) error {
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return err
	}
	ln = netutil.LimitListener(ln, cfg.maxConnections)
	srv := NewServer(cfg.listen, handler, cfg.publishTimeout)
	srv.ReadHeaderTimeout = cfg.headerTimeout
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	log.Info("receiver listening", append([]any{"addr", ln.Addr().String()}, logAttrs...)...)
	if ready != nil {
		ready(ln.Addr().String())
	}

	select {
	case err := <-serveErr:
		return err
	case <-ctx.Done():
	}
	rcv.Drain()
	// Connection: close on every answer from now on, so keep-alive clients reconnect through the
	// Service and reach a receiver that is staying.
	srv.SetKeepAlivesEnabled(false)
	log.Info("shutting down: unready, still serving", "delay", cfg.shutdownDelay)
	select {
	case err := <-serveErr:
		return err
	case <-time.After(cfg.shutdownDelay):
	}
	log.Info("shutting down: draining requests in flight")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), cfg.shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		log.Warn("requests still in flight at shutdown", "error", err)
	}
	if err := <-serveErr; err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("server stopped with an error", "error", err)
	}
	return stream.Drain(shutdownCtx, nc)
}

func connectNATS(cfg commandConfig, src *source.Config, log *slog.Logger) (*nats.Conn, error) {
	// Publishing while disconnected fails at once (a quick 503) instead of queueing messages
	// that the request has already given up on. PubAcks arrive on the source's receiver inbox,
	// the only one its NATS user may subscribe to.
	return stream.Connect(cfg.natsURL, cfg.natsCreds, "tally-receiver", log, nats.ReconnectBufSize(-1),
		natsauth.InboxOption(src.Stream(), natsauth.Receiver))
}
