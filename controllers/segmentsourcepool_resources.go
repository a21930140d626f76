package controllers

import (
	"context"
	"encoding/json"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/log"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/resources"
	"github.com/tallyhq/tally/workers/natsauth"
)

// reconcileBucket makes sure the pool's bucket exists. It looks the bucket up on every pass (one
// request), so a bucket deleted behind the operator's back comes back; its members write their
// entries again on their next pass.
func (p *SegmentSourcePoolReconciler) reconcileBucket(ctx context.Context, st *poolState) error {
	r := p.Sources
	if !r.NATS.Connected() {
		return transient(ReasonNATSUnavailable, nil, "NATS at %s is not reachable", r.natsURL())
	}
	ref := poolRef(st.pool)
	nctx, cancel := context.WithTimeout(ctx, r.Config.NATSTimeout)
	defer cancel()
	r.buckets.forget(ref)
	if _, err := r.buckets.get(nctx, r.NATS.JetStream(), ref, true); err != nil {
		return r.natsError(err, "ensuring bucket "+ref.Bucket())
	}
	return nil
}

// reconcileNATSAuth gives the pool's pods their NATS users (with the manager's signing key), or
// a copy of the manager's static credentials, or none, as for a dedicated source.
func (p *SegmentSourcePoolReconciler) reconcileNATSAuth(ctx context.Context, st *poolState) error {
	r, obj := p.Sources, st.pool
	if r.Config.NATSSigningKeySecret == "" {
		if r.Config.NATSCredsSecret == "" {
			return nil
		}
		key := r.Config.NATSCredsSecretKey
		value, err := r.readSecretKey(ctx, r.Config.ManagerNamespace, r.Config.NATSCredsSecret, key, "manager's NATS credentials")
		if err != nil {
			return err
		}
		data := map[string][]byte{key: value}
		name := resources.PoolNATSCredsSecretCopyName(obj)
		if err := applyOwnedBy(ctx, r, obj.UID, secretMetadata(), resources.PoolSecretCopy(obj, name, resources.ComponentNATS, data)); err != nil {
			return err
		}
		creds := &resources.SecretKey{Name: name, Key: key, Hash: resources.Hash(data)}
		st.receiverNATSCreds, st.workerNATSCreds = creds, creds
		return nil
	}
	issuer, err := r.natsIssuer(ctx)
	if err != nil {
		return err
	}
	ref := poolRef(obj)
	now := time.Now()
	for _, c := range []struct {
		component string
		role      natsauth.Role
		into      **resources.SecretKey
	}{
		{resources.ComponentReceiver, natsauth.Receiver, &st.receiverNATSCreds},
		{resources.ComponentWorker, natsauth.Worker, &st.workerNATSCreds},
	} {
		name := resources.PoolNATSUserSecretName(obj, c.component)
		perms, _ := json.Marshal(natsauth.PoolPermissions(ref, c.role))
		fingerprint := resources.Hash(map[string][]byte{"signingKey": []byte(issuer.SigningKey()), "account": []byte(issuer.Account()),
			"user": []byte(natsauth.PoolUserName(ref, c.role)), "permissions": perms})
		if key, ok := r.unchangedUserSecret(ctx, obj.Namespace, obj.UID, name, fingerprint, now); ok {
			*c.into = key
			continue
		}
		creds, err := r.currentUserCreds(ctx, obj.Namespace, obj.UID, name, func(creds []byte) bool {
			return issuer.CurrentPool(creds, ref, c.role, r.renewBefore(now))
		})
		if err != nil {
			return err
		}
		if creds == nil {
			var expires time.Time
			if r.Config.NATSUserTTL > 0 {
				expires = now.Add(r.Config.NATSUserTTL)
			}
			if creds, err = issuer.IssuePool(ref, c.role, expires); err != nil {
				return transient(ReasonReconcileError, err, "issuing the NATS user of the pool's %s", c.component)
			}
			log.FromContext(ctx).Info("issued NATS user", "component", c.component, "secret", name, "signingKey", issuer.SigningKey())
		}
		data := map[string][]byte{NATSUserCredsKey: creds}
		hash := resources.Hash(data)
		expires := ""
		if t := natsauth.Expires(creds); !t.IsZero() {
			expires = t.UTC().Format(time.RFC3339)
		}
		ac := resources.PoolSecretCopy(obj, name, resources.ComponentNATSUser, data).WithAnnotations(map[string]string{
			annotationNATSUser: fingerprint, annotationNATSUserExpires: expires, annotationNATSCredsHash: hash,
		})
		if err := applyOwnedBy(ctx, r, obj.UID, secretMetadata(), ac); err != nil {
			return err
		}
		*c.into = &resources.SecretKey{Name: name, Key: NATSUserCredsKey, Hash: hash}
	}
	return nil
}

