package resources

import (
	"fmt"
	"strconv"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	autoscalingv2ac "k8s.io/client-go/applyconfigurations/autoscaling/v2"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	policyv1ac "k8s.io/client-go/applyconfigurations/policy/v1"
	"k8s.io/utils/ptr"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/workers/source"
)

// LabelPool is on every object of a SegmentSourcePool (its name): the pool's pod selectors carry
// it, so they never select a same-named source's pods.
const LabelPool = "tally.dev/pool"

// Components of a pool's Secrets.
const (
	ComponentMemberSecrets = "member-secrets"
)

// Where a pool's pods find their members' secrets: one file per member key, kept current by the
// kubelet (a Secret mounted as a directory is updated in place), so members join and leave
// without a rollout.
const (
	PoolSharedSecretsMountPath = "/etc/tally/shared-secrets"
	PoolCredentialsMountPath   = "/etc/tally/credentials"
)

// Keys of a member in the pool's Secrets: its own database login (a Secret the source names), or
// the tenant's role granted to the pool's login (PoolDatabaseURLKey); its insights write key.
const (
	MemberDatabaseURLSuffix      = ".database-url"
	MemberDatabaseRoleSuffix     = ".database-role"
	MemberInsightsWriteKeySuffix = ".insights-write-key"
	// PoolDatabaseURLKey is the pool's own login in its worker Secret (no member key has this
	// form: a member's has its namespace and name before the suffix).
	PoolDatabaseURLKey = "pool.database-url"
)

// PoolInputs are what the pool's builders need beyond the pool.
type PoolInputs struct {
	Pool    *tallyv1.SegmentSourcePool
	Image   string
	NATSURL string
	// NATSCreds is the Secret key of the component's NATS user (or the shared credentials copy).
	ReceiverNATSCreds *SecretKey
	WorkerNATSCreds   *SecretKey
	// Database, when set, is the manager's database URL copy the workers use for members
	// without a login of their own (tenant roles off).
	Database          *SecretKey
	ReceiverResources corev1.ResourceRequirements
	WorkerResources   corev1.ResourceRequirements
	// AtomicBatches makes the receivers publish with group commit (--receiver-atomic-batches).
	AtomicBatches bool
}

// PoolReceiverName names the pool's receiver Deployment, Service and HPA.
func PoolReceiverName(p *tallyv1.SegmentSourcePool) string { return p.Name + "-receiver" }

// PoolWorkerName names the pool's worker Deployment and HPA.
func PoolWorkerName(p *tallyv1.SegmentSourcePool) string { return p.Name + "-worker" }

// PoolReceiverSecretsName holds the members' shared secrets, key <ns>.<name>.
func PoolReceiverSecretsName(poolName string) string { return poolName + "-receiver-secrets" }

// PoolWorkerSecretsName holds the members' database URLs and insights write keys.
func PoolWorkerSecretsName(poolName string) string { return poolName + "-worker-secrets" }

// PoolNATSUserSecretName holds the NATS user of one component of the pool.
func PoolNATSUserSecretName(p *tallyv1.SegmentSourcePool, component string) string {
	return p.Name + "-nats-" + component
}

// PoolDatabaseSecretCopyName is the copy of the manager's database Secret (tenant roles off).
func PoolDatabaseSecretCopyName(p *tallyv1.SegmentSourcePool) string { return p.Name + "-database" }

// PoolNATSCredsSecretCopyName is the copy of the manager's static NATS credentials.
func PoolNATSCredsSecretCopyName(p *tallyv1.SegmentSourcePool) string { return p.Name + "-nats-creds" }

// MemberKey is a member's key in the pool's Secrets and bucket: "<namespace>.<name>".
func MemberKey(s *tallyv1.SegmentSource) string { return s.Namespace + "." + s.Name }

// PoolEndpoint is the in-cluster URL of the pool's receivers.
func PoolEndpoint(p *tallyv1.SegmentSourcePool) string {
	return "http://" + PoolReceiverName(p) + "." + p.Namespace + ".svc:" + strconv.Itoa(int(poolServicePort(p)))
}

// PoolLabels are the standard labels of one component of a pool.
func PoolLabels(p *tallyv1.SegmentSourcePool, component string) map[string]string {
	l := PoolSelectorLabels(p, component)
	l[LabelManagedBy] = ManagedBy
	l[LabelPartOf] = AppName
	return l
}

// PoolSelectorLabels select a pool component's pods.
func PoolSelectorLabels(p *tallyv1.SegmentSourcePool, component string) map[string]string {
	return map[string]string{LabelName: AppName, LabelInstance: p.Name, LabelComponent: component, LabelPool: p.Name}
}

// PoolOwnerReference makes the pool the controller of an object.
func PoolOwnerReference(p *tallyv1.SegmentSourcePool) *metav1ac.OwnerReferenceApplyConfiguration {
	return metav1ac.OwnerReference().
		WithAPIVersion(tallyv1.GroupVersion.String()).
		WithKind("SegmentSourcePool").
		WithName(p.Name).
		WithUID(p.UID).
		WithController(true).
		WithBlockOwnerDeletion(true)
}

