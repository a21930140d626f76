package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/resources"
	"github.com/tallyhq/tally/workers/pool"
	"github.com/tallyhq/tally/workers/source"
)

// waitForSecretRequeue is how often a source waiting for a Secret is re-checked. The Secret watch
// normally wakes it first; this covers Secrets in namespaces the cache does not watch.
const waitForSecretRequeue = 30 * time.Second

// conflictRequeue is how often a source blocked by a same-named foreign object is re-checked.
const conflictRequeue = time.Minute

// reconcileWriteKey checks that the write key Secret and key exist and hold at least one key, and
// hashes the keys so a rotation rolls the receivers. The Secret is read from the API server: the
// manager caches only Secret metadata.
func (r *SegmentSourceReconciler) reconcileWriteKey(ctx context.Context, st *reconcileState) error {
	obj := st.source
	ref := obj.Spec.WriteKeySecretRef
	// The cached metadata tells whether the Secret changed since the last read: only then is
	// its data read from the API server.
	if m := secretMetadata(); r.cachedGet(ctx, types.NamespacedName{Namespace: obj.Namespace, Name: ref.Name}, m) == nil &&
		m.GetLabels()[resources.LabelSourceSecret] == "true" {
		if last, ok := r.writeKeys.load(obj.UID); ok && last.secret == ref.Name && last.key == obj.WriteKeyKey() &&
			last.resourceVersion == m.GetResourceVersion() {
			st.writeKeyHash, st.writeKeyDigests = last.hash, last.digests
			obj.Status.WriteKeySecretVersion = last.resourceVersion
			return nil
		}
	}
	secret := &corev1.Secret{}
	if err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: obj.Namespace, Name: ref.Name}, secret); err != nil {
		if apierrors.IsNotFound(err) {
			return waiting(ReasonSecretNotFound, waitForSecretRequeue,
				"write key Secret %q not found in namespace %q", ref.Name, obj.Namespace)
		}
		return transient(ReasonReconcileError, err, "reading write key Secret %q", ref.Name)
	}
	if err := sourceSecretLabelled(secret, "write key"); err != nil {
		return err
	}
	value, ok := secret.Data[obj.WriteKeyKey()]
	if !ok {
		return waiting(ReasonSecretKeyNotFound, waitForSecretRequeue,
			"write key Secret %q has no key %q", ref.Name, obj.WriteKeyKey())
	}
	keys := source.ParseWriteKeys(string(value))
	if len(keys) == 0 {
		return waiting(ReasonSecretKeyNotFound, waitForSecretRequeue,
			"key %q of write key Secret %q holds no write key", obj.WriteKeyKey(), ref.Name)
	}
	st.writeKeyHash = resources.Hash(map[string][]byte{"keys": []byte(strings.Join(keys, "\n"))})
	st.writeKeyDigests = pool.DigestKeys(keys)
	obj.Status.WriteKeySecretVersion = secret.ResourceVersion
	r.writeKeys.store(obj.UID, writeKeyRead{secret: ref.Name, key: obj.WriteKeyKey(), resourceVersion: secret.ResourceVersion,
		hash: st.writeKeyHash, digests: st.writeKeyDigests})
	return nil
}

// reconcileSharedSecret checks the destination's shared secret Secret, when the source names one,
// and hashes its secrets so a rotation rolls the receivers, as the write key does.
func (r *SegmentSourceReconciler) reconcileSharedSecret(ctx context.Context, st *reconcileState) error {
	ref := st.source.Spec.Destination.SharedSecretRef
	if ref == nil {
		st.sharedSecret, st.sharedSecrets = nil, nil
		return nil
	}
	value, err := r.readSourceSecretKey(ctx, st.source.Namespace, ref.Name, ref.SharedSecretKey(), "shared secret")
	if err != nil {
		return err
	}
	secrets := source.ParseWriteKeys(string(value))
	if len(secrets) == 0 {
		return waiting(ReasonSecretKeyNotFound, waitForSecretRequeue,
			"key %q of shared secret Secret %q holds no secret", ref.SharedSecretKey(), ref.Name)
	}
	st.sharedSecrets = secrets
	st.sharedSecret = &resources.SecretKey{Name: ref.Name, Key: ref.SharedSecretKey(),
		Hash: resources.Hash(map[string][]byte{"secrets": []byte(strings.Join(secrets, "\n"))})}
	return nil
}

