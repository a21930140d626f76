package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/log"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/resources"
	"github.com/tallyhq/tally/workers/natsauth"
	"github.com/tallyhq/tally/workers/stream"
)

// Reasons of the NATSIsolated condition, and NATSSigningKeyInvalid of Ready when the manager's
// signing key cannot sign.
const (
	ReasonPerSourceNATSUsers    = "PerSourceNATSUsers"
	ReasonSharedNATSCredentials = "SharedNATSCredentials"
	ReasonNoNATSAuth            = "NoNATSAuth"
	ReasonNATSSigningKeyInvalid = "NATSSigningKeyInvalid"
)

// NATSUserCredsKey is the key of an issued NATS user's Secret holding its creds file.
const NATSUserCredsKey = "nats.creds"

// natsAccountKey is the optional key of the signing key Secret naming the account's public key.
const natsAccountKey = "account"

// reconcileNATSAuth gives the source's pods their NATS credentials: with an account signing key,
// a user of their own per component (package natsauth), which can touch nothing of another
// source; otherwise the manager's static credentials, shared by every source, or none. The latter
// two work, and NATSIsolated=False warns about them without making the source unready.
func (r *SegmentSourceReconciler) reconcileNATSAuth(ctx context.Context, st *reconcileState) error {
	obj := st.source
	if r.Config.NATSSigningKeySecret == "" {
		for _, component := range []string{resources.ComponentReceiver, resources.ComponentWorker} {
			if err := r.deleteOwned(ctx, st, secretMetadata(), resources.NATSUserSecretName(obj, component)); err != nil {
				return err
			}
		}
		if err := r.reconcileNATSCredsSecret(ctx, st); err != nil {
			return err
		}
		if st.natsCreds != nil {
			setCondition(obj, tallyv1.ConditionNATSIsolated, metav1.ConditionFalse, ReasonSharedNATSCredentials, fmt.Sprintf(
				"the pods of every source share the NATS credentials of Secret %s/%s: any tenant's pod may publish into, "+
					"read or delete another source's stream; start the manager with --nats-account-signing-key-secret "+
					"to give each source NATS users of its own", r.Config.ManagerNamespace, r.Config.NATSCredsSecret))
		} else {
			setCondition(obj, tallyv1.ConditionNATSIsolated, metav1.ConditionFalse, ReasonNoNATSAuth,
				"the pods connect to NATS without credentials: any tenant's pod may publish into, read or delete another "+
					"source's stream; run NATS in JWT mode and start the manager with --nats-account-signing-key-secret "+
					"to give each source NATS users of its own")
		}
		return nil
	}

	issuer, err := r.natsIssuer(ctx)
	if err != nil {
		return err
	}
	src := streamSource(obj)
	now := time.Now()
	for _, c := range []struct {
		component string
		role      natsauth.Role
		into      **resources.SecretKey
	}{
		{resources.ComponentReceiver, natsauth.Receiver, &st.receiverNATSCreds},
		{resources.ComponentWorker, natsauth.Worker, &st.workerNATSCreds},
	} {
		name := resources.NATSUserSecretName(obj, c.component)
		fingerprint := natsUserFingerprint(issuer, src, c.role)
		if key, ok := r.unchangedNATSUser(ctx, st, name, fingerprint, now); ok {
			*c.into = key
			continue
		}
		creds, err := r.currentNATSUser(ctx, st, name, func(creds []byte) bool {
			return issuer.Current(creds, src, c.role, r.renewBefore(now))
		})
		if err != nil {
			return err
		}
		if creds == nil {
			var expires time.Time
			if r.Config.NATSUserTTL > 0 {
				expires = now.Add(r.Config.NATSUserTTL)
			}
			if creds, err = issuer.Issue(src, c.role, expires); err != nil {
				return transient(ReasonReconcileError, err, "issuing the NATS user of the %s", c.component)
			}
			log.FromContext(ctx).Info("issued NATS user", "component", c.component, "secret", name,
				"signingKey", issuer.SigningKey(), "expires", expires)
		}
		data := map[string][]byte{NATSUserCredsKey: creds}
		hash := resources.Hash(data)
		expires := ""
		if t := natsauth.Expires(creds); !t.IsZero() {
			expires = t.UTC().Format(time.RFC3339)
		}
		ac := resources.SecretCopy(obj, name, resources.ComponentNATSUser, data).WithAnnotations(map[string]string{
			annotationNATSUser: fingerprint, annotationNATSUserExpires: expires, annotationNATSCredsHash: hash,
		})
		if err := r.applySecretCopy(ctx, st, ac); err != nil {
			return err
		}
		*c.into = &resources.SecretKey{Name: name, Key: NATSUserCredsKey, Hash: hash}
	}
	// A copy of static credentials made before the manager had a signing key is mounted nowhere now.
	if err := r.deleteOwned(ctx, st, secretMetadata(), resources.NATSCredsSecretCopyName(obj)); err != nil {
		return err
	}
	setCondition(obj, tallyv1.ConditionNATSIsolated, metav1.ConditionTrue, ReasonPerSourceNATSUsers, fmt.Sprintf(
		"the receiver and the workers have NATS users of their own, signed by %s: they reach only stream %s",
		issuer.SigningKey(), src.StreamName()))
	return nil
}