// PoolSecret is a Secret of the pool: its data is written key by key by the members' reconciles
// (never by this apply, which sets no data), so it starts empty.
func PoolSecret(p *tallyv1.SegmentSourcePool, name, component string) *corev1ac.SecretApplyConfiguration {
	return corev1ac.Secret(name, p.Namespace).
		WithLabels(PoolLabels(p, component)).
		WithOwnerReferences(PoolOwnerReference(p)).
		WithType(corev1.SecretTypeOpaque)
}

// PoolSecretCopy is a Secret the operator copies into the pool's namespace.
func PoolSecretCopy(p *tallyv1.SegmentSourcePool, name, component string, data map[string][]byte) *corev1ac.SecretApplyConfiguration {
	return PoolSecret(p, name, component).WithData(data)
}

// PoolReceiverReplicas is the receivers' replica count, nil when an HPA owns it.
func PoolReceiverReplicas(p *tallyv1.SegmentSourcePool) *int32 {
	return poolReplicas(p.Spec.Receiver.Replicas, p.Spec.Receiver.Autoscaling)
}

// PoolWorkerReplicas is the workers' replica count, nil when an HPA owns it.
func PoolWorkerReplicas(p *tallyv1.SegmentSourcePool) *int32 {
	return poolReplicas(p.Spec.Worker.Replicas, p.Spec.Worker.Autoscaling)
}

func poolReplicas(replicas *int32, a *tallyv1.Autoscaling) *int32 {
	switch {
	case a != nil:
		return nil
	case replicas == nil:
		return ptr.To(int32(1))
	default:
		return ptr.To(*replicas)
	}
}

// PoolReceiverDeployment runs `tally receiver --pool`: it learns the members and their key
// digests from the pool's bucket and their shared secrets from a mounted directory, so neither a
// member joining nor a key rotation changes this template.
func PoolReceiverDeployment(in PoolInputs) *appsv1ac.DeploymentApplyConfiguration {
	p := in.Pool
	args := []string{
		"receiver",
		"--pool=" + p.Namespace + "/" + p.Name,
		"--listen=:" + fmt.Sprint(ReceiverPort),
		"--nats-url=" + in.NATSURL,
		"--shared-secrets-dir=" + PoolSharedSecretsMountPath,
		"--shutdown-delay=" + source.DefaultShutdownDelay.String(),
	}
	args = withAtomicBatches(args, in.AtomicBatches)
	volumes := []*corev1ac.VolumeApplyConfiguration{tmpVolume(), secretDirVolume("shared-secrets", PoolReceiverSecretsName(p.Name))}
	mounts := []*corev1ac.VolumeMountApplyConfiguration{
		corev1ac.VolumeMount().WithName("tmp").WithMountPath(TmpMountPath),
		corev1ac.VolumeMount().WithName("shared-secrets").WithMountPath(PoolSharedSecretsMountPath).WithReadOnly(true),
	}
	annotations := map[string]string{}
	args, volumes, mounts = withNATSCreds(in.ReceiverNATSCreds, args, volumes, mounts, annotations)

	container := receiverContainer(in.Image, args, resources(p.Spec.Receiver.Resources, in.ReceiverResources), mounts)
	template := podTemplate(PoolLabels(p, ComponentReceiver), annotations, container, volumes)
	template.Spec.WithTerminationGracePeriodSeconds(ReceiverTerminationGracePeriodSeconds)
	return deployment(poolOwned(p, PoolReceiverName(p), ComponentReceiver), PoolReceiverReplicas(p), template)
}

// poolOwned is the identity of one of the pool's Deployments.
func poolOwned(p *tallyv1.SegmentSourcePool, name, component string) owned {
	return owned{name: name, namespace: p.Namespace, labels: PoolLabels(p, component),
		selector: PoolSelectorLabels(p, component), owner: PoolOwnerReference(p)}
}

// PoolWorkerDeployment runs `tally worker --pool`: members and settings from the bucket, each
// member's Postgres login and insights key from the mounted credentials directory.
func PoolWorkerDeployment(in PoolInputs) *appsv1ac.DeploymentApplyConfiguration {
	p := in.Pool
	batch := int(p.Spec.Worker.BatchSize)
	if batch == 0 {
		batch = source.DefaultBatchSize
	}
	args := []string{
		"worker",
		"--pool=" + p.Namespace + "/" + p.Name,
		"--nats-url=" + in.NATSURL,
		"--credentials-dir=" + PoolCredentialsMountPath,
		"--batch-size=" + fmt.Sprint(batch),
		"--metrics-listen=:" + fmt.Sprint(WorkerMetricsPort),
	}
	volumes := []*corev1ac.VolumeApplyConfiguration{tmpVolume(), secretDirVolume("credentials", PoolWorkerSecretsName(p.Name))}
	mounts := []*corev1ac.VolumeMountApplyConfiguration{
		corev1ac.VolumeMount().WithName("tmp").WithMountPath(TmpMountPath),
		corev1ac.VolumeMount().WithName("credentials").WithMountPath(PoolCredentialsMountPath).WithReadOnly(true),
	}
	annotations := map[string]string{}
	args, volumes, mounts = withNATSCreds(in.WorkerNATSCreds, args, volumes, mounts, annotations)

	container := workerContainer(in.Image, args, resources(p.Spec.Worker.Resources, in.WorkerResources), mounts)
	if in.Database != nil {
		// The manager's login, for members without one of their own (tenant roles off), as a
		// dedicated source's workers get it.
		container.WithEnv(databaseURLEnv(in.Database.Name, in.Database.Key))
		annotations[AnnotationDatabaseHash] = in.Database.Hash
	}
	template := podTemplate(PoolLabels(p, ComponentWorker), annotations, container, volumes)
	return deployment(poolOwned(p, PoolWorkerName(p), ComponentWorker), PoolWorkerReplicas(p), template)
}

