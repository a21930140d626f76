package resources

import (
	corev1 "k8s.io/api/core/v1"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
)

// The receiver and worker Deployments of a SegmentSource and of a SegmentSourcePool differ in
// their arguments, volumes and owner only: the containers and the Deployment around them are
// built here once.

// owned is a Deployment's identity: its name, labels, selector and owner.
type owned struct {
	name, namespace  string
	labels, selector map[string]string
	owner            *metav1ac.OwnerReferenceApplyConfiguration
}

// receiverContainer runs `tally receiver` with args, serving HTTP on ReceiverPort.
func receiverContainer(image string, args []string, res *corev1ac.ResourceRequirementsApplyConfiguration,
	mounts []*corev1ac.VolumeMountApplyConfiguration,
) *corev1ac.ContainerApplyConfiguration {
	return corev1ac.Container().
		WithName(ComponentReceiver).
		WithImage(image).
		WithCommand("/tally").
		WithArgs(args...).
		WithPorts(corev1ac.ContainerPort().WithName("http").WithContainerPort(ReceiverPort).WithProtocol(corev1.ProtocolTCP)).
		WithLivenessProbe(httpProbe("/healthz", "http", 3)).
		WithReadinessProbe(httpProbe("/readyz", "http", 1).WithPeriodSeconds(receiverReadinessPeriodSeconds)).
		WithResources(res).
		WithSecurityContext(containerSecurityContext()).
		WithVolumeMounts(mounts...)
}

// workerContainer runs `tally worker` with args; its health endpoints share the metrics port.
func workerContainer(image string, args []string, res *corev1ac.ResourceRequirementsApplyConfiguration,
	mounts []*corev1ac.VolumeMountApplyConfiguration,
) *corev1ac.ContainerApplyConfiguration {
	return corev1ac.Container().
		WithName(ComponentWorker).
		WithImage(image).
		WithCommand("/tally").
		WithArgs(args...).
		WithPorts(corev1ac.ContainerPort().WithName("metrics").WithContainerPort(WorkerMetricsPort).WithProtocol(corev1.ProtocolTCP)).
		WithLivenessProbe(httpProbe("/healthz", "metrics", 3)).
		WithReadinessProbe(httpProbe("/readyz", "metrics", 1)).
		WithResources(res).
		WithSecurityContext(containerSecurityContext()).
		WithVolumeMounts(mounts...)
}

// databaseURLEnv passes the Postgres URL from a Secret key as TALLY_DATABASE_URL.
func databaseURLEnv(secret, key string) *corev1ac.EnvVarApplyConfiguration {
	return corev1ac.EnvVar().WithName("TALLY_DATABASE_URL").WithValueFrom(corev1ac.EnvVarSource().
		WithSecretKeyRef(corev1ac.SecretKeySelector().WithName(secret).WithKey(key)))
}

// deployment rolls template out under o, never taking a ready pod away before its replacement is
// ready; replicas nil leaves them to an autoscaler.
func deployment(o owned, replicas *int32, template *corev1ac.PodTemplateSpecApplyConfiguration) *appsv1ac.DeploymentApplyConfiguration {
	spec := appsv1ac.DeploymentSpec().
		WithSelector(metav1ac.LabelSelector().WithMatchLabels(o.selector)).
		WithStrategy(rollingUpdate()).
		WithTemplate(template)
	if replicas != nil {
		spec.WithReplicas(*replicas)
	}
	return appsv1ac.Deployment(o.name, o.namespace).
		WithLabels(o.labels).
		WithOwnerReferences(o.owner).
		WithSpec(spec)
}