// reconcileSecrets creates the Secrets the members fill with their keys, once: the pool never
// writes their data (each member patches its own keys), so a periodic pass or a membership change
// costs the pool nothing. Without tenant logins, the workers get a copy of the manager's URL.
func (p *SegmentSourcePoolReconciler) reconcileSecrets(ctx context.Context, st *poolState) error {
	r, obj := p.Sources, st.pool
	for _, name := range []string{resources.PoolReceiverSecretsName(obj.Name), resources.PoolWorkerSecretsName(obj.Name)} {
		m := secretMetadata()
		found, err := r.getOwnedCandidate(ctx, types.NamespacedName{Namespace: obj.Namespace, Name: name}, m)
		if err != nil {
			return transient(ReasonReconcileError, err, "reading Secret %q", name)
		}
		if found {
			if owner := metav1.GetControllerOf(m); owner == nil || owner.UID != obj.UID {
				return r.conflict("Secret", name, owner)
			}
			continue
		}
		if err := applyOwnedBy(ctx, r, obj.UID, secretMetadata(), resources.PoolSecret(obj, name, resources.ComponentMemberSecrets)); err != nil {
			return err
		}
	}
	if r.Roles != nil {
		if err := p.reconcilePoolLogin(ctx, st); err != nil {
			return err
		}
	}
	name := resources.PoolDatabaseSecretCopyName(obj)
	if r.Roles != nil || r.Config.DatabaseSecret == "" {
		st.database = nil
		return r.deleteOwnedBy(ctx, obj.Namespace, obj.UID, secretMetadata(), name)
	}
	key := r.Config.DatabaseSecretKey
	value, err := r.readSecretKey(ctx, r.Config.ManagerNamespace, r.Config.DatabaseSecret, key, "manager's database")
	if err != nil {
		return err
	}
	data := map[string][]byte{key: value}
	if err := applyOwnedBy(ctx, r, obj.UID, secretMetadata(), resources.PoolSecretCopy(obj, name, resources.ComponentDatabase, data)); err != nil {
		return err
	}
	st.database = &resources.SecretKey{Name: name, Key: key, Hash: resources.Hash(data)}
	return nil
}

// reconcilePoolLogin puts the pool's own Postgres login into its worker Secret: the members'
// transactions run on it, each naming its tenant (the members' reconciles grant their roles).
func (p *SegmentSourcePoolReconciler) reconcilePoolLogin(ctx context.Context, st *poolState) error {
	r, obj := p.Sources, st.pool
	ref := poolRef(obj).String()
	url, err := r.poolLogin(ctx, ref)
	if err != nil {
		return transient(ReasonDatabaseRoleFailed, redacted(err), "creating the Postgres login of pool %s", ref)
	}
	return r.patchMemberKeys(ctx, obj.Namespace, resources.PoolWorkerSecretsName(obj.Name), "pool",
		[]string{resources.PoolDatabaseURLKey}, map[string][]byte{resources.PoolDatabaseURLKey: []byte(url)})
}

func (p *SegmentSourcePoolReconciler) inputs(st *poolState) resources.PoolInputs {
	c := p.Sources.Config
	return resources.PoolInputs{
		Pool: st.pool, Image: c.Image, NATSURL: c.NATSURL,
		ReceiverNATSCreds: st.receiverNATSCreds, WorkerNATSCreds: st.workerNATSCreds, Database: st.database,
		ReceiverResources: c.ReceiverResources, WorkerResources: c.WorkerResources,
		AtomicBatches: c.ReceiverAtomicBatches,
	}
}

