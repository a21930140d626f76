package resources

import (
	"fmt"
	"slices"
	"time"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
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

// SecretKey is a resolved Secret key in the source's namespace plus the hash of its value.
type SecretKey struct {
	Name string
	Key  string
	Hash string
}

// Inputs are everything the builders need beyond the SegmentSource: values the manager was started
// with and values the reconciler read from the cluster.
type Inputs struct {
	Source *tallyv1.SegmentSource
	// Image runs both the receiver and the workers (`tally receiver`, `tally worker`).
	Image   string
	NATSURL string
	// ConfigHash is Hash of the ConfigMap data.
	ConfigHash string
	// WriteKeyHash is the hash of the write key Secret value.
	WriteKeyHash string
	// SharedSecret, when set, is the Secret key holding the destination's shared secrets.
	SharedSecret *SecretKey
	// Database is the Secret key the workers read the Postgres URL from.
	Database SecretKey
	// NATSCreds, when set, is a Secret in the source's namespace holding the NATS credentials file
	// every pod of the source mounts (a copy of the manager's static credentials).
	NATSCreds *SecretKey
	// ReceiverNATSCreds and WorkerNATSCreds, when set, hold the NATS users the operator issued for
	// the receiver and the workers: each pod mounts its own and nothing else (they win over
	// NATSCreds).
	ReceiverNATSCreds *SecretKey
	WorkerNATSCreds   *SecretKey
	// InsightsWriteKey, when set, is the Secret key of the write key the workers push insights
	// with (spec.insights, not suspended).
	InsightsWriteKey *SecretKey
	// ReceiverResources and WorkerResources are the manager's defaults (--receiver-resources,
	// --worker-resources), used for a source whose spec sets no resources of its own.
	ReceiverResources corev1.ResourceRequirements
	WorkerResources   corev1.ResourceRequirements
	// AtomicBatches makes the receivers publish with group commit (--receiver-atomic-batches).
	AtomicBatches bool
}

// DefaultReceiverResources are the manager's built-in receiver resources: enough to schedule the
// pod sensibly, a memory limit so a leak cannot starve its node, and no CPU limit (throttling
// would only add latency to requests waiting for PubAcks).
func DefaultReceiverResources() corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
	}
}

// DefaultWorkerResources are the manager's built-in worker resources. Workers hold a fetched batch
// and its fold in memory, so they get more than receivers; again no CPU limit.
func DefaultWorkerResources() corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("512Mi")},
	}
}

// How a receiver stops (see `tally receiver --shutdown-delay`): on SIGTERM it turns /readyz to
// 503 and keeps serving for its shutdown delay while endpoints and load balancers catch up, then
// finishes the requests in flight, each of which waits at most the receiver's publish timeout
// (the operator leaves both at their defaults) for its PubAcks. The grace period covers both
// with a wide margin, so the kubelet never kills a receiver that is still answering.
const (
	receiverShutdownMargin                = 20 * time.Second
	ReceiverTerminationGracePeriodSeconds = int64((source.DefaultShutdownDelay + source.DefaultPublishTimeout + receiverShutdownMargin) / time.Second)
	// receiverReadinessPeriodSeconds is short against the receiver's shutdown delay, so the kubelet sees the
	// 503 well before the receiver stops serving.
	receiverReadinessPeriodSeconds = 2
)

// ConfigData is the ConfigMap payload of a source: its settings as the receiver and workers read
// them, never its write keys.
func ConfigData(s *tallyv1.SegmentSource) (map[string]string, error) {
	data, err := source.EncodeConfig(SourceConfig(s))
	if err != nil {
		return nil, fmt.Errorf("encoding source settings: %w", err)
	}
	return map[string]string{source.ConfigFileName: string(data)}, nil
}

// ConfigMap holds the source settings under the key source.json.
func ConfigMap(s *tallyv1.SegmentSource, data map[string]string) *corev1ac.ConfigMapApplyConfiguration {
	return corev1ac.ConfigMap(ConfigMapName(s), s.Namespace).
		WithLabels(Labels(s, ComponentConfig)).
		WithOwnerReferences(OwnerReference(s)).
		WithData(data)
}

// SecretCopy is a Secret the operator copies into the source's namespace (the manager's database
// URL or NATS credentials). It is owned by the source, so it goes away with it.
func SecretCopy(s *tallyv1.SegmentSource, name, component string, data map[string][]byte) *corev1ac.SecretApplyConfiguration {
	return corev1ac.Secret(name, s.Namespace).
		WithLabels(Labels(s, component)).
		WithOwnerReferences(OwnerReference(s)).
		WithType(corev1.SecretTypeOpaque).
		WithData(data)
}

