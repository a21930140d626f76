// Package controllers is Tally's operator: it reconciles each SegmentSource into a ConfigMap, a
// receiver Deployment and Service, a worker Deployment, a JetStream stream and consumer, and a
// status that tells the truth about all of them. It knows Kubernetes and the stream package; it
// never speaks SQL or handles Segment HTTP traffic.
package controllers

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/resources"
	"github.com/tallyhq/tally/workers/stream"
)

// Finalizer keeps a SegmentSource until its stream and consumer are cleaned up.
const Finalizer = "tally.dev/stream-cleanup"

// FieldOwner is the server-side apply field manager of everything the operator writes.
const FieldOwner = "tally-operator"

// NATS is the reconciler's view of the manager's NATS connection.
type NATS interface {
	// JetStream is the JetStream API on the manager's connection.
	JetStream() jetstream.JetStream
	// Connected reports whether the connection is up right now; while it is not, requests would
	// only wait for their timeout, so the reconciler reports NATS as unavailable at once.
	Connected() bool
	// URL names the server for status messages.
	URL() string
}

// Config is what the manager was started with.
type Config struct {
	// Image runs the receiver and worker pods.
	Image string
	// NATSURL is passed to the pods (the manager's own connection is NATS).
	NATSURL string
	// ManagerNamespace holds DatabaseSecret and NATSCredsSecret.
	ManagerNamespace string
	// DatabaseSecret and DatabaseSecretKey name the manager's Postgres URL, copied into a source's
	// namespace when the source does not name its own Secret.
	DatabaseSecret    string
	DatabaseSecretKey string
	// NATSCredsSecret, when set, holds a NATS credentials file under NATSCredsSecretKey; it is copied
	// into each source's namespace and mounted into the pods.
	NATSCredsSecret    string
	NATSCredsSecretKey string
	// NATSSigningKeySecret, when set, holds the signing key (an nkey seed, key
	// NATSSigningKeySecretKey) of the NATS account the streams live in: the operator then issues
	// each source's receiver and workers NATS users of their own (see package natsauth) instead of
	// copying NATSCredsSecret. NATSAccount is the account's public key, needed when the signing
	// key is not the account's identity key (else read from the Secret's key "account").
	NATSSigningKeySecret    string
	NATSSigningKeySecretKey string
	NATSAccount             string
	// NATSUserTTL is how long an issued NATS user is valid (0: forever); a user is re-issued, and
	// the pods rolled, when a third of it is left.
	NATSUserTTL time.Duration
	// Interval is how often a healthy source is re-checked: stream and consumer drift (a deleted
	// stream comes back, a NATS restart is noticed) and message times and backlog in status.
	Interval time.Duration
	// NATSTimeout bounds each JetStream request.
	NATSTimeout time.Duration
	// StreamMaxBytes is a stream's size when its SegmentSource sets no spec.stream.maxBytes.
	StreamMaxBytes int64
	// ReceiverResources and WorkerResources are the containers' resources for a source whose spec
	// sets none of its own.
	ReceiverResources corev1.ResourceRequirements
	WorkerResources   corev1.ResourceRequirements
	// ReceiverAtomicBatches runs every receiver, dedicated and pooled, with group commit
	// (`tally receiver --atomic-batches`): for NATS servers that fsync every write.
	ReceiverAtomicBatches bool
	// RequireTenant refuses a source unless a Tenant lists its namespace; when false, the
	// namespace of a tenant's first source claims it (recorded as a Tenant).
	RequireTenant bool
	// MaxConcurrentReconciles of the source and pool controllers (1 when 0).
	MaxConcurrentReconciles int
}

// SegmentSourceReconciler reconciles SegmentSources.
type SegmentSourceReconciler struct {
	client.Client
	// APIReader reads from the API server directly: Secrets (never cached, see SetupWithManager) and
	// same-named objects the label-filtered cache cannot see.
	APIReader client.Reader
	// Cache reads Secrets as metadata from the manager's metadata informer; the client bypasses
	// its cache for every Secret (NewManager), metadata included. Nil: the client is used.
	Cache    client.Reader
	Recorder events.EventRecorder
	NATS     NATS
	Config   Config
	Metrics  *Metrics
	// Rows reads what the status reports about the tenant's rows; nil when the manager has no
	// database.
	Rows TenantRows
	// Roles gives each tenant its own Postgres login, whose URL the tenant's workers get instead
	// of a copy of the manager's; nil: the copy (one login for every tenant).
	Roles TenantDatabaseRoles

	applied appliedVersions
	// buckets holds the handles of the pools' member buckets.
	buckets buckets
	// logins and writeKeys remember tenant logins and write key reads (see memo.go).
	logins    tenantLogins
	writeKeys writeKeyReads
	// memberKeys batches the members' writes into pools' Secrets (see pool_secrets.go).
	memberKeys memberKeys
}

