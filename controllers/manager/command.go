// Package manager is `tally manager`: the operator process. It wires flags, logging, the
// controller-runtime manager (caches, leader election, metrics and health endpoints) and the NATS
// connection to the SegmentSource reconciler; the reconciling itself is in package controllers.
package manager

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/config"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers"
	"github.com/tallyhq/tally/controllers/resources"
	"github.com/tallyhq/tally/workers/stream"
)

// DefaultImage runs the receiver and workers when neither --workload-image nor TALLY_POD_IMAGE is
// set. Kubernetes cannot hand a pod its own image, so config/manager sets TALLY_POD_IMAGE to the
// manager's image and the workloads run the same build as the operator.
const DefaultImage = "ghcr.io/tallyhq/tally:latest"

// Options are the manager's settings, one field per flag.
type Options struct {
	NATSURL            string
	NATSCreds          string
	NATSCredsSecret    string
	NATSCredsSecretKey string
	WorkloadImage      string
	DatabaseSecret     string
	DatabaseSecretKey  string
	// TenantDatabaseRoles: each tenant's workers get a login of their own (row-level security)
	// instead of a copy of the manager's.
	TenantDatabaseRoles bool
	ManagerNamespace    string
	WatchNamespace      string
	RequeueInterval     time.Duration
	// MaxConcurrentReconciles of each controller; KubeAPIQPS and KubeAPIBurst bound the
	// manager's requests to the API server (thousands of sources need more than client-go's 5/10).
	MaxConcurrentReconciles int
	KubeAPIQPS              float32
	KubeAPIBurst            int
	// StreamMaxBytes is the size of a source's stream when its SegmentSource sets none.
	StreamMaxBytes resource.Quantity
	NATSTimeout    time.Duration
	// ReceiverResources and WorkerResources apply to sources whose spec sets no resources.
	ReceiverResources corev1.ResourceRequirements
	WorkerResources   corev1.ResourceRequirements
	// ReceiverAtomicBatches runs the receivers with group commit, for NATS that fsyncs every write.
	ReceiverAtomicBatches bool
	// RequireTenant refuses a SegmentSource unless a Tenant lists its namespace.
	RequireTenant bool

	// NATSSigningKeySecret names a Secret holding the NATS account signing key (an nkey seed under
	// NATSSigningKeySecretKey): each source then gets NATS users of its own (see
	// controllers.Config). NATSAccount is the account's public key, for a signing key that is not
	// the account's own; NATSUserTTL bounds an issued user's life (0: no expiry).
	NATSSigningKeySecret    string
	NATSSigningKeySecretKey string
	NATSAccount             string
	NATSUserTTL             time.Duration

	MetricsAddr       string
	ProbeAddr         string
	LeaderElect       bool
	LeaderElectionID  string
	LeaseDuration     time.Duration
	RenewDeadline     time.Duration
	RetryPeriod       time.Duration
	LogLevel          string
	LogFormat         string
	GracefulShutdown  time.Duration
	EventRecorderName string
	// SkipControllerNameValidation lets a process start the manager more than once (tests that
	// restart it with other options); controller-runtime otherwise refuses a second controller
	// of the same name.
	SkipControllerNameValidation bool
}