// OwnerReference makes the source the controller of an object, so garbage collection removes it
// with the source and the manager's watches map its events back to the source.
func OwnerReference(s *tallyv1.SegmentSource) *metav1ac.OwnerReferenceApplyConfiguration {
	return metav1ac.OwnerReference().
		WithAPIVersion(tallyv1.GroupVersion.String()).
		WithKind("SegmentSource").
		WithName(s.Name).
		WithUID(s.UID).
		WithController(true).
		WithBlockOwnerDeletion(true)
}

// ReceiverReplicas is the replica count the operator sets on the receiver Deployment, or nil when
// an HPA owns it (applying a value would fight the HPA).
func ReceiverReplicas(s *tallyv1.SegmentSource) *int32 {
	switch {
	case s.Spec.Suspend:
		return ptr.To(int32(0))
	case s.Spec.Receiver.Autoscaling != nil:
		return nil
	case s.Spec.Receiver.Replicas == nil:
		return ptr.To(int32(1))
	default:
		return ptr.To(*s.Spec.Receiver.Replicas)
	}
}

// WorkerReplicas is the replica count of the worker Deployment.
func WorkerReplicas(s *tallyv1.SegmentSource) int32 {
	switch {
	case s.Spec.Suspend:
		return 0
	case s.Spec.Worker.Replicas == nil:
		return 1
	default:
		return *s.Spec.Worker.Replicas
	}
}

// withAtomicBatches adds the receiver flag of group commit: requests' messages published as
// JetStream atomic batches shared by concurrent requests, which NATS stores with one fsync each.
func withAtomicBatches(args []string, on bool) []string {
	if on {
		return append(args, "--atomic-batches")
	}
	return args
}

// ReceiverDeployment runs `tally receiver`. The rolling update never takes a ready pod away before
// its replacement is ready (maxUnavailable 0), so a settings change or key rotation never refuses
// traffic.
func ReceiverDeployment(in Inputs) *appsv1ac.DeploymentApplyConfiguration {
	s := in.Source
	args := []string{
		"receiver",
		"--listen=:" + fmt.Sprint(ReceiverPort),
		"--nats-url=" + in.NATSURL,
		"--source-config=" + ConfigMountPath + "/" + source.ConfigFileName,
		"--write-keys-file=" + WriteKeysMountPath + "/" + s.WriteKeyKey(),
		"--shutdown-delay=" + source.DefaultShutdownDelay.String(),
	}
	args = withAtomicBatches(args, in.AtomicBatches)
	volumes := []*corev1ac.VolumeApplyConfiguration{
		tmpVolume(),
		configVolume(s),
		corev1ac.Volume().WithName("write-keys").WithSecret(corev1ac.SecretVolumeSource().
			WithSecretName(s.Spec.WriteKeySecretRef.Name).
			WithItems(corev1ac.KeyToPath().WithKey(s.WriteKeyKey()).WithPath(s.WriteKeyKey())).
			WithDefaultMode(0o440)),
	}
	mounts := []*corev1ac.VolumeMountApplyConfiguration{
		corev1ac.VolumeMount().WithName("tmp").WithMountPath(TmpMountPath),
		corev1ac.VolumeMount().WithName("config").WithMountPath(ConfigMountPath).WithReadOnly(true),
		corev1ac.VolumeMount().WithName("write-keys").WithMountPath(WriteKeysMountPath).WithReadOnly(true),
	}
	annotations := map[string]string{
		AnnotationConfigHash:   in.ConfigHash,
		AnnotationWriteKeyHash: in.WriteKeyHash,
	}
	args, volumes, mounts = withSecretFile(secretFile{"--shared-secrets-file", "shared-secrets", SharedSecretsMountPath, AnnotationSharedSecretHash},
		in.SharedSecret, args, volumes, mounts, annotations)
	args, volumes, mounts = withNATSCreds(natsCreds(in.ReceiverNATSCreds, in.NATSCreds), args, volumes, mounts, annotations)

	container := receiverContainer(in.Image, args, resources(s.Spec.Receiver.Resources, in.ReceiverResources), mounts)
	template := podTemplate(Labels(s, ComponentReceiver), annotations, container, volumes)
	template.Spec.WithTerminationGracePeriodSeconds(ReceiverTerminationGracePeriodSeconds)
	return deployment(sourceOwned(s, ReceiverName(s), ComponentReceiver), ReceiverReplicas(s), template)
}

