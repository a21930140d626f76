package controllers

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/resources"
	"github.com/tallyhq/tally/workers/pool"
)

// Reasons of a source whose pool refuses it.
const (
	ReasonPoolNotFound   = "PoolNotFound"
	ReasonPoolNotAllowed = "PoolNotAllowed"
	// ReasonPoolMember is NATSIsolated=False for a member: it shares the pool's NATS users.
	ReasonPoolMember = "PoolMember"
)

// poolIndex indexes SegmentSources by the pool they name ("namespace/name").
const poolIndex = ".spec.pool"

func poolOf(obj client.Object) []string {
	s, ok := obj.(*tallyv1.SegmentSource)
	if !ok {
		return nil
	}
	if ns, name, ok := s.PoolKey(); ok {
		return []string{ns + "/" + name}
	}
	return nil
}

// memberSteps replace the dedicated Deployments with an entry in the pool: the tenant rules
// first, then the pool's admission, the Secrets the source names, its own stream, and the entry.
func (r *SegmentSourceReconciler) memberSteps() []subReconciler {
	return []subReconciler{
		r.reconcileTenant,
		r.reconcilePoolAdmission,
		r.reconcileWriteKey,
		r.reconcileSharedSecret,
		r.reconcileInsightsSecret,
		r.reconcileMemberDatabase,
		r.removeDedicatedObjects,
		r.reconcileStream,
		r.reconcileMemberEntry,
		r.observe,
	}
}

// reconcilePoolAdmission finds the pool and checks that it admits the source's namespace. A
// refused source leaves the pool it was in (its entry and keys go) and is Stalled: the pool watch
// and the namespace watch wake it when the answer may change.
func (r *SegmentSourceReconciler) reconcilePoolAdmission(ctx context.Context, st *reconcileState) error {
	obj := st.source
	ns, name, _ := obj.PoolKey()
	p := &tallyv1.SegmentSourcePool{}
	err := r.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, p)
	switch {
	case apierrors.IsNotFound(err) || (err == nil && !p.DeletionTimestamp.IsZero()):
		err = stalled(ReasonPoolNotFound, "SegmentSourcePool %s/%s does not exist; create it or fix spec.pool", ns, name)
	case err != nil:
		return transient(ReasonReconcileError, err, "reading SegmentSourcePool %s/%s", ns, name)
	default:
		admitted, aerr := r.poolAdmits(ctx, p, obj.Namespace)
		if aerr != nil {
			return aerr
		}
		if !admitted {
			err = stalled(ReasonPoolNotAllowed, "SegmentSourcePool %s/%s does not admit SegmentSources of namespace %s (spec.allowedNamespaces)",
				ns, name, obj.Namespace)
		}
	}
	if err != nil {
		if leaveErr := r.leavePool(ctx, st); leaveErr != nil {
			return leaveErr
		}
		return err
	}
	st.pool = p
	return nil
}

// poolAdmits applies allowedNamespaces, as Gateway API applies allowedRoutes.namespaces.
func (r *SegmentSourceReconciler) poolAdmits(ctx context.Context, p *tallyv1.SegmentSourcePool, namespace string) (bool, error) {
	allowed := p.Spec.AllowedNamespaces
	switch allowed.FromOrDefault() {
	case tallyv1.NamespacesFromAll:
		return true, nil
	case tallyv1.NamespacesFromSelector:
		sel, err := metav1.LabelSelectorAsSelector(allowed.Selector)
		if err != nil {
			return false, nil // a selector the API server accepted but that does not parse admits nobody
		}
		nsObj := &corev1.Namespace{}
		if err := r.Get(ctx, types.NamespacedName{Name: namespace}, nsObj); err != nil {
			return false, transient(ReasonReconcileError, err, "reading namespace %s", namespace)
		}
		return sel.Matches(labels.Set(nsObj.Labels)), nil
	default:
		return p.Namespace == namespace, nil
	}
}