// reconcileDatabaseSecret resolves where workers read the Postgres URL: the source's own Secret,
// or a Secret owned by the source, in its namespace, with the URL of the tenant's own login (or,
// without tenant roles, a copy of the manager's).
func (r *SegmentSourceReconciler) reconcileDatabaseSecret(ctx context.Context, st *reconcileState) error {
	obj := st.source
	if ref := obj.Spec.Worker.DatabaseSecretRef; ref != nil {
		value, err := r.readSourceSecretKey(ctx, obj.Namespace, ref.Name, ref.DatabaseURLKey(), "database")
		if err != nil {
			return err
		}
		st.database = resources.SecretKey{Name: ref.Name, Key: ref.DatabaseURLKey(),
			Hash: resources.Hash(map[string][]byte{"url": value})}
		// A copy made before the source named its own Secret is no longer mounted anywhere.
		return r.deleteOwned(ctx, st, secretMetadata(), resources.DatabaseSecretCopyName(obj))
	}
	if r.Config.DatabaseSecret == "" {
		return stalled(ReasonNoDatabaseSecret,
			"spec.worker.databaseSecretRef is not set and the manager was started without --database-secret")
	}
	key := r.Config.DatabaseSecretKey
	value, err := r.readSecretKey(ctx, r.Config.ManagerNamespace, r.Config.DatabaseSecret, key, "manager's database")
	if err != nil {
		return err
	}
	if r.Roles != nil {
		url, err := r.tenantLogin(ctx, obj.Spec.Tenant, obj.Annotations[RotateDatabaseCredentialsAnnotation])
		if err != nil {
			return transient(ReasonDatabaseRoleFailed, redacted(err), "creating the Postgres login of tenant %q", obj.Spec.Tenant)
		}
		value = []byte(url)
	}
	data := map[string][]byte{key: value}
	name := resources.DatabaseSecretCopyName(obj)
	if err := r.applySecretCopy(ctx, st, resources.SecretCopy(obj, name, resources.ComponentDatabase, data)); err != nil {
		return err
	}
	st.database = resources.SecretKey{Name: name, Key: key, Hash: resources.Hash(data)}
	return nil
}

// dropTenantRoleIfLast removes the tenant's Postgres login with the tenant's last source; the
// rows stay. Sources of the tenant still deleting count as gone.
func (r *SegmentSourceReconciler) dropTenantRoleIfLast(ctx context.Context, obj *tallyv1.SegmentSource) error {
	if r.Roles == nil {
		return nil
	}
	var list tallyv1.SegmentSourceList
	if err := r.List(ctx, &list, client.MatchingFields{tenantIndex: obj.Spec.Tenant}); err != nil {
		return transient(ReasonReconcileError, err, "listing the SegmentSources of tenant %s", obj.Spec.Tenant)
	}
	for _, s := range list.Items {
		if s.UID != obj.UID && s.DeletionTimestamp.IsZero() {
			return nil
		}
	}
	r.logins.forget(obj.Spec.Tenant)
	if err := r.Roles.DropTenantRole(ctx, obj.Spec.Tenant); err != nil {
		return transient(ReasonDatabaseRoleFailed, redacted(err), "dropping the Postgres login of tenant %q", obj.Spec.Tenant)
	}
	return nil
}

// reconcileNATSCredsSecret copies the manager's NATS credentials into the source's namespace, when
// the manager has any, for the pods to mount.
func (r *SegmentSourceReconciler) reconcileNATSCredsSecret(ctx context.Context, st *reconcileState) error {
	if r.Config.NATSCredsSecret == "" {
		return nil
	}
	obj := st.source
	key := r.Config.NATSCredsSecretKey
	value, err := r.readSecretKey(ctx, r.Config.ManagerNamespace, r.Config.NATSCredsSecret, key, "manager's NATS credentials")
	if err != nil {
		return err
	}
	data := map[string][]byte{key: value}
	name := resources.NATSCredsSecretCopyName(obj)
	if err := r.applySecretCopy(ctx, st, resources.SecretCopy(obj, name, resources.ComponentNATS, data)); err != nil {
		return err
	}
	st.natsCreds = &resources.SecretKey{Name: name, Key: key, Hash: resources.Hash(data)}
	return nil
}

