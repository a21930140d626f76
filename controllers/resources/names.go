// Package resources builds the Kubernetes objects a SegmentSource turns into. Every function here
// is pure: it takes the SegmentSource and the values the reconciler resolved (image, hashes, Secret
// names) and returns server-side-apply configurations, so the shape of each object can be tested
// without an API server and the reconciler only decides *whether* to apply, never *what*.
package resources

import (
	"crypto/sha256"
	"encoding/hex"
	"maps"
	"slices"
	"strconv"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
)

// Components of a SegmentSource, the value of the app.kubernetes.io/component label.
const (
	ComponentReceiver = "receiver"
	ComponentWorker   = "worker"
	ComponentConfig   = "config"
	ComponentDatabase = "database"
	ComponentNATS     = "nats-creds"
	// ComponentNATSUser labels the Secrets of the source's own NATS users.
	ComponentNATSUser = "nats-user"
)

// Standard labels (https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/).
const (
	LabelName      = "app.kubernetes.io/name"
	LabelInstance  = "app.kubernetes.io/instance"
	LabelComponent = "app.kubernetes.io/component"
	LabelManagedBy = "app.kubernetes.io/managed-by"
	LabelPartOf    = "app.kubernetes.io/part-of"

	// AppName is the value of app.kubernetes.io/name and part-of.
	AppName = "tally"
	// ManagedBy marks objects the operator owns. The manager restricts its caches of owned kinds to
	// objects carrying it, so it never caches every ConfigMap or Deployment of the cluster.
	ManagedBy = "tally-operator"
)

// Annotations the operator writes.
const (
	// AnnotationConfigHash on a pod template is the hash of the ConfigMap data: a settings change
	// rolls the pods out.
	AnnotationConfigHash = "tally.dev/config-hash"
	// AnnotationWriteKeyHash on the receiver's pod template is the hash of the write key Secret
	// value: a key rotation rolls the receivers out (they also re-read the mounted file).
	AnnotationWriteKeyHash = "tally.dev/write-key-hash"
	// LabelSourceSecret must be "true" on every Secret a SegmentSource names (write keys, shared
	// secret, database URL): the owner of a Secret opts it in to being mounted by the operator.
	LabelSourceSecret = "tally.dev/source-secret"
	// AnnotationSharedSecretHash on the receiver's pod template is the hash of the destination's
	// shared secrets: a rotation rolls the receivers, as for the write keys.
	AnnotationSharedSecretHash = "tally.dev/shared-secret-hash"
	// AnnotationDatabaseHash on the worker's pod template is the hash of the database URL, which
	// reaches the worker as an environment variable and so needs a rollout to change.
	AnnotationDatabaseHash = "tally.dev/database-hash"
	// AnnotationNATSCredsHash on both pod templates is the hash of the NATS credentials.
	AnnotationNATSCredsHash = "tally.dev/nats-creds-hash"
	// AnnotationInsightsWriteKeyHash on the worker's pod template is the hash of the insights
	// write key: a new key rolls the workers, which read it once at start.
	AnnotationInsightsWriteKeyHash = "tally.dev/insights-write-key-hash"
	// AnnotationAppliedHash on every owned object is the hash of the configuration last applied,
	// so a periodic reconcile that would apply the same thing again skips the write.
	AnnotationAppliedHash = "tally.dev/applied-hash"
)

// Paths and ports of the container contract between the operator and `tally receiver|worker`.
const (
	ConfigMountPath    = "/etc/tally/source"
	WriteKeysMountPath = "/etc/tally/write-keys"
	// SharedSecretsMountPath holds the destination's shared secrets, when the source has any.
	SharedSecretsMountPath = "/etc/tally/shared-secrets"
	NATSCredsMountPath     = "/etc/tally/nats"
	// InsightsWriteKeyMountPath holds the insights write key, in the worker pods only.
	InsightsWriteKeyMountPath = "/etc/tally/insights-write-key"
	TmpMountPath              = "/tmp"
	ReceiverPort              = 8080
	WorkerMetricsPort         = 9090
	// NonRootUID is the user and group pods run as (the distroless "nonroot" user), set explicitly so
	// runAsNonRoot can be verified by the kubelet whatever the image declares.
	NonRootUID = 65532
)

// ConfigMapName is the ConfigMap holding the source settings (key source.json).
func ConfigMapName(s *tallyv1.SegmentSource) string { return s.Name + "-config" }

// ReceiverName names the receiver Deployment, its Service, PDB and HPA.
func ReceiverName(s *tallyv1.SegmentSource) string { return s.Name + "-receiver" }

// WorkerName names the worker Deployment.
func WorkerName(s *tallyv1.SegmentSource) string { return s.Name + "-worker" }

// DatabaseSecretCopyName is the copy of the manager's database Secret made for a source that does
// not name its own.
func DatabaseSecretCopyName(s *tallyv1.SegmentSource) string { return s.Name + "-database" }

// NATSCredsSecretCopyName is the copy of the manager's NATS credentials Secret.
func NATSCredsSecretCopyName(s *tallyv1.SegmentSource) string { return s.Name + "-nats-creds" }

// NATSUserSecretName holds the credentials of the NATS user the operator issued for one component
// (ComponentReceiver or ComponentWorker) of the source.
func NATSUserSecretName(s *tallyv1.SegmentSource, component string) string {
	return s.Name + "-nats-" + component
}

// Endpoint is the in-cluster URL Segment clients send to.
func Endpoint(s *tallyv1.SegmentSource) string {
	return "http://" + ReceiverName(s) + "." + s.Namespace + ".svc:" + strconv.Itoa(int(servicePort(s)))
}

// Labels are the standard labels of one component of a source.
func Labels(s *tallyv1.SegmentSource, component string) map[string]string {
	return map[string]string{
		LabelName:      AppName,
		LabelInstance:  s.Name,
		LabelComponent: component,
		LabelManagedBy: ManagedBy,
		LabelPartOf:    AppName,
	}
}

// SelectorLabels select a component's pods. They are a subset of Labels that never changes, since
// a Deployment's selector is immutable.
func SelectorLabels(s *tallyv1.SegmentSource, component string) map[string]string {
	return map[string]string{LabelName: AppName, LabelInstance: s.Name, LabelComponent: component}
}

// Hash is a short, stable digest of named values, used in annotations that trigger rollouts. Keys
// are sorted so map order never changes it.
func Hash(values map[string][]byte) string {
	h := sha256.New()
	for _, k := range slices.Sorted(maps.Keys(values)) {
		h.Write([]byte(k))
		h.Write([]byte{0})
		h.Write(values[k])
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))[:32]
}

func servicePort(s *tallyv1.SegmentSource) int32 {
	if s.Spec.Receiver.Port == 0 {
		return ReceiverPort
	}
	return s.Spec.Receiver.Port
}