// NewCommand is `tally manager`.
func NewCommand() *cobra.Command {
	o := &Options{
		ReceiverResources: resources.DefaultReceiverResources(),
		WorkerResources:   resources.DefaultWorkerResources(),
	}
	cmd := &cobra.Command{
		Use:   "manager",
		Short: "Run the operator: reconcile SegmentSources into receivers, workers and JetStream streams",
		Example: `  # What the Helm chart runs (flags also read TALLY_<FLAG>)
  tally manager --nats-url nats://nats.nats.svc:4222 --database-secret tally-database \
    --manager-namespace tally-system --require-tenant`,
		Long: `Run the operator. It reconciles every SegmentSource into a ConfigMap, a receiver Deployment and
Service, a worker Deployment, a JetStream stream and consumer, and a status with Ready and Receiving
conditions. The Kubernetes connection comes from --kubeconfig, $KUBECONFIG, the in-cluster service
account or ~/.kube/config, in that order. Every flag may also be set as TALLY_<FLAG>.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.NATSURL == "" {
				return errors.New("--nats-url is required")
			}
			ctx := cmd.Context()
			if ctx == nil || ctx.Done() == nil {
				// Not cancellable (plain Execute): stop on SIGTERM/SIGINT, as in a pod.
				ctx = ctrl.SetupSignalHandler()
			}
			return Run(ctx, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.NATSURL, "nats-url", "", "NATS server URL(s), comma-separated; used by the manager and passed to the pods (required)")
	f.StringVar(&o.NATSCreds, "nats-creds", "", "NATS credentials file for the manager's own connection")
	f.StringVar(&o.NATSCredsSecret, "nats-creds-secret", "", "Secret in the manager's namespace holding a NATS credentials file for the pods; copied into each source's namespace")
	f.StringVar(&o.NATSCredsSecretKey, "nats-creds-secret-key", "nats.creds", "key of --nats-creds-secret holding the credentials file")
	f.StringVar(&o.NATSSigningKeySecret, "nats-account-signing-key-secret", "", "Secret in the manager's namespace holding a signing key (nkey seed, SA...) of the NATS account the streams live in (NATS in JWT mode): each source's receiver and workers then get NATS users of their own that reach only that source's subjects, instead of --nats-creds-secret")
	f.StringVar(&o.NATSSigningKeySecretKey, "nats-account-signing-key-secret-key", "seed", "key of --nats-account-signing-key-secret holding the seed")
	f.StringVar(&o.NATSAccount, "nats-account", "", "public key (A...) of the NATS account, when the signing key is not the account's identity key; else read from the key \"account\" of --nats-account-signing-key-secret, else the signing key's own")
	f.DurationVar(&o.NATSUserTTL, "nats-user-ttl", 90*24*time.Hour, "how long an issued NATS user is valid; it is re-issued (and the pods rolled) when a third is left; 0: no expiry")
	f.StringVar(&o.WorkloadImage, "workload-image", envOr("TALLY_POD_IMAGE", DefaultImage), "image of the receiver and worker pods; defaults to $TALLY_POD_IMAGE (the manager's own image), else "+DefaultImage)
	f.StringVar(&o.DatabaseSecret, "database-secret", "", "Secret in the manager's namespace with the Postgres URL, copied for sources that name none")
	f.StringVar(&o.DatabaseSecretKey, "database-secret-key", "url", "key of --database-secret holding the Postgres URL")
	f.BoolVar(&o.TenantDatabaseRoles, "tenant-database-roles", true, "give each tenant its own Postgres login that reaches only its rows (the --database-secret login must own the schema and have CREATEROLE); false: every source gets a copy of the manager's URL")
	f.StringVar(&o.ManagerNamespace, "manager-namespace", envOr("POD_NAMESPACE", "tally-system"), "namespace of the manager's Secrets and leader election Lease; defaults to $POD_NAMESPACE")
	f.StringVar(&o.WatchNamespace, "watch-namespace", "", "reconcile SegmentSources of this namespace only (default: all)")
	f.BoolVar(&o.RequireTenant, "require-tenant", true, "refuse a SegmentSource unless a Tenant (cluster-scoped, written by cluster administrators) lists its namespace; false: a tenant belongs to the namespace of its first SegmentSource, recorded as a Tenant the operator creates")
	o.StreamMaxBytes = resource.MustParse("1Gi")
	f.Var(quantityFlag{&o.StreamMaxBytes}, "stream-max-bytes", "the most a source's stream may hold when its SegmentSource sets no spec.stream.maxBytes (a full stream refuses that source's new messages; others flow)")
	f.DurationVar(&o.RequeueInterval, "requeue-interval", 15*time.Second, "how often each source's stream, consumer and message status are re-checked (±10% jitter)")
	f.DurationVar(&o.NATSTimeout, "nats-timeout", 5*time.Second, "timeout of each JetStream request")
	f.IntVar(&o.MaxConcurrentReconciles, "max-concurrent-reconciles", 4, "SegmentSources (and pools) reconciled at once; more shortens the first pass over thousands of sources")
	f.Float32Var(&o.KubeAPIQPS, "kube-api-qps", 50, "requests per second the manager may send the API server (sustained)")
	f.IntVar(&o.KubeAPIBurst, "kube-api-burst", 100, "requests the manager may send the API server in a burst")
	f.Var(resourcesFlag{&o.ReceiverResources}, "receiver-resources", "resources (JSON ResourceRequirements) of receiver containers whose SegmentSource sets none in spec.receiver.resources; {} for none")
	f.BoolVar(&o.ReceiverAtomicBatches, "receiver-atomic-batches", false, "run every receiver with --atomic-batches: concurrent requests' messages published as shared JetStream atomic batches (group commit), one fsync each; for NATS servers that fsync every write (sync_interval: always), where it multiplies ingest, and slower otherwise")
	f.Var(resourcesFlag{&o.WorkerResources}, "worker-resources", "resources (JSON ResourceRequirements) of worker containers whose SegmentSource sets none in spec.worker.resources; {} for none")
	f.StringVar(&o.MetricsAddr, "metrics-bind-address", ":8080", "address of the Prometheus metrics endpoint; 0 disables it")
	f.StringVar(&o.ProbeAddr, "health-probe-bind-address", ":8081", "address of the /healthz and /readyz endpoints")
	f.BoolVar(&o.LeaderElect, "leader-elect", true, "elect a leader, so only one manager replica reconciles at a time")
	f.StringVar(&o.LeaderElectionID, "leader-election-id", "tally-manager.tally.dev", "name of the leader election Lease")
	f.DurationVar(&o.LeaseDuration, "leader-elect-lease-duration", 15*time.Second, "how long non-leaders wait before taking over an unrenewed lease")
	f.DurationVar(&o.RenewDeadline, "leader-elect-renew-deadline", 10*time.Second, "how long the leader retries renewing before giving up leadership")
	f.DurationVar(&o.RetryPeriod, "leader-elect-retry-period", 2*time.Second, "how often leader election actions are retried")
	f.DurationVar(&o.GracefulShutdown, "graceful-shutdown-timeout", 30*time.Second, "how long running reconciles may take to finish on shutdown")
	f.StringVar(&o.LogLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&o.LogFormat, "log-format", "json", "json or text")
	o.EventRecorderName = "tally-operator"
	// controller-runtime reads --kubeconfig from Go's flag set; expose it on the cobra command.
	if kf := flag.CommandLine.Lookup(config.KubeconfigFlagName); kf != nil {
		f.AddGoFlag(kf)
	}
	return cmd
}

// Run starts the manager and blocks until ctx ends.
func Run(ctx context.Context, o *Options) error {
	logger := newLogger(o)
	ctrl.SetLogger(logger)
	setupLog := logger.WithName("setup")

	restConfig, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	if o.KubeAPIQPS > 0 {
		restConfig.QPS, restConfig.Burst = o.KubeAPIQPS, max(o.KubeAPIBurst, int(o.KubeAPIQPS))
	}
	nc, err := connectNATS(o, logger.WithName("nats"))
	if err != nil {
		return err
	}
	defer nc.Close()

	mgr, err := NewManager(restConfig, o)
	if err != nil {
		return err
	}
	if err := Setup(mgr, o, NewNATS(nc, o.NATSURL)); err != nil {
		return err
	}
	setupLog.Info("starting manager", "natsURL", stream.RedactURL(o.NATSURL), "image", o.WorkloadImage,
		"managerNamespace", o.ManagerNamespace, "watchNamespace", o.WatchNamespace, "requireTenant", o.RequireTenant, "leaderElect", o.LeaderElect)
	return mgr.Start(ctx)
}

// Scheme holds the kinds the manager reads and writes.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	must(clientgoscheme.AddToScheme(s))
	must(tallyv1.AddToScheme(s))
	return s
}

// NewManager creates the controller-runtime manager with the operator's cache rules: owned kinds
// are cached only when labelled managed-by=tally-operator (a same-named foreign object is read
// from the API server instead, to refuse adopting it), and Secrets are never cached with their
// data (reads go to the API server; the watch is metadata-only).
func NewManager(restConfig *rest.Config, o *Options) (ctrl.Manager, error) {
	managed := cache.ByObject{Label: labels.SelectorFromSet(labels.Set{resources.LabelManagedBy: resources.ManagedBy})}
	cacheOpts := cache.Options{
		ByObject: map[client.Object]cache.ByObject{
			&appsv1.Deployment{}:                     managed,
			&corev1.Service{}:                        managed,
			&corev1.ConfigMap{}:                      managed,
			&policyv1.PodDisruptionBudget{}:          managed,
			&autoscalingv2.HorizontalPodAutoscaler{}: managed,
		},
	}
	if o.WatchNamespace != "" {
		cacheOpts.DefaultNamespaces = map[string]cache.Config{o.WatchNamespace: {}}
	}
	leaseDuration, renewDeadline, retryPeriod := o.LeaseDuration, o.RenewDeadline, o.RetryPeriod
	mgr, err := ctrl.NewManager(restConfig, ctrl.Options{
		Scheme:                        Scheme(),
		Cache:                         cacheOpts,
		Client:                        client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.Secret{}}}},
		Metrics:                       metricsserver.Options{BindAddress: o.MetricsAddr},
		HealthProbeBindAddress:        o.ProbeAddr,
		LeaderElection:                o.LeaderElect,
		LeaderElectionID:              o.LeaderElectionID,
		LeaderElectionNamespace:       o.ManagerNamespace,
		LeaderElectionReleaseOnCancel: true,
		LeaseDuration:                 &leaseDuration,
		RenewDeadline:                 &renewDeadline,
		RetryPeriod:                   &retryPeriod,
		GracefulShutdownTimeout:       &o.GracefulShutdown,
		Controller:                    ctrlconfig.Controller{SkipNameValidation: &o.SkipControllerNameValidation},
	})
	if err != nil {
		return nil, fmt.Errorf("creating manager: %w", err)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return nil, err
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return nil, err
	}
	return mgr, nil
}

// Setup adds the SegmentSource reconciler to mgr. Tests call it with their own manager and NATS.
func Setup(mgr ctrl.Manager, o *Options, n controllers.NATS) error {
	return SetupWithMetrics(mgr, o, n, controllers.NewMetrics(metrics.Registry))
}

// SetupWithMetrics is Setup with the metrics supplied (tests register them once).
func SetupWithMetrics(mgr ctrl.Manager, o *Options, n controllers.NATS, m *controllers.Metrics) error {
	r := &controllers.SegmentSourceReconciler{
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Cache:     mgr.GetCache(),
		Recorder:  mgr.GetEventRecorder(o.EventRecorderName),
		NATS:      n,
		Metrics:   m,
		Config: controllers.Config{
			Image:                 o.WorkloadImage,
			NATSURL:               o.NATSURL,
			ManagerNamespace:      o.ManagerNamespace,
			DatabaseSecret:        o.DatabaseSecret,
			DatabaseSecretKey:     o.DatabaseSecretKey,
			NATSCredsSecret:       o.NATSCredsSecret,
			NATSCredsSecretKey:    o.NATSCredsSecretKey,
			Interval:              o.RequeueInterval,
			StreamMaxBytes:        o.StreamMaxBytes.Value(),
			NATSTimeout:           o.NATSTimeout,
			ReceiverResources:     o.ReceiverResources,
			WorkerResources:       o.WorkerResources,
			ReceiverAtomicBatches: o.ReceiverAtomicBatches,
			RequireTenant:         o.RequireTenant,

			MaxConcurrentReconciles: o.MaxConcurrentReconciles,

			NATSSigningKeySecret:    o.NATSSigningKeySecret,
			NATSSigningKeySecretKey: o.NATSSigningKeySecretKey,
			NATSAccount:             o.NATSAccount,
			NATSUserTTL:             o.NATSUserTTL,
		},
	}
	if o.DatabaseSecret != "" {
		rows := newTenantRows(mgr.GetAPIReader(), o.ManagerNamespace, o.DatabaseSecret, o.DatabaseSecretKey)
		r.Rows = rows
		if o.TenantDatabaseRoles {
			r.Roles = rows
		}
	}
	if err := r.SetupWithManager(mgr); err != nil {
		return err
	}
	return (&controllers.SegmentSourcePoolReconciler{Sources: r}).SetupWithManager(mgr)
}

// natsConn adapts a *nats.Conn to controllers.NATS.
type natsConn struct {
	nc  *nats.Conn
	js  jetstream.JetStream
	url string
}

// NewNATS wraps a connection for the reconciler. URL() goes into status messages and Events, so
// it keeps the URL with its passwords redacted.
func NewNATS(nc *nats.Conn, url string) controllers.NATS {
	js, err := jetstream.New(nc)
	must(err) // only fails on a nil connection
	return &natsConn{nc: nc, js: js, url: stream.RedactURL(url)}
}

func (n *natsConn) JetStream() jetstream.JetStream { return n.js }
func (n *natsConn) Connected() bool                { return n.nc.Status() == nats.CONNECTED }
func (n *natsConn) URL() string                    { return n.url }

// connectNATS does not fail when NATS is down at start: the manager keeps reporting sources as
// NATSUnavailable instead of crash-looping.
func connectNATS(o *Options, log logr.Logger) (*nats.Conn, error) {
	return stream.Connect(o.NATSURL, o.NATSCreds, "tally-manager", slog.New(logr.ToSlogHandler(log)))
}

func newLogger(o *Options) logr.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.LogLevel)); err != nil {
		level = slog.LevelInfo
	}
	hopts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewJSONHandler(os.Stderr, hopts)
	if strings.EqualFold(o.LogFormat, "text") {
		h = slog.NewTextHandler(os.Stderr, hopts)
	}
	return logr.FromSlogHandler(h)
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}

// quantityFlag reads a flag as a Kubernetes quantity ("1Gi", "500Mi").
type quantityFlag struct{ q *resource.Quantity }

func (f quantityFlag) String() string {
	if f.q == nil {
		return ""
	}
	return f.q.String()
}

func (f quantityFlag) Set(s string) error {
	q, err := resource.ParseQuantity(s)
	if err != nil {
		return err
	}
	if q.Sign() <= 0 {
		return fmt.Errorf("must be positive")
	}
	*f.q = q
	return nil
}

func (quantityFlag) Type() string { return "quantity" }