// reconcileMemberDatabase resolves how the pool's workers write this member's rows: on the pool's
// own login, granted its tenant's role here, or with the Secret the source names;
// nothing when neither (tenant logins off: the pool's workers use the manager's login, as
// dedicated workers do).
func (r *SegmentSourceReconciler) reconcileMemberDatabase(ctx context.Context, st *reconcileState) error {
	obj := st.source
	st.databaseURL, st.databaseRole = nil, ""
	if ref := obj.Spec.Worker.DatabaseSecretRef; ref != nil {
		value, err := r.readSourceSecretKey(ctx, obj.Namespace, ref.Name, ref.DatabaseURLKey(), "database")
		if err != nil {
			return err
		}
		st.databaseURL = value
		if r.Roles == nil {
			return nil
		}
		// A grant from before the member named its Secret would let the pool's login go on
		// acting for its tenant, which its workers no longer need.
		if err := r.revokeForOwnLogin(ctx, obj.Namespace+"/"+obj.Name); err != nil {
			return transient(ReasonDatabaseRoleFailed, redacted(err), "taking back the pools' Postgres grants for %s/%s", obj.Namespace, obj.Name)
		}
		return nil
	}
	if r.Roles == nil {
		return nil
	}
	if _, err := r.tenantLogin(ctx, obj.Spec.Tenant, obj.Annotations[RotateDatabaseCredentialsAnnotation]); err != nil {
		return transient(ReasonDatabaseRoleFailed, redacted(err), "creating the Postgres login of tenant %q", obj.Spec.Tenant)
	}
	pool := poolRef(st.pool).String()
	role, err := r.poolMemberRole(ctx, st.pool.UID, pool, obj.Namespace+"/"+obj.Name, obj.Spec.Tenant)
	if errors.Is(err, ErrNoPoolLogin) { // the pool's reconcile makes it
		return waiting(ReasonProgressing, poolRequeue, "the Postgres login of pool %s does not exist yet", pool)
	}
	if err != nil {
		return transient(ReasonDatabaseRoleFailed, redacted(err), "letting the Postgres login of pool %s act for tenant %q", pool, obj.Spec.Tenant)
	}
	st.databaseRole = role
	return nil
}

// removeDedicatedObjects deletes what the source had as a dedicated source: its Deployments,
// Service, PDB, HPA, ConfigMap and Secret copies (its settings now travel in the bucket).
func (r *SegmentSourceReconciler) removeDedicatedObjects(ctx context.Context, st *reconcileState) error {
	obj := st.source
	for _, o := range []struct {
		obj  client.Object
		name string
	}{
		{&appsv1.Deployment{}, resources.ReceiverName(obj)},
		{&appsv1.Deployment{}, resources.WorkerName(obj)},
		{&corev1.Service{}, resources.ReceiverName(obj)},
		{&policyv1.PodDisruptionBudget{}, resources.ReceiverName(obj)},
		{&autoscalingv2.HorizontalPodAutoscaler{}, resources.ReceiverName(obj)},
		{&corev1.ConfigMap{}, resources.ConfigMapName(obj)},
		{secretMetadata(), resources.DatabaseSecretCopyName(obj)},
		{secretMetadata(), resources.NATSCredsSecretCopyName(obj)},
		{secretMetadata(), resources.NATSUserSecretName(obj, resources.ComponentReceiver)},
		{secretMetadata(), resources.NATSUserSecretName(obj, resources.ComponentWorker)},
	} {
		if err := r.deleteOwned(ctx, st, o.obj, o.name); err != nil {
			return err
		}
	}
	setCondition(obj, tallyv1.ConditionNATSIsolated, metav1.ConditionFalse, ReasonPoolMember, fmt.Sprintf(
		"served by SegmentSourcePool %s/%s, whose pods are trusted with every member's subjects; the receivers keep "+
			"members apart by write key and the workers write each member's rows only where its tenant's Postgres role reaches", st.pool.Namespace, st.pool.Name))
	return nil
}

// reconcileMemberEntry puts the source's secrets into the pool's Secrets and its settings and key
// digests into the pool's bucket, each only when it differs, and reports the pool's Deployments.
func (r *SegmentSourceReconciler) reconcileMemberEntry(ctx context.Context, st *reconcileState) error {
	obj, p := st.source, st.pool
	key := p.Namespace + "/" + p.Name
	if obj.Status.Pool != "" && obj.Status.Pool != key {
		if err := r.leavePool(ctx, st); err != nil {
			return err
		}
	}
	member := resources.MemberKey(obj)
	recv := map[string][]byte{}
	if len(st.sharedSecrets) > 0 {
		recv[member] = []byte(joinLines(st.sharedSecrets))
	}
	work := map[string][]byte{}
	if st.databaseURL != nil {
		work[member+resources.MemberDatabaseURLSuffix] = st.databaseURL
	}
	if st.databaseRole != "" {
		work[member+resources.MemberDatabaseRoleSuffix] = []byte(st.databaseRole)
	}
	if st.insightsKey != "" {
		work[member+resources.MemberInsightsWriteKeySuffix] = []byte(st.insightsKey)
	}
	if err := r.patchMemberKeys(ctx, p.Namespace, resources.PoolReceiverSecretsName(p.Name), member, []string{member}, recv); err != nil {
		return err
	}
	if err := r.patchMemberKeys(ctx, p.Namespace, resources.PoolWorkerSecretsName(p.Name), member, memberWorkerKeys(member), work); err != nil {
		return err
	}

	entry := pool.Member{Source: *resources.MemberConfig(obj, p), WriteKeyDigests: st.writeKeyDigests, Suspended: obj.Spec.Suspend}
	if err := r.putMember(ctx, poolRef(p), entry); err != nil {
		return err
	}
	obj.Status.Pool = key
	obj.Status.Endpoint = resources.PoolEndpoint(p)

	// The member is served when the pool's pods are: report their Deployments.
	st.receiver, st.worker = r.cachedDeployment(ctx, p.Namespace, resources.PoolReceiverName(p)), r.cachedDeployment(ctx, p.Namespace, resources.PoolWorkerName(p))
	return nil
}

