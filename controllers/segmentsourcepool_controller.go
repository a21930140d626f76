package controllers

import (
	"context"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/resources"
	"github.com/tallyhq/tally/workers/pool"
)

// PoolFinalizer keeps a SegmentSourcePool until its bucket is deleted.
const PoolFinalizer = "tally.dev/pool-cleanup"

// SegmentSourcePoolReconciler reconciles SegmentSourcePools into a JetStream bucket of members,
// NATS users, Secrets the members fill, and one receiver and one worker Deployment. It shares
// the source reconciler's clients, configuration and memory of what it applied.
type SegmentSourcePoolReconciler struct {
	Sources *SegmentSourceReconciler
}

// poolState is what one pool reconcile learns.
type poolState struct {
	pool      *tallyv1.SegmentSourcePool
	original  *tallyv1.SegmentSourcePool
	finalized bool

	receiverNATSCreds, workerNATSCreds *resources.SecretKey
	database                           *resources.SecretKey
	receiver, worker                   *appsv1.Deployment
}

type poolStep func(ctx context.Context, st *poolState) error

// +kubebuilder:rbac:groups=tally.dev,resources=segmentsourcepools,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=tally.dev,resources=segmentsourcepools/status,verbs=get;patch
// +kubebuilder:rbac:groups=tally.dev,resources=segmentsourcepools/finalizers,verbs=update
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch

// Reconcile has the source controller's shape: read, summarise in a defer, handle deletion, make
// sure of the finalizer, then a fixed list of small steps.
func (p *SegmentSourcePoolReconciler) Reconcile(ctx context.Context, req ctrl.Request) (result ctrl.Result, retErr error) {
	obj := &tallyv1.SegmentSourcePool{}
	if err := p.Sources.Get(ctx, req.NamespacedName, obj); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	st := &poolState{pool: obj, original: obj.DeepCopy()}
	defer func() { result, retErr = p.finish(ctx, st, result, retErr) }()

	if !obj.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, p.reconcileDelete(ctx, st)
	}
	if !controllerutil.ContainsFinalizer(obj, PoolFinalizer) {
		patch := client.MergeFromWithOptions(obj.DeepCopy(), client.MergeFromWithOptimisticLock{})
		controllerutil.AddFinalizer(obj, PoolFinalizer)
		if err := p.Sources.Patch(ctx, obj, patch); err != nil {
			return ctrl.Result{}, transient(ReasonReconcileError, err, "adding finalizer")
		}
	}
	for _, step := range []poolStep{
		p.reconcileBucket,
		p.reconcileNATSAuth,
		p.reconcileSecrets,
		p.reconcileReceiver,
		p.reconcileWorker,
		p.observe,
	} {
		if err := step(ctx, st); err != nil {
			return ctrl.Result{}, err
		}
	}
	return ctrl.Result{RequeueAfter: jitter(p.Sources.Config.Interval)}, nil
}

// reconcileDelete deletes the pool's bucket and Postgres login, then lets the pool go. Its
// members' streams stay: they are the members' own, and each member reports the missing pool.
func (p *SegmentSourcePoolReconciler) reconcileDelete(ctx context.Context, st *poolState) error {
	obj := st.pool
	if !controllerutil.ContainsFinalizer(obj, PoolFinalizer) {
		st.finalized = true
		return nil
	}
	r := p.Sources
	if !r.NATS.Connected() {
		return transient(ReasonNATSUnavailable, nil, "cannot delete the bucket of pool %s: NATS at %s is not reachable", obj.Name, r.natsURL())
	}
	ref := poolRef(obj)
	nctx, cancel := context.WithTimeout(ctx, r.Config.NATSTimeout)
	defer cancel()
	if err := pool.DeleteBucket(nctx, r.NATS.JetStream(), ref); err != nil {
		return r.natsError(err, "deleting bucket "+ref.Bucket())
	}
	r.buckets.forget(ref)
	if r.Roles != nil {
		r.logins.forgetPool(ref.String())
		if err := r.Roles.DropPoolLogin(ctx, ref.String()); err != nil {
			return transient(ReasonDatabaseRoleFailed, redacted(err), "dropping the Postgres login of pool %s", ref)
		}
	}
	patch := client.MergeFromWithOptions(obj.DeepCopy(), client.MergeFromWithOptimisticLock{})
	controllerutil.RemoveFinalizer(obj, PoolFinalizer)
	if err := r.Patch(ctx, obj, patch); err != nil && !apierrors.IsNotFound(err) {
		return transient(ReasonReconcileError, err, "removing finalizer")
	}
	st.finalized = true
	log.FromContext(ctx).Info("deleted the pool's bucket", "bucket", ref.Bucket())
	return nil
}

func poolRef(obj *tallyv1.SegmentSourcePool) pool.Ref {
	return pool.Ref{Namespace: obj.Namespace, Name: obj.Name}
}

// poolRequeue is how soon a member waiting for its pool looks again.
const poolRequeue = 2 * time.Second

// SetupWithManager registers the pool controller: its own Deployments, Service and HPAs, and the
// members whose entry came or went (the members count).
func (p *SegmentSourcePoolReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("segmentsourcepool").
		For(&tallyv1.SegmentSourcePool{}, builder.WithPredicates(sourceChanged())).
		Owns(&appsv1.Deployment{}).
		Owns(&corev1.Service{}).
		Owns(&autoscalingv2.HorizontalPodAutoscaler{}).
		Owns(&policyv1.PodDisruptionBudget{}).
		Watches(&tallyv1.SegmentSource{}, membersCountHandler()).
		WithOptions(controller.Options{
			MaxConcurrentReconciles: p.Sources.Config.MaxConcurrentReconciles,
			RateLimiter:             workqueue.NewTypedItemExponentialFailureRateLimiter[reconcile.Request](500*time.Millisecond, 30*time.Second),
		}).
		Complete(p)
}

// memberCountDelay batches the recounts of a pool while many members join or leave at once:
// a thousand members joining cost a few pool reconciles and status writes, not a thousand.
const memberCountDelay = 2 * time.Second

// membersCountHandler enqueues the pool a source's entry came into or left, a little later.
func membersCountHandler() handler.EventHandler {
	enqueue := func(ctx context.Context, obj client.Object, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		for _, req := range poolsOfSource(ctx, obj) {
			q.AddAfter(req, memberCountDelay)
		}
	}
	return handler.TypedFuncs[client.Object, reconcile.Request]{
		CreateFunc: func(ctx context.Context, e event.TypedCreateEvent[client.Object], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueue(ctx, e.Object, q)
		},
		UpdateFunc: func(ctx context.Context, e event.TypedUpdateEvent[client.Object], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			o, n := e.ObjectOld.(*tallyv1.SegmentSource), e.ObjectNew.(*tallyv1.SegmentSource)
			if o.Status.Pool != n.Status.Pool {
				enqueue(ctx, o, q)
				enqueue(ctx, n, q)
			}
		},
		DeleteFunc: func(ctx context.Context, e event.TypedDeleteEvent[client.Object], q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueue(ctx, e.Object, q)
		},
	}
}

// poolsOfSource maps a source to the pool its entry is in.
func poolsOfSource(_ context.Context, obj client.Object) []reconcile.Request {
	s, ok := obj.(*tallyv1.SegmentSource)
	if !ok || s.Status.Pool == "" {
		return nil
	}
	ref, err := pool.ParseRef(s.Status.Pool)
	if err != nil {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: ref.Namespace, Name: ref.Name}}}
}
