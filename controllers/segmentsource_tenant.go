package controllers

import (
	"context"
	"errors"
	"regexp"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/resources"
)

// tenantIndex indexes SegmentSources by spec.tenant, so a reconcile finds the other sources of its
// tenant without listing every source.
const tenantIndex = ".spec.tenant"

func tenantOf(obj client.Object) []string {
	s, ok := obj.(*tallyv1.SegmentSource)
	if !ok || s.Spec.Tenant == "" {
		return nil
	}
	return []string{s.Spec.Tenant}
}

// +kubebuilder:rbac:groups=tally.dev,resources=tenants,verbs=get;list;watch;create

// reconcileTenant refuses a source whose namespace may not use its tenant. The tenant is the key
// of the rows in Postgres, and creating a SegmentSource is a namespace-level permission: without
// this check anyone who may create one could write into another team's rows. It runs before
// anything is created for the source: a refused source gets no stream, Secret copy, receiver or
// worker.
//
// A Tenant object (cluster-scoped, named after the tenant, written by cluster administrators)
// lists the namespaces that may use the tenant. With Config.RequireTenant a tenant without one is
// refused. Without it, the namespace of the tenant's first SegmentSource claims it, and the
// operator records the claim as a Tenant of its own (label tally.dev/claim=first-source): the
// claim outlives that source, so deleting and re-creating it never hands the tenant to a
// namespace that was waiting for it. A cluster administrator edits or deletes that Tenant to
// share or release the tenant.
//
// No message ever names another namespace or source: that would tell a squatter whose tenant it
// found.
func (r *SegmentSourceReconciler) reconcileTenant(ctx context.Context, st *reconcileState) error {
	err := r.checkTenant(ctx, st.source)
	if isRefusal(err) {
		// A source refused after it ran (its namespace removed from the Tenant) stops writing
		// the tenant's rows now, not when it is deleted.
		if stopErr := r.stopWorkloads(ctx, st); stopErr != nil {
			return stopErr
		}
	}
	return err
}

// isRefusal tells whether err refuses the source its tenant.
func isRefusal(err error) bool {
	var re *reconcileError
	return errors.As(err, &re) && (re.reason == ReasonTenantNotAllowed || re.reason == ReasonTenantClaimed)
}

// stopWorkloads removes the source's receiver and worker Deployments, when they exist: the
// receiver takes no more messages for the tenant and the workers write no more rows. Accepted
// messages wait in the stream; once the tenant allows the source again, the next reconcile
// creates both afresh. The credentials the operator gave the namespace (the tenant's Postgres
// login, the NATS users) go too; a password copied out of the namespace meanwhile stays valid
// until the tenant's login is rotated (tally.dev/rotate-database-credentials).
func (r *SegmentSourceReconciler) stopWorkloads(ctx context.Context, st *reconcileState) error {
	obj := st.source
	// A member refused its tenant leaves its pool: the pool's pods stop serving it.
	if err := r.leavePool(ctx, st); err != nil {
		return err
	}
	// Only copies the source controls go, never a Secret of the namespace's own.
	for _, name := range []string{resources.DatabaseSecretCopyName(obj), resources.NATSCredsSecretCopyName(obj),
		resources.NATSUserSecretName(obj, resources.ComponentReceiver), resources.NATSUserSecretName(obj, resources.ComponentWorker)} {
		if err := r.deleteOwned(ctx, st, secretMetadata(), name); err != nil {
			return err
		}
	}
	for _, name := range []string{resources.ReceiverName(obj), resources.WorkerName(obj)} {
		d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: obj.Namespace, Name: name}}
		if err := r.Get(ctx, client.ObjectKeyFromObject(d), d); apierrors.IsNotFound(err) {
			continue
		} else if err != nil {
			return transient(ReasonReconcileError, err, "reading Deployment %s", name)
		}
		if !metav1.IsControlledBy(d, obj) {
			continue // not ours (a conflict the resources step reports)
		}
		if err := r.Delete(ctx, d, client.PropagationPolicy(metav1.DeletePropagationBackground)); err != nil && !apierrors.IsNotFound(err) {
			return transient(ReasonReconcileError, err, "stopping Deployment %s", name)
		}
		log.FromContext(ctx).Info("stopped a workload of a source its tenant no longer allows", "deployment", name)
	}
	return nil
}

