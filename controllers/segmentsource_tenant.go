package controllers

import (
	"context"

	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
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

// reconcileTenant refuses a tenant another namespace claimed first. The tenant is the key of the
// rows in Postgres, and creating a SegmentSource is a namespace-level permission: without this
// check anyone who may create one could write into another team's rows. A tenant belongs to the
// namespace of its earliest SegmentSource; sources in that namespace share it freely (acme-web,
// acme-backend). The refused source gets nothing: no stream, receiver or worker.
func (r *SegmentSourceReconciler) reconcileTenant(ctx context.Context, st *reconcileState) error {
	obj := st.source
	var list tallyv1.SegmentSourceList
	if err := r.List(ctx, &list, client.MatchingFields{tenantIndex: obj.Spec.Tenant}); err != nil {
		return transient(ReasonReconcileError, err, "listing the SegmentSources of tenant %s", obj.Spec.Tenant)
	}
	// The message names the tenant's first source, whichever order the cache lists them in.
	var owner *tallyv1.SegmentSource
	for i := range list.Items {
		s := &list.Items[i]
		if claimedBefore(s, obj) && (owner == nil || claimedBefore(s, owner)) {
			owner = s
		}
	}
	if other := owner; other != nil && other.Namespace != obj.Namespace {
		// Never name the owner: that would tell a squatter whose tenant it found.
		return stalled(ReasonTenantClaimed,
			"tenant %q belongs to another namespace; a source in namespace %s may not write its rows: "+
				"re-create this source with another tenant, or ask the platform team",
			obj.Spec.Tenant, obj.Namespace)
	}
	return nil
}

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
// may own the tenant now.
func (r *SegmentSourceReconciler) sourcesOfTenant(ctx context.Context, obj client.Object) []reconcile.Request {
	tenants := tenantOf(obj)
	if len(tenants) == 0 {
		return nil
	}
	var list tallyv1.SegmentSourceList
	if err := r.List(ctx, &list, client.MatchingFields{tenantIndex: tenants[0]}); err != nil {
		return nil
	}
	var reqs []reconcile.Request
	for _, s := range list.Items {
		if s.Namespace != obj.GetNamespace() || s.Name != obj.GetName() {
			reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&s)})
		}
	}
	return reqs
}