func (r *SegmentSourceReconciler) cachedDeployment(ctx context.Context, namespace, name string) *appsv1.Deployment {
	d := &appsv1.Deployment{}
	if err := r.Get(ctx, types.NamespacedName{Namespace: namespace, Name: name}, d); err != nil {
		return nil
	}
	return d
}

// putMember writes the entry unless the bucket holds exactly it.
func (r *SegmentSourceReconciler) putMember(ctx context.Context, ref pool.Ref, m pool.Member) error {
	if !r.NATS.Connected() {
		return transient(ReasonNATSUnavailable, nil, "NATS at %s is not reachable", r.natsURL())
	}
	nctx, cancel := context.WithTimeout(ctx, r.Config.NATSTimeout)
	defer cancel()
	kv, err := r.buckets.get(nctx, r.NATS.JetStream(), ref, false)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return waiting(ReasonProgressing, poolRequeue, "the bucket of SegmentSourcePool %s does not exist yet", ref)
	}
	if err != nil {
		return r.natsError(err, "looking up bucket "+ref.Bucket())
	}
	wrote, err := pool.Put(nctx, kv, m)
	if err != nil {
		r.buckets.forget(ref) // the bucket may have been deleted and made again
		return r.natsError(err, "writing the entry of "+pool.Key(m.Source)+" in bucket "+ref.Bucket())
	}
	if wrote {
		log.FromContext(ctx).V(1).Info("wrote pool entry", "pool", ref.String())
	}
	return nil
}

// leavePool removes the source's entry and keys from the pool its status names, if any: the
// pool's receivers stop accepting its keys and its workers stop applying its stream.
func (r *SegmentSourceReconciler) leavePool(ctx context.Context, st *reconcileState) error {
	obj := st.source
	if obj.Status.Pool == "" {
		return nil
	}
	ref, err := pool.ParseRef(obj.Status.Pool)
	if err != nil {
		obj.Status.Pool = ""
		return nil
	}
	if !r.NATS.Connected() {
		return transient(ReasonNATSUnavailable, nil, "cannot leave pool %s: NATS at %s is not reachable", ref, r.natsURL())
	}
	nctx, cancel := context.WithTimeout(ctx, r.Config.NATSTimeout)
	defer cancel()
	kv, err := r.buckets.get(nctx, r.NATS.JetStream(), ref, false)
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound):
	case err != nil:
		return r.natsError(err, "looking up bucket "+ref.Bucket())
	default:
		if err := pool.Remove(nctx, kv, obj.Namespace, obj.Name); err != nil {
			r.buckets.forget(ref)
			return r.natsError(err, "removing the entry of "+resources.MemberKey(obj))
		}
	}
	member := resources.MemberKey(obj)
	if err := r.patchMemberKeys(ctx, ref.Namespace, resources.PoolReceiverSecretsName(ref.Name), member, []string{member}, nil); err != nil {
		return err
	}
	if err := r.patchMemberKeys(ctx, ref.Namespace, resources.PoolWorkerSecretsName(ref.Name), member, memberWorkerKeys(member), nil); err != nil {
		return err
	}
	if r.Roles != nil {
		if err := r.revokePoolMember(ctx, ref.String(), obj.Namespace+"/"+obj.Name); err != nil {
			return transient(ReasonDatabaseRoleFailed, redacted(err), "taking back what the Postgres login of pool %s was granted for this source", ref)
		}
	}
	log.FromContext(ctx).Info("left pool", "pool", ref.String())
	obj.Status.Pool = ""
	return nil
}

func joinLines(lines []string) string { return strings.Join(lines, "\n") }

// memberWorkerKeys are a member's keys in its pool's worker Secret.
func memberWorkerKeys(member string) []string {
	return []string{member + resources.MemberDatabaseURLSuffix, member + resources.MemberDatabaseRoleSuffix, member + resources.MemberInsightsWriteKeySuffix}
}
