package controllers

import (
	"context"
	"reflect"
	"slices"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
)

// secretRefIndex indexes SegmentSources by the names of the Secrets they reference in their own
// namespace (write keys and, when set, the database URL), so a Secret event finds its sources
// without listing every source.
const secretRefIndex = ".spec.secretRefs"

func secretRefs(obj client.Object) []string {
	s, ok := obj.(*tallyv1.SegmentSource)
	if !ok {
		return nil
	}
	names := []string{s.Spec.WriteKeySecretRef.Name}
	if ref := s.Spec.Worker.DatabaseSecretRef; ref != nil {
		names = append(names, ref.Name)
	}
	if ref := s.Spec.Destination.SharedSecretRef; ref != nil {
		names = append(names, ref.Name)
	}
	if ins := s.Spec.Insights; ins != nil {
		names = append(names, ins.WriteKeySecretRef.Name)
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// SetupWithManager registers the controller and its watches.
//
// Caching: owned kinds are watched through caches restricted (by the manager, see
// CacheOptions) to objects labelled app.kubernetes.io/managed-by=tally-operator. Secrets are
// watched as metadata only: a Secret event says "look again", the data is then read from the API
// server by the one reconcile that needs it, so the manager never holds every Secret's data of
// the cluster in memory (the reason not to use a full Secret informer), and needs no label on the
// user's own Secrets (the reason not to restrict the Secret cache by label).
func (r *SegmentSourceReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &tallyv1.SegmentSource{}, secretRefIndex, secretRefs); err != nil {
		return err
	}
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &tallyv1.SegmentSource{}, tenantIndex, tenantOf); err != nil {
		return err
	}
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &tallyv1.SegmentSource{}, poolIndex, poolOf); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("segmentsource").
		For(&tallyv1.SegmentSource{}, builder.WithPredicates(sourceChanged())).
		Owns(&appsv1.Deployment{}).
		Owns(&corev1.Service{}).
		Owns(&corev1.ConfigMap{}).
		Owns(&policyv1.PodDisruptionBudget{}).
		Owns(&autoscalingv2.HorizontalPodAutoscaler{}).
		WatchesMetadata(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(r.sourcesForSecret)).
		// A source refused with TenantClaimed is not requeued; the deletion of the source that
		// claimed the tenant first is what can change its answer.
		Watches(&tallyv1.SegmentSource{}, handler.EnqueueRequestsFromMapFunc(r.sourcesOfTenant),
			builder.WithPredicates(predicate.Funcs{
				CreateFunc:  func(event.CreateEvent) bool { return false },
				UpdateFunc:  func(event.UpdateEvent) bool { return false },
				GenericFunc: func(event.GenericEvent) bool { return false },
			})).
		// A source refused with TenantNotAllowed or TenantClaimed is not requeued; a Tenant
		// created, edited or deleted is what changes its answer. Tenants are cluster-scoped: the
		// cache watches them cluster-wide even when the manager watches one namespace.
		Watches(&tallyv1.Tenant{}, handler.EnqueueRequestsFromMapFunc(r.sourcesForTenantObject)).
		// A pool created, deleted, re-admitting or turning Ready changes its members' answers; its
		// members count does not (that would wake every member on every join).
		Watches(&tallyv1.SegmentSourcePool{}, handler.EnqueueRequestsFromMapFunc(r.membersOfPool),
			builder.WithPredicates(poolChanged())).
		// A namespace's labels decide admission to a pool with from: Selector.
		Watches(&corev1.Namespace{}, handler.EnqueueRequestsFromMapFunc(r.membersInNamespace),
			builder.WithPredicates(predicate.Funcs{
				CreateFunc: func(event.CreateEvent) bool { return false },
				UpdateFunc: func(e event.UpdateEvent) bool {
					return !reflect.DeepEqual(e.ObjectOld.GetLabels(), e.ObjectNew.GetLabels())
				},
				DeleteFunc:  func(event.DeleteEvent) bool { return false },
				GenericFunc: func(event.GenericEvent) bool { return false },
			})).
		WithOptions(controller.Options{
			MaxConcurrentReconciles: r.Config.MaxConcurrentReconciles,
			// Backoff for transient failures (NATS unreachable, API conflicts): fast at first, capped
			// at 30 s so a recovered NATS is noticed quickly.
			RateLimiter: workqueue.NewTypedItemExponentialFailureRateLimiter[reconcile.Request](500*time.Millisecond, 30*time.Second),
		}).
		Complete(r)
}