// TenantRows reads what the operator reports about a tenant's rows. Its SQL lives with the schema
// (package worker): the operator calls it and writes none itself.
type TenantRows interface {
	UnnamedAccounts(ctx context.Context, tenant string) (int64, error)
	// Catalog summarises the tenant's event catalog as of now.
	Catalog(ctx context.Context, tenant string) (tallyv1.CatalogStatus, error)
	// Insights reads how a source's insight pushes went; found is false before its first push.
	Insights(ctx context.Context, tenant, source string) (record InsightsRecord, found bool, err error)
}

// TenantDatabaseRoles manages the per-tenant Postgres logins that can reach only their tenant's
// rows. Its SQL lives with the schema (package worker).
type TenantDatabaseRoles interface {
	// EnsureTenantRole creates the tenant's login if missing, rotates its password when rotation
	// is a request not applied before (each value once), and returns the URL to connect with.
	EnsureTenantRole(ctx context.Context, tenant, rotation string) (string, error)
	// DropTenantRole removes the tenant's login; its rows stay.
	DropTenantRole(ctx context.Context, tenant string) error
	// EnsurePoolLogin creates the login of a pool's workers (pool is <namespace>/<name>) if
	// missing and returns the URL to connect with. On its own it reaches no row.
	EnsurePoolLogin(ctx context.Context, pool string) (string, error)
	// GrantPoolMember lets the pool's login act for member (<namespace>/<name>) as its tenant,
	// whose role it returns: the pool's workers run the member's transactions as that role. It
	// is ErrNoPoolLogin until the pool's reconcile made the login, and takes the member out of
	// any other pool.
	GrantPoolMember(ctx context.Context, pool, member, tenant string) (string, error)
	// RevokePoolMember takes that back, in every pool when pool is ""; the tenant's role goes
	// with the pool's last member of it.
	RevokePoolMember(ctx context.Context, pool, member string) error
	// DropPoolLogin removes the pool's login.
	DropPoolLogin(ctx context.Context, pool string) error
}

// RotateDatabaseCredentialsAnnotation: a new value rotates the password of the tenant's Postgres
// login (every source of the tenant follows within a resync).
const RotateDatabaseCredentialsAnnotation = "tally.dev/rotate-database-credentials"

// reconcileState is what one reconcile learns, passed along the sub-reconcilers.
type reconcileState struct {
	source *tallyv1.SegmentSource
	// original is the object as read, to detect status changes and emit events on transitions.
	original *tallyv1.SegmentSource
	// finalized is set once the finalizer is gone and the object may disappear: no status write.
	finalized bool

	configHash   string
	writeKeyHash string
	sharedSecret *resources.SecretKey
	database     resources.SecretKey
	natsCreds    *resources.SecretKey
	streamState  stream.State
	receiver     *appsv1.Deployment
	worker       *appsv1.Deployment

	// receiverNATSCreds and workerNATSCreds are the NATS users issued for the source's pods.
	receiverNATSCreds *resources.SecretKey
	workerNATSCreds   *resources.SecretKey

	// insightsWriteKey is the Secret key of the insights write key, when insights are pushed.
	insightsWriteKey *resources.SecretKey

	// For a pool member: the pool, and the secrets that go to the pool (digests of the write
	// keys into its bucket; the others into its Secrets). Never logged.
	pool            *tallyv1.SegmentSourcePool
	writeKeyDigests []string
	sharedSecrets   []string
	insightsKey     string
	databaseURL     []byte
	// databaseRole is the tenant's role granted to the pool's login, which lets it write this
	// member's tenant (instead of a databaseURL of its own).
	databaseRole string
}

type subReconciler func(ctx context.Context, st *reconcileState) error