// sourceOwned is the identity of one of the source's Deployments.
func sourceOwned(s *tallyv1.SegmentSource, name, component string) owned {
	return owned{name: name, namespace: s.Namespace, labels: Labels(s, component),
		selector: SelectorLabels(s, component), owner: OwnerReference(s)}
}

// WorkerDeployment runs `tally worker`, which reads the stream through the source's durable
// consumer and writes Postgres. Its health endpoints share the metrics port.
func WorkerDeployment(in Inputs) *appsv1ac.DeploymentApplyConfiguration {
	s := in.Source
	batch := int(s.Spec.Worker.BatchSize)
	if batch == 0 {
		batch = source.DefaultBatchSize
	}
	args := []string{
		"worker",
		"--nats-url=" + in.NATSURL,
		"--source-config=" + ConfigMountPath + "/" + source.ConfigFileName,
		"--batch-size=" + fmt.Sprint(batch),
		"--metrics-listen=:" + fmt.Sprint(WorkerMetricsPort),
	}
	volumes := []*corev1ac.VolumeApplyConfiguration{tmpVolume(), configVolume(s)}
	mounts := []*corev1ac.VolumeMountApplyConfiguration{
		corev1ac.VolumeMount().WithName("tmp").WithMountPath(TmpMountPath),
		corev1ac.VolumeMount().WithName("config").WithMountPath(ConfigMountPath).WithReadOnly(true),
	}
	annotations := map[string]string{
		AnnotationConfigHash:   in.ConfigHash,
		AnnotationDatabaseHash: in.Database.Hash,
	}
	args, volumes, mounts = withNATSCreds(natsCreds(in.WorkerNATSCreds, in.NATSCreds), args, volumes, mounts, annotations)
	args, volumes, mounts = withSecretFile(secretFile{"--insights-write-key-file", "insights-write-key", InsightsWriteKeyMountPath, AnnotationInsightsWriteKeyHash},
		in.InsightsWriteKey, args, volumes, mounts, annotations)

	container := workerContainer(in.Image, args, resources(s.Spec.Worker.Resources, in.WorkerResources), mounts).
		WithEnv(databaseURLEnv(in.Database.Name, in.Database.Key))
	replicas := WorkerReplicas(s)
	return deployment(sourceOwned(s, WorkerName(s), ComponentWorker), &replicas,
		podTemplate(Labels(s, ComponentWorker), annotations, container, volumes))
}

// ReceiverService fronts the receiver pods at the endpoint reported in status.
func ReceiverService(s *tallyv1.SegmentSource) *corev1ac.ServiceApplyConfiguration {
	serviceType := s.Spec.Receiver.ServiceType
	if serviceType == "" {
		serviceType = corev1.ServiceTypeClusterIP
	}
	return corev1ac.Service(ReceiverName(s), s.Namespace).
		WithLabels(Labels(s, ComponentReceiver)).
		WithOwnerReferences(OwnerReference(s)).
		WithSpec(corev1ac.ServiceSpec().
			WithType(serviceType).
			WithSelector(SelectorLabels(s, ComponentReceiver)).
			WithPorts(corev1ac.ServicePort().
				WithName("http").
				WithProtocol(corev1.ProtocolTCP).
				WithPort(servicePort(s)).
				WithTargetPort(intstr.FromString("http"))))
}

// WantsReceiverPDB reports whether the receiver gets a PodDisruptionBudget: only when more than one
// receiver may run, since a budget over a single pod would block node drains.
func WantsReceiverPDB(s *tallyv1.SegmentSource) bool {
	if s.Spec.Suspend {
		return false
	}
	if a := s.Spec.Receiver.Autoscaling; a != nil {
		return a.MaxReplicas > 1
	}
	r := ReceiverReplicas(s)
	return r != nil && *r > 1
}

// ReceiverPDB lets voluntary disruptions take one receiver at a time.
func ReceiverPDB(s *tallyv1.SegmentSource) *policyv1ac.PodDisruptionBudgetApplyConfiguration {
	return policyv1ac.PodDisruptionBudget(ReceiverName(s), s.Namespace).
		WithLabels(Labels(s, ComponentReceiver)).
		WithOwnerReferences(OwnerReference(s)).
		WithSpec(policyv1ac.PodDisruptionBudgetSpec().
			WithMaxUnavailable(intstr.FromInt32(1)).
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(SelectorLabels(s, ComponentReceiver))))
}