// reconcileReceiver applies the receiver Deployment, its Service and, with autoscaling, its HPA.
func (p *SegmentSourcePoolReconciler) reconcileReceiver(ctx context.Context, st *poolState) error {
	r, obj := p.Sources, st.pool
	dep := &appsv1.Deployment{}
	if err := applyOwnedBy(ctx, r, obj.UID, dep, resources.PoolReceiverDeployment(p.inputs(st))); err != nil {
		return err
	}
	st.receiver = dep
	if err := applyOwnedBy(ctx, r, obj.UID, &corev1.Service{}, resources.PoolReceiverService(obj)); err != nil {
		return err
	}
	obj.Status.Endpoint = resources.PoolEndpoint(obj)
	if resources.WantsPoolReceiverPDB(obj) {
		if err := applyOwnedBy(ctx, r, obj.UID, &policyv1.PodDisruptionBudget{}, resources.PoolReceiverPDB(obj)); err != nil {
			return err
		}
	} else if err := r.deleteOwnedBy(ctx, obj.Namespace, obj.UID, &policyv1.PodDisruptionBudget{}, resources.PoolReceiverName(obj)); err != nil {
		return err
	}
	return p.reconcileHPA(ctx, st, resources.ComponentReceiver, resources.PoolReceiverName(obj), obj.Spec.Receiver.Autoscaling)
}

// reconcileWorker applies the worker Deployment and, with autoscaling, its HPA.
func (p *SegmentSourcePoolReconciler) reconcileWorker(ctx context.Context, st *poolState) error {
	r, obj := p.Sources, st.pool
	dep := &appsv1.Deployment{}
	if err := applyOwnedBy(ctx, r, obj.UID, dep, resources.PoolWorkerDeployment(p.inputs(st))); err != nil {
		return err
	}
	st.worker = dep
	return p.reconcileHPA(ctx, st, resources.ComponentWorker, resources.PoolWorkerName(obj), obj.Spec.Worker.Autoscaling)
}

func (p *SegmentSourcePoolReconciler) reconcileHPA(ctx context.Context, st *poolState, component, name string, a *tallyv1.Autoscaling) error {
	r, obj := p.Sources, st.pool
	if a == nil {
		return r.deleteOwnedBy(ctx, obj.Namespace, obj.UID, &autoscalingv2.HorizontalPodAutoscaler{}, name)
	}
	return applyOwnedBy(ctx, r, obj.UID, &autoscalingv2.HorizontalPodAutoscaler{}, resources.PoolHPA(obj, component, name, a))
}

// unchangedUserSecret is unchangedNATSUser for any owner.
func (r *SegmentSourceReconciler) unchangedUserSecret(ctx context.Context, namespace string, ownerUID types.UID, name, fingerprint string, now time.Time) (*resources.SecretKey, bool) {
	m := secretMetadata()
	if err := r.cachedGet(ctx, types.NamespacedName{Namespace: namespace, Name: name}, m); err != nil {
		return nil, false
	}
	ann := m.GetAnnotations()
	if owner := metav1.GetControllerOf(m); owner == nil || owner.UID != ownerUID ||
		!r.applied.unchanged(m) || ann[annotationNATSUser] != fingerprint || ann[annotationNATSCredsHash] == "" {
		return nil, false
	}
	if renew := r.renewBefore(now); renew.IsZero() {
		if ann[annotationNATSUserExpires] != "" {
			return nil, false
		}
	} else if expires, err := time.Parse(time.RFC3339, ann[annotationNATSUserExpires]); err != nil || !expires.After(renew) {
		return nil, false
	}
	return &resources.SecretKey{Name: name, Key: NATSUserCredsKey, Hash: ann[annotationNATSCredsHash]}, true
}

// currentUserCreds is currentNATSUser for any owner.
func (r *SegmentSourceReconciler) currentUserCreds(ctx context.Context, namespace string, ownerUID types.UID, name string, current func([]byte) bool) ([]byte, error) {
	secret := &corev1.Secret{}
	err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: namespace, Name: name}, secret)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, transient(ReasonReconcileError, err, "reading NATS user Secret %q", name)
	}
	if owner := metav1.GetControllerOf(secret); owner == nil || owner.UID != ownerUID {
		return nil, nil
	}
	if creds := secret.Data[NATSUserCredsKey]; current(creds) {
		return creds, nil
	}
	return nil, nil
}