// reconcileConfig applies the ConfigMap the receiver and workers read their settings from.
func (r *SegmentSourceReconciler) reconcileConfig(ctx context.Context, st *reconcileState) error {
	data, err := resources.ConfigData(st.source)
	if err != nil {
		return stalled(ReasonReconcileError, "%v", err)
	}
	st.configHash = resources.Hash(map[string][]byte{source.ConfigFileName: []byte(data[source.ConfigFileName])})
	return applyOwned(ctx, r, st, &corev1.ConfigMap{}, resources.ConfigMap(st.source, data))
}

// reconcileReceiver applies the receiver Deployment and Service, and the PDB and HPA when the spec
// asks for them (removing them when it no longer does).
func (r *SegmentSourceReconciler) reconcileReceiver(ctx context.Context, st *reconcileState) error {
	obj := st.source
	in := r.inputs(st)
	dep := &appsv1.Deployment{}
	if err := applyOwned(ctx, r, st, dep, resources.ReceiverDeployment(in)); err != nil {
		return err
	}
	st.receiver = dep
	if err := applyOwned(ctx, r, st, &corev1.Service{}, resources.ReceiverService(obj)); err != nil {
		return err
	}
	if resources.WantsReceiverPDB(obj) {
		if err := applyOwned(ctx, r, st, &policyv1.PodDisruptionBudget{}, resources.ReceiverPDB(obj)); err != nil {
			return err
		}
	} else if err := r.deleteOwned(ctx, st, &policyv1.PodDisruptionBudget{}, resources.ReceiverName(obj)); err != nil {
		return err
	}
	if resources.WantsReceiverHPA(obj) {
		if err := applyOwned(ctx, r, st, &autoscalingv2.HorizontalPodAutoscaler{}, resources.ReceiverHPA(obj)); err != nil {
			return err
		}
	} else if err := r.deleteOwned(ctx, st, &autoscalingv2.HorizontalPodAutoscaler{}, resources.ReceiverName(obj)); err != nil {
		return err
	}
	obj.Status.Endpoint = resources.Endpoint(obj)
	return nil
}

// reconcileWorker applies the worker Deployment.
func (r *SegmentSourceReconciler) reconcileWorker(ctx context.Context, st *reconcileState) error {
	dep := &appsv1.Deployment{}
	if err := applyOwned(ctx, r, st, dep, resources.WorkerDeployment(r.inputs(st))); err != nil {
		return err
	}
	st.worker = dep
	return nil
}

func (r *SegmentSourceReconciler) inputs(st *reconcileState) resources.Inputs {
	return resources.Inputs{
		Source:       st.source,
		Image:        r.Config.Image,
		NATSURL:      r.Config.NATSURL,
		ConfigHash:   st.configHash,
		WriteKeyHash: st.writeKeyHash,
		SharedSecret: st.sharedSecret,
		Database:     st.database,
		NATSCreds:    st.natsCreds,

		ReceiverNATSCreds: st.receiverNATSCreds,
		WorkerNATSCreds:   st.workerNATSCreds,

		InsightsWriteKey: st.insightsWriteKey,

		ReceiverResources: r.Config.ReceiverResources,
		WorkerResources:   r.Config.WorkerResources,
		AtomicBatches:     r.Config.ReceiverAtomicBatches,
	}
}

// readSecretKey reads one key of a Secret from the API server; a missing Secret or key is a
// dependency to wait for, with a message naming it.
// readSourceSecretKey is readSecretKey for a Secret a SegmentSource names: it must carry the
// label tally.dev/source-secret: "true", so a SegmentSource cannot make the operator mount some
// other Secret of its namespace into a pod.
func (r *SegmentSourceReconciler) readSourceSecretKey(ctx context.Context, namespace, name, key, what string) ([]byte, error) {
	return r.readKey(ctx, namespace, name, key, what, true)
}

// readSecretKey reads one key of a Secret the manager itself was configured with.
func (r *SegmentSourceReconciler) readSecretKey(ctx context.Context, namespace, name, key, what string) ([]byte, error) {
	return r.readKey(ctx, namespace, name, key, what, false)
}

// sourceSecretLabelled refuses a Secret a SegmentSource names without the opt-in label.
func sourceSecretLabelled(secret *corev1.Secret, what string) error {
	if secret.Labels[resources.LabelSourceSecret] == "true" {
		return nil
	}
	return stalled(ReasonSecretNotLabelled, "%s Secret %q lacks the label %s: \"true\"; the operator mounts only Secrets labelled for it",
		what, secret.Name, resources.LabelSourceSecret)
}