// Annotations of an issued user's Secret, so a periodic reconcile can tell from the cached metadata
// alone that the user is still the one it would issue, without reading the Secret's data from the
// API server.
const (
	annotationNATSUser        = "tally.dev/nats-user"
	annotationNATSUserExpires = "tally.dev/nats-user-expires"
	annotationNATSCredsHash   = "tally.dev/nats-creds-hash"
)

// natsUserFingerprint names what a user is issued from: the signing key, the account, the source
// and the role's permissions. Another value (a rotated key, new permissions) re-issues it.
func natsUserFingerprint(issuer *natsauth.Issuer, src stream.Source, role natsauth.Role) string {
	perms, _ := json.Marshal(natsauth.Permissions(src, role))
	return resources.Hash(map[string][]byte{"signingKey": []byte(issuer.SigningKey()), "account": []byte(issuer.Account()),
		"user": []byte(natsauth.UserName(src, role)), "permissions": perms})
}

// unchangedNATSUser reports, from the cache, whether the Secret name holds the user this process
// last applied there, unchanged since, issued with fingerprint and not due for renewal.
func (r *SegmentSourceReconciler) unchangedNATSUser(ctx context.Context, st *reconcileState, name, fingerprint string, now time.Time) (*resources.SecretKey, bool) {
	return r.unchangedUserSecret(ctx, st.source.Namespace, st.source.UID, name, fingerprint, now)
}

// renewBefore is the time an issued user must outlive to be kept: a third of its life ahead.
func (r *SegmentSourceReconciler) renewBefore(now time.Time) time.Time {
	if r.Config.NATSUserTTL <= 0 {
		return time.Time{}
	}
	return now.Add(r.Config.NATSUserTTL / 3)
}

// currentNATSUser returns the creds in the source's Secret name when the source owns it and
// current accepts them, else nil (issue anew). The Secret is read from the API server: the
// manager caches no Secret data.
func (r *SegmentSourceReconciler) currentNATSUser(ctx context.Context, st *reconcileState, name string, current func([]byte) bool) ([]byte, error) {
	return r.currentUserCreds(ctx, st.source.Namespace, st.source.UID, name, current)
}

// natsIssuer reads the manager's account signing key. A Secret or key that is missing, or a key
// that cannot sign, waits (the Secret watch wakes every source when it changes).
func (r *SegmentSourceReconciler) natsIssuer(ctx context.Context) (*natsauth.Issuer, error) {
	name, key := r.Config.NATSSigningKeySecret, r.Config.NATSSigningKeySecretKey
	secret := &corev1.Secret{}
	if err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: r.Config.ManagerNamespace, Name: name}, secret); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, waiting(ReasonSecretNotFound, waitForSecretRequeue,
				"manager's NATS account signing key Secret %q not found in namespace %q", name, r.Config.ManagerNamespace)
		}
		return nil, transient(ReasonReconcileError, err, "reading the manager's NATS account signing key Secret %q", name)
	}
	seed := secret.Data[key]
	if len(seed) == 0 {
		return nil, waiting(ReasonSecretKeyNotFound, waitForSecretRequeue,
			"manager's NATS account signing key Secret %s/%s has no key %q", r.Config.ManagerNamespace, name, key)
	}
	account := r.Config.NATSAccount
	if account == "" {
		account = string(secret.Data[natsAccountKey])
	}
	issuer, err := natsauth.NewIssuer(seed, account)
	if err != nil {
		return nil, waiting(ReasonNATSSigningKeyInvalid, waitForSecretRequeue,
			"manager's NATS account signing key Secret %s/%s: %v", r.Config.ManagerNamespace, name, err)
	}
	return issuer, nil
}