// sourceChanged lets through what needs a reconcile of a SegmentSource: creation, a spec change
// (generation), the start of deletion, and annotation changes (a way to ask for a reconcile).
// Status writes, including the operator's own, do not trigger one: that would be a loop.
func sourceChanged() predicate.Predicate {
	return predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			o, n := e.ObjectOld, e.ObjectNew
			return o.GetGeneration() != n.GetGeneration() ||
				o.GetDeletionTimestamp().IsZero() != n.GetDeletionTimestamp().IsZero() ||
				!reflect.DeepEqual(o.GetAnnotations(), n.GetAnnotations()) ||
				!reflect.DeepEqual(o.GetFinalizers(), n.GetFinalizers())
		},
	}
}

// sourcesForSecret maps a Secret event to the sources that depend on it: those referencing it in
// its namespace (through the index), the owner of a copy the operator made, and, for the
// manager's own database or NATS credentials Secret, or its NATS account signing key (a rotation
// re-issues every source's users), every source using it.
func (r *SegmentSourceReconciler) sourcesForSecret(ctx context.Context, secret client.Object) []reconcile.Request {
	var reqs []reconcile.Request
	seen := map[types.NamespacedName]bool{}
	add := func(ns, name string) {
		key := types.NamespacedName{Namespace: ns, Name: name}
		if !seen[key] {
			seen[key] = true
			reqs = append(reqs, reconcile.Request{NamespacedName: key})
		}
	}
	if owner := metav1.GetControllerOf(secret); owner != nil && owner.Kind == "SegmentSource" && owner.APIVersion == tallyv1.GroupVersion.String() {
		add(secret.GetNamespace(), owner.Name)
	}
	var list tallyv1.SegmentSourceList
	if err := r.List(ctx, &list, client.InNamespace(secret.GetNamespace()), client.MatchingFields{secretRefIndex: secret.GetName()}); err != nil {
		log.FromContext(ctx).Error(err, "listing SegmentSources for Secret", "secret", secret.GetName())
	}
	for _, s := range list.Items {
		add(s.Namespace, s.Name)
	}
	if secret.GetNamespace() == r.Config.ManagerNamespace && secret.GetName() == r.Config.DatabaseSecret {
		r.logins.forgetAll() // new administrator credentials set every tenant's password again
	}
	if secret.GetNamespace() == r.Config.ManagerNamespace &&
		(secret.GetName() == r.Config.DatabaseSecret || secret.GetName() == r.Config.NATSCredsSecret ||
			secret.GetName() == r.Config.NATSSigningKeySecret) {
		var all tallyv1.SegmentSourceList
		if err := r.List(ctx, &all); err != nil {
			log.FromContext(ctx).Error(err, "listing SegmentSources for the manager's Secret", "secret", secret.GetName())
		}
		for _, s := range all.Items {
			if secret.GetName() == r.Config.NATSCredsSecret || s.Spec.Worker.DatabaseSecretRef == nil {
				add(s.Namespace, s.Name)
			}
		}
	}
	return reqs
}

// poolChanged lets through what may change a pool's members' answers: creation, deletion, a spec
// change, the start of deletion, and Ready or the endpoint changing.
func poolChanged() predicate.Predicate {
	return predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			o, n := e.ObjectOld.(*tallyv1.SegmentSourcePool), e.ObjectNew.(*tallyv1.SegmentSourcePool)
			ready := func(p *tallyv1.SegmentSourcePool) string {
				if c := meta.FindStatusCondition(p.Status.Conditions, tallyv1.ConditionReady); c != nil {
					return string(c.Status)
				}
				return ""
			}
			return o.Generation != n.Generation || o.DeletionTimestamp.IsZero() != n.DeletionTimestamp.IsZero() ||
				ready(o) != ready(n) || o.Status.Endpoint != n.Status.Endpoint
		},
	}
}

// membersOfPool maps a pool to the sources naming it.
func (r *SegmentSourceReconciler) membersOfPool(ctx context.Context, obj client.Object) []reconcile.Request {
	var list tallyv1.SegmentSourceList
	if err := r.List(ctx, &list, client.MatchingFields{poolIndex: obj.GetNamespace() + "/" + obj.GetName()}); err != nil {
		log.FromContext(ctx).Error(err, "listing the members of a pool", "pool", obj.GetName())
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(list.Items))
	for i := range list.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
	}
	return reqs
}

// membersInNamespace maps a namespace to its sources that name a pool.
func (r *SegmentSourceReconciler) membersInNamespace(ctx context.Context, obj client.Object) []reconcile.Request {
	var list tallyv1.SegmentSourceList
	if err := r.List(ctx, &list, client.InNamespace(obj.GetName())); err != nil {
		log.FromContext(ctx).Error(err, "listing the SegmentSources of a namespace", "namespace", obj.GetName())
		return nil
	}
	var reqs []reconcile.Request
	for i := range list.Items {
		if list.Items[i].Spec.Pool != nil {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
		}
	}
	return reqs
}