func (r *SegmentSourceReconciler) readKey(ctx context.Context, namespace, name, key, what string, sourceSecret bool) ([]byte, error) {
	secret := &corev1.Secret{}
	if err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: namespace, Name: name}, secret); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, waiting(ReasonSecretNotFound, waitForSecretRequeue, "%s Secret %q not found in namespace %q", what, name, namespace)
		}
		return nil, transient(ReasonReconcileError, err, "reading %s Secret %q", what, name)
	}
	if sourceSecret {
		if err := sourceSecretLabelled(secret, what); err != nil {
			return nil, err
		}
	}
	value, ok := secret.Data[key]
	if !ok || len(value) == 0 {
		return nil, waiting(ReasonSecretKeyNotFound, waitForSecretRequeue, "%s Secret %s/%s has no key %q", what, namespace, name, key)
	}
	return value, nil
}

// applySecretCopy applies a Secret the operator copies. Its existing state is looked up as
// metadata only, so Secret data never enters the manager's cache.
func (r *SegmentSourceReconciler) applySecretCopy(ctx context.Context, st *reconcileState, ac *corev1ac.SecretApplyConfiguration) error {
	return applyOwned(ctx, r, st, secretMetadata(), ac)
}

// secretMetadata is an empty Secret read as metadata only.
func secretMetadata() *metav1.PartialObjectMetadata {
	m := &metav1.PartialObjectMetadata{}
	m.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Secret"))
	return m
}

// annotatable is an apply configuration the applied-hash annotation can be added to.
type annotatable[T any] interface {
	runtime.ApplyConfiguration
	WithAnnotations(map[string]string) T
	GetName() *string
	GetNamespace() *string
}

// applyOwned server-side applies ac under the operator's field owner, unless the object already
// carries the hash of this exact configuration (then a periodic reconcile writes nothing). It
// refuses to take over an object of the same name that the source does not control. existing
// receives the object as it is after the call (from the cache when nothing was written).
func applyOwned[T annotatable[T]](ctx context.Context, r *SegmentSourceReconciler, st *reconcileState, existing client.Object, ac T) error {
	return applyOwnedBy(ctx, r, st.source.UID, existing, ac)
}

// applyOwnedBy is applyOwned for any owner (a SegmentSource or a SegmentSourcePool).
func applyOwnedBy[T annotatable[T]](ctx context.Context, r *SegmentSourceReconciler, ownerUID types.UID, existing client.Object, ac T) error {
	raw, err := json.Marshal(ac)
	if err != nil {
		return fmt.Errorf("encoding apply configuration: %w", err)
	}
	sum := sha256.Sum256(raw)
	hash := hex.EncodeToString(sum[:16])
	ac.WithAnnotations(map[string]string{resources.AnnotationAppliedHash: hash})

	key := types.NamespacedName{Namespace: *ac.GetNamespace(), Name: *ac.GetName()}
	kind := kindOf(r, existing)
	found, err := r.getOwnedCandidate(ctx, key, existing)
	if err != nil {
		return transient(ReasonReconcileError, err, "reading %s %q", kind, key.Name)
	}
	if found {
		if owner := metav1.GetControllerOf(existing); owner == nil || owner.UID != ownerUID {
			return r.conflict(kind, key.Name, owner)
		}
		if existing.GetAnnotations()[resources.AnnotationAppliedHash] == hash && r.applied.unchanged(existing) {
			return nil
		}
	}
	if err := r.Apply(ctx, ac, client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
		return transient(ReasonReconcileError, err, "applying %s %q", kind, key.Name)
	}
	r.Metrics.Applied(kind)
	log.FromContext(ctx).V(1).Info("applied", "kind", kind, "name", key.Name, "created", !found)
	// Take the object from the apply's own response, not from a second read: status must see
	// the new generation (the cache may lag behind), and an edit landing between the apply and a
	// read-back would be remembered as ours and never reverted.
	if err := fromApplyResponse(ac, existing); err != nil {
		return transient(ReasonReconcileError, err, "reading %s %q", kind, key.Name)
	}
	r.applied.remember(existing)
	return nil
}

// fromApplyResponse copies the object the API server answered the apply with (the client has
// decoded it into the apply configuration) into obj.
func fromApplyResponse(ac runtime.ApplyConfiguration, obj client.Object) error {
	raw, err := json.Marshal(ac)
	if err != nil {
		return err
	}
	v := reflect.ValueOf(obj).Elem()
	v.Set(reflect.Zero(v.Type()))
	return json.Unmarshal(raw, obj)
}