// checkTenant decides whether the source may use its tenant.
func (r *SegmentSourceReconciler) checkTenant(ctx context.Context, obj *tallyv1.SegmentSource) error {
	name := obj.Spec.Tenant
	tenant := &tallyv1.Tenant{}
	err := r.Get(ctx, client.ObjectKey{Name: name}, tenant)
	switch {
	case err == nil:
		return r.tenantAllows(tenant, obj)
	case !apierrors.IsNotFound(err):
		return transient(ReasonReconcileError, err, "reading Tenant %s", name)
	case r.Config.RequireTenant:
		return notAllowed(obj)
	}

	// --require-tenant=false, and no Tenant yet: the first-claim rule over the live sources,
	// then the claim is recorded.
	var list tallyv1.SegmentSourceList
	if err := r.List(ctx, &list, client.MatchingFields{tenantIndex: name}); err != nil {
		return transient(ReasonReconcileError, err, "listing the SegmentSources of tenant %s", name)
	}
	var owner *tallyv1.SegmentSource
	for i := range list.Items {
		s := &list.Items[i]
		if claimedBefore(s, obj) && (owner == nil || claimedBefore(s, owner)) {
			owner = s
		}
	}
	if owner != nil && owner.Namespace != obj.Namespace {
		return claimed(obj)
	}
	if !tenantObjectName.MatchString(name) {
		// A tenant with '_' cannot be a Tenant's name: its claim lasts as long as its sources.
		log.FromContext(ctx).Info("tenant name cannot name a Tenant; its first-claim is not recorded", "tenant", name)
		return nil
	}
	tenant = &tallyv1.Tenant{
		ObjectMeta: metav1.ObjectMeta{
			Name:   name,
			Labels: map[string]string{tallyv1.LabelTenantClaim: tallyv1.TenantClaimAutomatic},
		},
		Spec: tallyv1.TenantSpec{Namespaces: []string{obj.Namespace}},
	}
	err = r.Create(ctx, tenant, client.FieldOwner(FieldOwner))
	switch {
	case err == nil:
		log.FromContext(ctx).Info("recorded the first claim of a tenant", "tenant", name)
		return nil
	case !apierrors.IsAlreadyExists(err):
		return transient(ReasonReconcileError, err, "recording the claim of tenant %s", name)
	}
	// Created meanwhile (by a cluster administrator, or for another source our cache has not
	// seen yet): the API server's copy decides.
	if err := r.APIReader.Get(ctx, client.ObjectKey{Name: name}, tenant); err != nil {
		return transient(ReasonReconcileError, err, "reading Tenant %s", name)
	}
	return r.tenantAllows(tenant, obj)
}

// tenantAllows checks an existing Tenant. A Tenant the operator recorded for a first claim is
// reported as claimed (TenantClaimed), one a cluster administrator wrote as not allowed.
func (r *SegmentSourceReconciler) tenantAllows(tenant *tallyv1.Tenant, obj *tallyv1.SegmentSource) error {
	if tenant.Allows(obj.Namespace) {
		return nil
	}
	if tenant.ClaimedAutomatically() && !r.Config.RequireTenant {
		return claimed(obj)
	}
	return notAllowed(obj)
}

// notAllowed reads the same whether the Tenant exists or not, so it does not even tell that the
// tenant is in use.
func notAllowed(obj *tallyv1.SegmentSource) error {
	if !tenantObjectName.MatchString(obj.Spec.Tenant) {
		return stalled(ReasonTenantNotAllowed,
			"tenant %q cannot be bound to a namespace: a Tenant's name takes lower-case letters, digits and '-' only; "+
				"re-create this source with such a tenant", obj.Spec.Tenant)
	}
	return stalled(ReasonTenantNotAllowed,
		"no Tenant %q lists namespace %s: a source in this namespace may not write the tenant's rows until a "+
			"cluster administrator adds the namespace to that Tenant's spec.namespaces (or re-create this source with another tenant)",
		obj.Spec.Tenant, obj.Namespace)
}

func claimed(obj *tallyv1.SegmentSource) error {
	return stalled(ReasonTenantClaimed,
		"tenant %q belongs to another namespace; a source in namespace %s may not write its rows: "+
			"re-create this source with another tenant, or ask the platform team",
		obj.Spec.Tenant, obj.Namespace)
}

// tenantObjectName is what a Tenant's name may be (the CRD's rule): a SegmentSource tenant
// without '_'.
var tenantObjectName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// claimedBefore orders sources by creation time, then namespace and name, so exactly one
// namespace owns a tenant even when two sources were created in the same second.
func claimedBefore(a, b *tallyv1.SegmentSource) bool {
	at, bt := a.CreationTimestamp, b.CreationTimestamp
	if !at.Equal(&bt) {
		return at.Before(&bt)
	}
	if a.Namespace != b.Namespace {
		return a.Namespace < b.Namespace
	}
	return a.Name < b.Name
}

// sourcesOfTenant maps the deletion of a source to the other sources of its tenant: one of them
// may own the tenant now (a tenant whose claim could not be recorded as a Tenant).
func (r *SegmentSourceReconciler) sourcesOfTenant(ctx context.Context, obj client.Object) []reconcile.Request {
	tenants := tenantOf(obj)
	if len(tenants) == 0 {
		return nil
	}
	return r.sourcesNamingTenant(ctx, tenants[0], obj)
}

// sourcesForTenantObject maps a change of a Tenant (created, namespaces edited, deleted) to every
// source naming that tenant: each may be allowed or refused now.
func (r *SegmentSourceReconciler) sourcesForTenantObject(ctx context.Context, obj client.Object) []reconcile.Request {
	return r.sourcesNamingTenant(ctx, obj.GetName(), nil)
}

// sourcesNamingTenant lists the sources of tenant, but except.
func (r *SegmentSourceReconciler) sourcesNamingTenant(ctx context.Context, tenant string, except client.Object) []reconcile.Request {
	var list tallyv1.SegmentSourceList
	if err := r.List(ctx, &list, client.MatchingFields{tenantIndex: tenant}); err != nil {
		log.FromContext(ctx).Error(err, "listing the SegmentSources of a tenant", "tenant", tenant)
		return nil
	}
	var reqs []reconcile.Request
	for _, s := range list.Items {
		if except != nil && s.Namespace == except.GetNamespace() && s.Name == except.GetName() {
			continue
		}
		reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&s)})
	}
	return reqs
}