// WantsReceiverHPA reports whether the receiver is autoscaled. A suspended source has none, since
// the HPA would scale the receiver back up.
func WantsReceiverHPA(s *tallyv1.SegmentSource) bool {
	return !s.Spec.Suspend && s.Spec.Receiver.Autoscaling != nil
}

// Defaults of a receiver HPA for the bounds a SegmentSource leaves out.
const (
	DefaultHPAMinReplicas          = 1
	DefaultHPATargetCPUUtilization = 70
)

// ReceiverHPA scales the receiver on CPU within the source's bounds.
func ReceiverHPA(s *tallyv1.SegmentSource) *autoscalingv2ac.HorizontalPodAutoscalerApplyConfiguration {
	a := s.Spec.Receiver.Autoscaling
	minReplicas, target := a.MinReplicas, a.TargetCPUUtilizationPercentage
	if minReplicas == 0 {
		minReplicas = DefaultHPAMinReplicas
	}
	if target == 0 {
		target = DefaultHPATargetCPUUtilization
	}
	return autoscalingv2ac.HorizontalPodAutoscaler(ReceiverName(s), s.Namespace).
		WithLabels(Labels(s, ComponentReceiver)).
		WithOwnerReferences(OwnerReference(s)).
		WithSpec(autoscalingv2ac.HorizontalPodAutoscalerSpec().
			WithScaleTargetRef(autoscalingv2ac.CrossVersionObjectReference().
				WithAPIVersion("apps/v1").WithKind("Deployment").WithName(ReceiverName(s))).
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

func podTemplate(labels, annotations map[string]string,
	container *corev1ac.ContainerApplyConfiguration, volumes []*corev1ac.VolumeApplyConfiguration,
) *corev1ac.PodTemplateSpecApplyConfiguration {
	return corev1ac.PodTemplateSpec().
		WithLabels(labels).
		WithAnnotations(annotations).
		WithSpec(corev1ac.PodSpec().
			// Neither the receiver nor the workers talk to the Kubernetes API.
			WithAutomountServiceAccountToken(false).
			WithEnableServiceLinks(false).
			WithSecurityContext(corev1ac.PodSecurityContext().
				WithRunAsNonRoot(true).
				WithRunAsUser(NonRootUID).
				WithRunAsGroup(NonRootUID).
				WithFSGroup(NonRootUID).
				WithSeccompProfile(corev1ac.SeccompProfile().WithType(corev1.SeccompProfileTypeRuntimeDefault))).
			WithContainers(container).
			WithVolumes(volumes...))
}

func containerSecurityContext() *corev1ac.SecurityContextApplyConfiguration {
	return corev1ac.SecurityContext().
		WithRunAsNonRoot(true).
		WithAllowPrivilegeEscalation(false).
		WithReadOnlyRootFilesystem(true).
		WithCapabilities(corev1ac.Capabilities().WithDrop("ALL")).
		WithSeccompProfile(corev1ac.SeccompProfile().WithType(corev1.SeccompProfileTypeRuntimeDefault))
}

func rollingUpdate() *appsv1ac.DeploymentStrategyApplyConfiguration {
	return appsv1ac.DeploymentStrategy().
		WithType("RollingUpdate").
		WithRollingUpdate(appsv1ac.RollingUpdateDeployment().
			WithMaxUnavailable(intstr.FromInt32(0)).
			WithMaxSurge(intstr.FromInt32(1)))
}

func httpProbe(path, port string, failureThreshold int32) *corev1ac.ProbeApplyConfiguration {
	return corev1ac.Probe().
		WithHTTPGet(corev1ac.HTTPGetAction().WithPath(path).WithPort(intstr.FromString(port))).
		WithPeriodSeconds(10).
		WithTimeoutSeconds(2).
		WithFailureThreshold(failureThreshold)
}

func tmpVolume() *corev1ac.VolumeApplyConfiguration {
	return corev1ac.Volume().WithName("tmp").WithEmptyDir(corev1ac.EmptyDirVolumeSource())
}

func configVolume(s *tallyv1.SegmentSource) *corev1ac.VolumeApplyConfiguration {
	return corev1ac.Volume().WithName("config").
		WithConfigMap(corev1ac.ConfigMapVolumeSource().WithName(ConfigMapName(s)))
}

// natsCreds is the component's own NATS user when the operator issued one, else the shared
// credentials, else nil.
func natsCreds(own, shared *SecretKey) *SecretKey {
	if own != nil {
		return own
	}
	return shared
}

// withNATSCreds mounts the NATS credentials, when there are any, and points the command at them.
// A new user (re-issued, or another signing key) changes the hash and so rolls the pods.
func withNATSCreds(creds *SecretKey, args []string, volumes []*corev1ac.VolumeApplyConfiguration,
	mounts []*corev1ac.VolumeMountApplyConfiguration, annotations map[string]string,
) ([]string, []*corev1ac.VolumeApplyConfiguration, []*corev1ac.VolumeMountApplyConfiguration) {
	return withSecretFile(secretFile{"--nats-creds", "nats-creds", NATSCredsMountPath, AnnotationNATSCredsHash},
		creds, args, volumes, mounts, annotations)
}

// secretFile is one Secret key a container reads as a file: the flag naming the file, the volume,
// where it is mounted, and the pod annotation carrying the value's hash (a change rolls the pods).
type secretFile struct {
	flag, volume, mountPath, hashAnnotation string
}

// withSecretFile mounts key read-only as f (nothing when key is nil) and passes its path in f's
// flag.
func withSecretFile(f secretFile, key *SecretKey, args []string, volumes []*corev1ac.VolumeApplyConfiguration,
	mounts []*corev1ac.VolumeMountApplyConfiguration, annotations map[string]string,
) ([]string, []*corev1ac.VolumeApplyConfiguration, []*corev1ac.VolumeMountApplyConfiguration) {
	if key == nil {
		return args, volumes, mounts
	}
	args = append(args, f.flag+"="+f.mountPath+"/"+key.Key)
	volumes = append(volumes, corev1ac.Volume().WithName(f.volume).WithSecret(corev1ac.SecretVolumeSource().
		WithSecretName(key.Name).
		WithItems(corev1ac.KeyToPath().WithKey(key.Key).WithPath(key.Key)).
		WithDefaultMode(0o440)))
	mounts = append(mounts, corev1ac.VolumeMount().WithName(f.volume).WithMountPath(f.mountPath).WithReadOnly(true))
	annotations[f.hashAnnotation] = key.Hash
	return args, volumes, mounts
}

// resources are the source's own resources when it sets any, else the manager's default. The spec
// replaces the default as a whole: a source that sets only requests gets no default limits.
func resources(spec, fallback corev1.ResourceRequirements) *corev1ac.ResourceRequirementsApplyConfiguration {
	r := spec
	if len(r.Requests) == 0 && len(r.Limits) == 0 {
		r = fallback
	}
	ac := corev1ac.ResourceRequirements()
	if len(r.Requests) > 0 {
		ac.WithRequests(r.Requests)
	}
	if len(r.Limits) > 0 {
		ac.WithLimits(r.Limits)
	}
	return ac
}

// SourceConfig is the runtime settings of a SegmentSource as the receiver and the workers read
// them (tally local builds the same from its manifests), without its write keys.
func SourceConfig(s *tallyv1.SegmentSource) *source.Config {
	c := &source.Config{
		Namespace:       s.Namespace,
		Name:            s.Name,
		Tenant:          s.Spec.Tenant,
		AccountProperty: s.Spec.AccountProperty,
		IgnoredEvents:   slices.Sorted(slices.Values(s.Spec.IgnoredEvents)),
		StreamMaxAge:    s.Spec.Stream.MaxAge.Duration,
		StreamReplicas:  int(s.Spec.Stream.Replicas),
		Partitions:      int(s.Spec.Stream.Partitions),
	}
	if n := int(s.Status.ConsumerPartitions); n > c.Partitions {
		c.ConsumerPartitions = n
	}
	if q := s.Spec.Stream.MaxBytes; q != nil {
		c.StreamMaxBytes = q.Value()
	}
	if ins := s.Spec.Insights; ins != nil && !ins.Suspend {
		c.Insights = &source.InsightsConfig{Endpoint: ins.EndpointOrDefault(), Interval: ins.IntervalOrDefault()}
	}
	c.RateLimit = RateLimit(s.Spec.Receiver.RateLimit)
	return c
}

// MemberConfig is SourceConfig for a member of pool p: a member without a rate limit of its own
// gets the pool's.
func MemberConfig(s *tallyv1.SegmentSource, p *tallyv1.SegmentSourcePool) *source.Config {
	c := SourceConfig(s)
	if c.RateLimit == nil {
		c.RateLimit = RateLimit(p.Spec.Receiver.RateLimit)
	}
	return c
}

// RateLimit is a spec's rate limit as the receivers read it; nil when unset.
func RateLimit(l *tallyv1.RateLimit) *source.RateLimit {
	if l == nil {
		return nil
	}
	return &source.RateLimit{EventsPerSecond: int(l.EventsPerSecond), Burst: int(l.Burst)}
}