// PoolReceiverService fronts the pool's receivers at the endpoint every member reports.
func PoolReceiverService(p *tallyv1.SegmentSourcePool) *corev1ac.ServiceApplyConfiguration {
	serviceType := p.Spec.Receiver.ServiceType
	if serviceType == "" {
		serviceType = corev1.ServiceTypeClusterIP
	}
	return corev1ac.Service(PoolReceiverName(p), p.Namespace).
		WithLabels(PoolLabels(p, ComponentReceiver)).
		WithOwnerReferences(PoolOwnerReference(p)).
		WithSpec(corev1ac.ServiceSpec().
			WithType(serviceType).
			WithSelector(PoolSelectorLabels(p, ComponentReceiver)).
			WithPorts(corev1ac.ServicePort().
				WithName("http").
				WithProtocol(corev1.ProtocolTCP).
				WithPort(poolServicePort(p)).
				WithTargetPort(intstr.FromString("http"))))
}

// PoolHPA scales one of the pool's Deployments (name) on CPU within a's bounds.
func PoolHPA(p *tallyv1.SegmentSourcePool, component, name string, a *tallyv1.Autoscaling) *autoscalingv2ac.HorizontalPodAutoscalerApplyConfiguration {
	minReplicas, target := a.MinReplicas, a.TargetCPUUtilizationPercentage
	if minReplicas == 0 {
		minReplicas = DefaultHPAMinReplicas
	}
	if target == 0 {
		target = DefaultHPATargetCPUUtilization
	}
	return autoscalingv2ac.HorizontalPodAutoscaler(name, p.Namespace).
		WithLabels(PoolLabels(p, component)).
		WithOwnerReferences(PoolOwnerReference(p)).
		WithSpec(autoscalingv2ac.HorizontalPodAutoscalerSpec().
			WithScaleTargetRef(autoscalingv2ac.CrossVersionObjectReference().
				WithAPIVersion("apps/v1").WithKind("Deployment").WithName(name)).
			WithMinReplicas(minReplicas).
			WithMaxReplicas(a.MaxReplicas).
			WithMetrics(autoscalingv2ac.MetricSpec().
				WithType(autoscalingv2.ResourceMetricSourceType).
				WithResource(autoscalingv2ac.ResourceMetricSource().
					WithName(corev1.ResourceCPU).
					WithTarget(autoscalingv2ac.MetricTarget().
						WithType(autoscalingv2.UtilizationMetricType).
						WithAverageUtilization(target)))))
}

// secretDirVolume mounts a whole Secret as a directory, without items and without a hash in the
// pod template: the kubelet updates the files in place when keys come and go.
func secretDirVolume(name, secret string) *corev1ac.VolumeApplyConfiguration {
	return corev1ac.Volume().WithName(name).WithSecret(corev1ac.SecretVolumeSource().
		WithSecretName(secret).
		WithDefaultMode(0o440))
}

func poolServicePort(p *tallyv1.SegmentSourcePool) int32 {
	if p.Spec.Receiver.Port == 0 {
		return ReceiverPort
	}
	return p.Spec.Receiver.Port
}

// WantsPoolReceiverPDB reports whether the pool's receivers get a PodDisruptionBudget: only when
// more than one may run (a budget over one pod would block node drains).
func WantsPoolReceiverPDB(p *tallyv1.SegmentSourcePool) bool {
	if a := p.Spec.Receiver.Autoscaling; a != nil {
		return a.MaxReplicas > 1
	}
	r := PoolReceiverReplicas(p)
	return r != nil && *r > 1
}

// PoolReceiverPDB lets voluntary disruptions take one of the pool's receivers at a time: every
// member's traffic goes through them.
func PoolReceiverPDB(p *tallyv1.SegmentSourcePool) *policyv1ac.PodDisruptionBudgetApplyConfiguration {
	return policyv1ac.PodDisruptionBudget(PoolReceiverName(p), p.Namespace).
		WithLabels(PoolLabels(p, ComponentReceiver)).
		WithOwnerReferences(PoolOwnerReference(p)).
		WithSpec(policyv1ac.PodDisruptionBudgetSpec().
			WithMaxUnavailable(intstr.FromInt32(1)).
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(PoolSelectorLabels(p, ComponentReceiver))))
}