// appliedVersions remembers, per owned object, the version it had right after the operator's
// last apply: its generation when it has one (Deployments, PDBs, HPAs: status updates do not
// count), else its resourceVersion. A different version means someone else changed the object,
// so the configuration is applied again, which reverts edits to fields the operator owns and is
// a no-op on the server otherwise. The memory is per process: after a restart every object is
// applied once more (no-op applies), then periodic reconciles write nothing again.
type appliedVersions struct{ m sync.Map }

func objectVersion(obj client.Object) string {
	if g := obj.GetGeneration(); g > 0 {
		return "g" + strconv.FormatInt(g, 10)
	}
	return "rv" + obj.GetResourceVersion()
}

func (a *appliedVersions) remember(obj client.Object) { a.m.Store(obj.GetUID(), objectVersion(obj)) }

func (a *appliedVersions) unchanged(obj client.Object) bool {
	v, ok := a.m.Load(obj.GetUID())
	return ok && v.(string) == objectVersion(obj)
}

// getOwnedCandidate looks an object up in the cache, which holds only objects labelled as ours,
// and falls back to the API server on a miss, so a same-named object made by someone else is seen
// (and not silently adopted by the apply that would follow).
func (r *SegmentSourceReconciler) getOwnedCandidate(ctx context.Context, key types.NamespacedName, obj client.Object) (bool, error) {
	err := r.cachedGet(ctx, key, obj)
	if err == nil {
		return true, nil
	}
	if !apierrors.IsNotFound(err) {
		return false, err
	}
	err = r.APIReader.Get(ctx, key, obj)
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	return err == nil, err
}

// deleteOwned removes an object the spec no longer asks for (a PDB or HPA), if the source owns it.
func (r *SegmentSourceReconciler) deleteOwned(ctx context.Context, st *reconcileState, obj client.Object, name string) error {
	return r.deleteOwnedBy(ctx, st.source.Namespace, st.source.UID, obj, name)
}

// deleteOwnedBy is deleteOwned for any owner.
func (r *SegmentSourceReconciler) deleteOwnedBy(ctx context.Context, namespace string, ownerUID types.UID, obj client.Object, name string) error {
	key := types.NamespacedName{Namespace: namespace, Name: name}
	if err := r.cachedGet(ctx, key, obj); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return transient(ReasonReconcileError, err, "reading %s %q", kindOf(r, obj), name)
	}
	if owner := metav1.GetControllerOf(obj); owner == nil || owner.UID != ownerUID {
		return nil
	}
	if err := r.Delete(ctx, obj); err != nil && !apierrors.IsNotFound(err) {
		return transient(ReasonReconcileError, err, "deleting %s %q", kindOf(r, obj), name)
	}
	log.FromContext(ctx).V(1).Info("deleted", "kind", kindOf(r, obj), "name", name)
	return nil
}

// conflict reports a same-named object the source does not control. It is not adopted: that
// object may belong to someone else, and overwriting it would break them.
func (r *SegmentSourceReconciler) conflict(kind, name string, owner *metav1.OwnerReference) error {
	by := "no controller"
	if owner != nil {
		by = fmt.Sprintf("%s %q", owner.Kind, owner.Name)
	}
	return waiting(ReasonResourceConflict, conflictRequeue,
		"%s %q already exists and is controlled by %s, not by this object; rename or delete it", kind, name, by)
}

func kindOf(r *SegmentSourceReconciler, obj client.Object) string {
	if gvk := obj.GetObjectKind().GroupVersionKind(); gvk.Kind != "" {
		return gvk.Kind
	}
	gvks, _, err := r.Scheme().ObjectKinds(obj)
	if err != nil || len(gvks) == 0 {
		return fmt.Sprintf("%T", obj)
	}
	return gvks[0].Kind
}

// cachedGet reads obj from the manager's caches: a Secret's metadata from the metadata informer
// (the client would go to the API server for any Secret), anything else through the client.
func (r *SegmentSourceReconciler) cachedGet(ctx context.Context, key types.NamespacedName, obj client.Object) error {
	if m, ok := obj.(*metav1.PartialObjectMetadata); ok && r.Cache != nil {
		return r.Cache.Get(ctx, key, m)
	}
	return r.Get(ctx, key, obj)
}