// RBAC, least privilege: children are written with server-side apply (create+patch) and removed
// by garbage collection, so only what the spec can take away (PDB, HPA, the database Secret copy) needs delete, and the
// Deployments of a source its Tenant stops allowing, and the Service and ConfigMap of a source that joins a pool. Secrets
// are read one at a time (get) and watched as metadata (list+watch); the operator writes only its
// own copies. Finalizers are patched, and blockOwnerDeletion needs update on .../finalizers.
// +kubebuilder:rbac:groups=tally.dev,resources=segmentsources,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=tally.dev,resources=segmentsources/status,verbs=get;patch
// +kubebuilder:rbac:groups=tally.dev,resources=segmentsources/finalizers,verbs=update
// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups="",resources=services;configmaps,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=policy,resources=poddisruptionbudgets,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=autoscaling,resources=horizontalpodautoscalers,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile has the shape of Flux's and CloudNativePG's controllers: read the object, arrange for
// status to be summarised and written on every exit, handle deletion, make sure the finalizer is
// there, then run a fixed list of small steps. Each step either completes or returns an error
// that says what is missing; the deferred summary turns it into conditions.
func (r *SegmentSourceReconciler) Reconcile(ctx context.Context, req ctrl.Request) (result ctrl.Result, retErr error) {
	start := time.Now()
	obj := &tallyv1.SegmentSource{}
	if err := r.Get(ctx, req.NamespacedName, obj); err != nil {
		if apierrors.IsNotFound(err) {
			r.Metrics.Forget(req.Namespace, req.Name)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	st := &reconcileState{source: obj, original: obj.DeepCopy()}
	defer func() { result, retErr = r.finish(ctx, st, result, retErr, start) }()

	if !obj.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, r.reconcileDelete(ctx, st)
	}
	if err := r.ensureFinalizer(ctx, st); err != nil {
		return ctrl.Result{}, err
	}
	if obj.Spec.Pool != nil {
		for _, step := range r.memberSteps() {
			if err := step(ctx, st); err != nil {
				return ctrl.Result{}, err
			}
		}
		return ctrl.Result{RequeueAfter: jitter(r.Config.Interval)}, nil
	}
	// A source that left its pool (or never got its entry removed) leaves it before it gets
	// Deployments of its own again.
	if err := r.leavePool(ctx, st); err != nil {
		return ctrl.Result{}, err
	}
	steps := []subReconciler{
		r.reconcileTenant,
		r.reconcileWriteKey,
		r.reconcileSharedSecret,
		r.reconcileInsightsSecret,
		r.reconcileDatabaseSecret,
		r.reconcileNATSAuth,
		r.reconcileConfig,
		r.reconcileStream,
		r.reconcileReceiver,
		r.reconcileWorker,
		r.observe,
	}
	for _, step := range steps {
		if err := step(ctx, st); err != nil {
			return ctrl.Result{}, err
		}
	}
	return ctrl.Result{RequeueAfter: jitter(r.Config.Interval)}, nil
}

// ensureFinalizer adds the finalizer with a metadata patch before anything is created in NATS,
// so a stream is never left behind by a deletion that raced the first reconcile.
func (r *SegmentSourceReconciler) ensureFinalizer(ctx context.Context, st *reconcileState) error {
	if controllerutil.ContainsFinalizer(st.source, Finalizer) {
		return nil
	}
	// The finalizer list is replaced as a whole: lock on resourceVersion, so a finalizer another
	// controller adds at the same time is not lost (a conflict is retried with backoff).
	patch := client.MergeFromWithOptions(st.source.DeepCopy(), client.MergeFromWithOptimisticLock{})
	controllerutil.AddFinalizer(st.source, Finalizer)
	if err := r.Patch(ctx, st.source, patch); err != nil {
		return transient(ReasonReconcileError, err, "adding finalizer")
	}
	return nil
}

// ForceDeleteAnnotation, set to "true", lets a SegmentSource with deletionPolicy Delete be
// deleted at once, with its unprocessed messages and dead letters.
const ForceDeleteAnnotation = "tally.dev/force-delete"

// deletionRecheck is how often a deletion waiting for the workers looks again.
const deletionRecheck = 15 * time.Second

// reconcileDelete removes the stream and its consumer (unless the deletion policy retains them),
// then the finalizer. Owned Kubernetes objects go through garbage collection, which waits for the
// finalizer, so the workers keep draining the stream meanwhile. Postgres rows stay: they are the
// customer's data.
func (r *SegmentSourceReconciler) reconcileDelete(ctx context.Context, st *reconcileState) error {
	obj := st.source
	if !controllerutil.ContainsFinalizer(obj, Finalizer) {
		st.finalized = true
		return nil
	}
	src := streamSource(obj)
	if obj.DeletionPolicy() == tallyv1.DeletionPolicyDelete {
		if !r.NATS.Connected() {
			return transient(ReasonNATSUnavailable, nil, "cannot delete stream %s: NATS at %s is not reachable", src.StreamName(), r.natsURL())
		}
		nctx, cancel := context.WithTimeout(ctx, r.Config.NATSTimeout)
		defer cancel()
		js := r.NATS.JetStream()
		forced := forcedDelete(obj)
		if !forced {
			// Accepted events must reach Postgres or stay visible: deleting the streams now would
			// destroy what the workers have not written yet and every dead letter. The Event for
			// the wait comes once, from the Ready transition to DeletionBlocked.
			messages, deadLetters, err := stream.Undelivered(nctx, js, src)
			if err != nil {
				return r.natsError(err, "counting the messages left in stream "+src.StreamName())
			}
			if messages > 0 || deadLetters > 0 {
				return waiting(ReasonDeletionBlocked, deletionRecheck,
					"deletion waits for %d unprocessed message(s) in stream %s and %d dead letter(s) in %s; "+
						"let the workers finish and re-drive (tally dlq redrive) or remove the dead letters, "+
						"or set the annotation %s=\"true\" to delete them with the source",
					messages, src.StreamName(), deadLetters, src.DeadLetterStreamName(), ForceDeleteAnnotation)
			}
		}
		if err := stream.Delete(nctx, js, src); err != nil {
			return transient(ReasonDeletionFailed, redacted(err), "deleting stream %s", src.StreamName())
		}
		msg := "deleted stream %s and its consumer; Postgres rows are kept"
		if forced {
			msg = "deleted stream %s and its consumer (" + ForceDeleteAnnotation + "), with any unprocessed messages and dead letters; Postgres rows are kept"
		}
		r.Recorder.Eventf(obj, nil, corev1.EventTypeNormal, eventReasonStreamDeleted, "Delete", msg, src.StreamName())
	} else {
		r.Recorder.Eventf(obj, nil, corev1.EventTypeNormal, eventReasonStreamRetained, "Delete",
			"kept stream %s (deletionPolicy Retain)", src.StreamName())
	}
	// The pool's workers drained the stream above; now the pool forgets the member, and every
	// pool's login what it was granted for it (a grant may precede the entry its status records).
	if err := r.leavePool(ctx, st); err != nil {
		return err
	}
	if r.Roles != nil {
		if err := r.revokePoolMember(ctx, "", obj.Namespace+"/"+obj.Name); err != nil {
			return transient(ReasonDatabaseRoleFailed, redacted(err), "taking back what pools' Postgres logins were granted for this source")
		}
	}
	if err := r.dropTenantRoleIfLast(ctx, obj); err != nil {
		return err
	}
	patch := client.MergeFromWithOptions(obj.DeepCopy(), client.MergeFromWithOptimisticLock{})
	controllerutil.RemoveFinalizer(obj, Finalizer)
	if err := r.Patch(ctx, obj, patch); err != nil && !apierrors.IsNotFound(err) {
		return transient(ReasonReconcileError, err, "removing finalizer")
	}
	st.finalized = true
	r.writeKeys.m.Delete(obj.UID)
	log.FromContext(ctx).Info("finalized", "stream", src.StreamName(), "deletionPolicy", obj.DeletionPolicy(), "forced", forcedDelete(obj))
	return nil
}

func forcedDelete(obj *tallyv1.SegmentSource) bool {
	return obj.Annotations[ForceDeleteAnnotation] == "true"
}

func streamSource(obj *tallyv1.SegmentSource) stream.Source {
	return stream.Source{Namespace: obj.Namespace, Name: obj.Name}
}

// jitter spreads periodic requeues of many sources by ±10% so they do not reconcile in lockstep.
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return d + time.Duration((rand.Float64()*0.2-0.1)*float64(d))
}
