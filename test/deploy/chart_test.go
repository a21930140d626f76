package deploy_test

import (
	"encoding/json"
	"path/filepath"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// chartMeta is the part of Chart.yaml the tests use.
type chartMeta struct {
	Version    string `json:"version"`
	AppVersion string `json:"appVersion"`
}

func readChartMeta() chartMeta {
	GinkgoHelper()
	var meta chartMeta
	Expect(yaml.Unmarshal([]byte(readFile("charts/tally/Chart.yaml")), &meta)).To(Succeed())
	Expect(meta.AppVersion).NotTo(BeEmpty())
	return meta
}

var _ = Describe("Helm chart", func() {
	Describe("helm lint", func() {
		It("passes in strict mode with default values", func() {
			_, err := helm("lint", "--strict", "charts/tally")
			Expect(err).NotTo(HaveOccurred())
		})

		It("passes in strict mode with the non-default values", func() {
			_, err := helm("lint", "--strict", "charts/tally", "--namespace", customNamespace,
				"--values", "test/deploy/testdata/custom-values.yaml")
			Expect(err).NotTo(HaveOccurred())
		})
	})

	Describe("values.schema.json", func() {
		DescribeTable("refuses values a user could mistype",
			func(flag, complaint string) {
				_, err := helmTemplate(defaultNamespace, "--set", flag)
				Expect(err).To(MatchError(ContainSubstring(complaint)))
			},
			Entry("a misspelt manager key", "manager.replcas=2", "additional properties 'replcas' not allowed"),
			Entry("a misspelt top-level key", "metric.enabled=false", "additional properties 'metric' not allowed"),
			Entry("a misspelt nested key", "crds.kepp=false", "additional properties 'kepp' not allowed"),
			Entry("a port that is not a number", "metrics.port=metrics", "metrics/port"),
			Entry("an unknown pull policy", "image.pullPolicy=Sometimes", "image/pullPolicy"),
			Entry("an unknown log level", "manager.logLevel=verbose", "manager/logLevel"),
			Entry("a NATS URL without scheme", "nats.url=nats.default.svc:4222", "nats/url"),
			Entry("a duration that is not a duration", "manager.leaderElection.leaseDuration=fifteen", "leaseDuration"),
			Entry("a database Secret created without a URL", "database.create=true", "database/url"),
			Entry("a misspelt resources key", "workload.receiver.resources.request.cpu=1", "additional properties 'request' not allowed"),
			Entry("a quantity that is not one", "workload.worker.resources.limits.memory=lots", "workload/worker/resources/limits/memory"),
		)

		It("is valid JSON and closes every object it declares", func() {
			var schema map[string]any
			Expect(json.Unmarshal([]byte(readFile("charts/tally/values.schema.json")), &schema)).To(Succeed())
			Expect(schema).To(HaveKeyWithValue("additionalProperties", false))
			for _, key := range []string{"image", "manager", "nats", "database", "workload", "crds", "metrics", "rbac", "serviceAccount", "tenants", "networkPolicy"} {
				Expect(schema["properties"]).To(HaveKeyWithValue(key, HaveKeyWithValue("additionalProperties", false)), key)
			}
		})
	})

	Describe("with default values", func() {
		var meta chartMeta

		BeforeEach(func() { meta = readChartMeta() })

		It("renders exactly the manager, its RBAC, its NetworkPolicy, the metrics Service and the CRDs", func() {
			rendered := parseObjects(mustHelmTemplate(defaultNamespace))
			Expect(kindsOf(rendered)).To(ConsistOf(
				"CustomResourceDefinition/segmentsources.tally.dev",
				"CustomResourceDefinition/segmentsourcepools.tally.dev",
				"CustomResourceDefinition/tenants.tally.dev",
				"ServiceAccount/tally-manager",
				"ClusterRole/tally-manager",
				"ClusterRoleBinding/tally-manager",
				"ClusterRole/tally-manager-tenants",
				"ClusterRoleBinding/tally-manager-tenants",
				"Role/tally-leader-election",
				"RoleBinding/tally-leader-election",
				"NetworkPolicy/tally-manager",
				"Service/tally-manager-metrics",
				"Deployment/tally-manager",
			))
			for _, o := range rendered {
				Expect(o.GetLabels()).To(HaveKeyWithValue("app.kubernetes.io/instance", "tally"), o.GetKind())
				Expect(o.GetLabels()).To(HaveKeyWithValue("app.kubernetes.io/managed-by", "Helm"), o.GetKind())
				if o.GetKind() != "CustomResourceDefinition" && o.GetKind() != "ClusterRole" && o.GetKind() != "ClusterRoleBinding" {
					Expect(o.GetNamespace()).To(Equal(defaultNamespace), o.GetKind())
				}
			}
		})

		It("runs `tally manager` hardened, with probes, the downward API and the chart's appVersion", func() {
			d := deployment(parseObjects(mustHelmTemplate(defaultNamespace)))
			image := "ghcr.io/tallyhq/tally:" + meta.AppVersion
			Expect(*d.Spec.Replicas).To(BeEquivalentTo(1))
			spec := d.Spec.Template.Spec
			Expect(spec.ServiceAccountName).To(Equal("tally-manager"))
			Expect(spec.ImagePullSecrets).To(BeEmpty())
			Expect(spec.Containers).To(HaveLen(1))
			c := spec.Containers[0]
			Expect(c.Image).To(Equal(image))
			Expect(c.ImagePullPolicy).To(Equal(corev1.PullIfNotPresent))
			Expect(c.Command).To(BeEmpty(), "the image's entrypoint is /tally")
			Expect(c.Args).To(Equal([]string{
				"manager",
				"--nats-url=nats://nats:4222",
				"--workload-image=" + image,
				`--receiver-resources={"limits":{"memory":"256Mi"},"requests":{"cpu":"100m","memory":"64Mi"}}`,
				`--worker-resources={"limits":{"memory":"512Mi"},"requests":{"cpu":"100m","memory":"128Mi"}}`,
				"--stream-max-bytes=1Gi",
				"--database-secret=tally-database",
				"--database-secret-key=url",
				"--tenant-database-roles=true",
				"--require-tenant=true",
				"--metrics-bind-address=:8080",
				"--health-probe-bind-address=:8081",
				"--leader-elect",
				"--leader-elect-lease-duration=15s",
				"--leader-elect-renew-deadline=10s",
				"--leader-elect-retry-period=2s",
				"--log-level=info",
				"--log-format=json",
			}))
			Expect(envVar(c, "POD_NAMESPACE").ValueFrom.FieldRef.FieldPath).To(Equal("metadata.namespace"))
			Expect(envVar(c, "TALLY_POD_IMAGE").Value).To(Equal(image))
			Expect(c.LivenessProbe.HTTPGet.Path).To(Equal("/healthz"))
			Expect(c.LivenessProbe.HTTPGet.Port).To(Equal(intstr.FromString("health")))
			Expect(c.ReadinessProbe.HTTPGet.Path).To(Equal("/readyz"))
			Expect(c.ReadinessProbe.HTTPGet.Port).To(Equal(intstr.FromString("health")))
			Expect(c.Ports).To(ConsistOf(
				corev1.ContainerPort{Name: "metrics", ContainerPort: 8080, Protocol: corev1.ProtocolTCP},
				corev1.ContainerPort{Name: "health", ContainerPort: 8081, Protocol: corev1.ProtocolTCP},
			))
			Expect(c.Resources.Requests).To(HaveKey(corev1.ResourceMemory))
			Expect(c.Resources.Limits).To(HaveKey(corev1.ResourceMemory))
			Expect(c.VolumeMounts).To(BeEmpty())
			expectRestrictedSecurity(spec)
			Expect(spec.SecurityContext.RunAsUser).To(HaveValue(BeEquivalentTo(65532)), "the distroless nonroot user")
			Expect(d.Spec.Selector.MatchLabels).To(Equal(map[string]string{
				"app.kubernetes.io/name":      "tally",
				"app.kubernetes.io/instance":  "tally",
				"app.kubernetes.io/component": "manager",
			}))
			Expect(d.Spec.Template.Labels).To(Satisfy(func(l map[string]string) bool {
				for k, v := range d.Spec.Selector.MatchLabels {
					if l[k] != v {
						return false
					}
				}
				return true
			}), "pod labels match the selector")
		})

		It("runs the image's entrypoint as the image's non-root user (Dockerfile)", func() {
			dockerfile := readFile("Dockerfile")
			Expect(dockerfile).To(MatchRegexp(`(?m)^USER 65532:65532$`))
			Expect(dockerfile).To(MatchRegexp(`(?m)^ENTRYPOINT \["/tally"\]$`))
			spec := deployment(parseObjects(mustHelmTemplate(defaultNamespace))).Spec.Template.Spec
			Expect(spec.SecurityContext.RunAsUser).To(HaveValue(BeEquivalentTo(65532)))
			Expect(spec.SecurityContext.RunAsGroup).To(HaveValue(BeEquivalentTo(65532)))
		})

		It("installs the CRDs exactly as generated in config/crd/bases, kept on uninstall", func() {
			objects := parseObjects(mustHelmTemplate(defaultNamespace))
			for _, generated := range generatedCRDs() {
				rendered := crdOf(find(objects, "CustomResourceDefinition", generated.Name))
				Expect(rendered.Annotations).To(HaveKeyWithValue("helm.sh/resource-policy", "keep"))
				Expect(rendered.Labels).To(HaveKeyWithValue("app.kubernetes.io/managed-by", "Helm"))
				for k, v := range generated.Annotations {
					Expect(rendered.Annotations).To(HaveKeyWithValue(k, v))
				}
				Expect(equality.Semantic.DeepEqual(rendered.Spec, generated.Spec)).To(BeTrue(),
					"the chart's CRD spec differs from config/crd/bases: run `make chart-crds`")
			}
		})

		It("keeps its copies of the generated CRD and role byte-for-byte in sync (make chart-crds)", func() {
			bases, err := filepath.Glob(filepath.Join(repoRoot, "config/crd/bases/*.yaml"))
			Expect(err).NotTo(HaveOccurred())
			copies, err := filepath.Glob(filepath.Join(repoRoot, "charts/tally/files/crds/*.yaml"))
			Expect(err).NotTo(HaveOccurred())
			Expect(bases).NotTo(BeEmpty())
			Expect(len(copies)).To(Equal(len(bases)), "run `make chart-crds`")
			for _, base := range bases {
				Expect(readFile("charts/tally/files/crds/"+filepath.Base(base))).To(Equal(readFile("config/crd/bases/"+filepath.Base(base))),
					"run `make chart-crds`")
			}
			Expect(readFile("charts/tally/files/rbac/role.yaml")).To(Equal(readFile("config/rbac/role.yaml")), "run `make chart-crds`")
		})

		It("grants the manager exactly the generated RBAC rules, plus a Lease in its namespace", func() {
			rendered := parseObjects(mustHelmTemplate(defaultNamespace))
			role := convert[rbacv1.ClusterRole](find(rendered, "ClusterRole", "tally-manager"))
			namespaced, tenants := splitTenantRule(generatedRole().Rules)
			Expect(role.Rules).To(Equal(namespaced))
			tenantsRole := convert[rbacv1.ClusterRole](find(rendered, "ClusterRole", "tally-manager-tenants"))
			Expect(tenantsRole.Rules).To(Equal([]rbacv1.PolicyRule{{
				APIGroups: []string{"tally.dev"}, Resources: []string{"tenants"}, Verbs: []string{"get", "list", "watch"},
			}, namespacesRule(generatedRole().Rules)}), "with tenants.required the operator only reads Tenants (and Namespaces)")
			Expect(tenants.Verbs).To(ContainElements("get", "list", "watch"))

			binding := convert[rbacv1.ClusterRoleBinding](find(rendered, "ClusterRoleBinding", "tally-manager"))
			tenantsBinding := convert[rbacv1.ClusterRoleBinding](find(rendered, "ClusterRoleBinding", "tally-manager-tenants"))
			Expect(tenantsBinding.RoleRef.Name).To(Equal(tenantsRole.Name))
			Expect(tenantsBinding.Subjects).To(Equal(binding.Subjects))
			Expect(binding.RoleRef).To(Equal(rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name}))
			Expect(binding.Subjects).To(Equal([]rbacv1.Subject{{Kind: "ServiceAccount", Name: "tally-manager", Namespace: defaultNamespace}}))

			leader := convert[rbacv1.Role](find(rendered, "Role", ""))
			Expect(leader.Namespace).To(Equal(defaultNamespace))
			Expect(leader.Rules).To(ContainElement(rbacv1.PolicyRule{
				APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"},
				Verbs: []string{"get", "list", "watch", "create", "update", "patch", "delete"},
			}))
			Expect(leader.Rules).To(ContainElement(rbacv1.PolicyRule{
				APIGroups: []string{"", "events.k8s.io"}, Resources: []string{"events"}, Verbs: []string{"create", "patch"},
			}))
			leaderBinding := convert[rbacv1.RoleBinding](find(rendered, "RoleBinding", ""))
			Expect(leaderBinding.RoleRef.Name).To(Equal(leader.Name))
			Expect(leaderBinding.Subjects).To(Equal(binding.Subjects))
		})

		It("exposes metrics through a Service that selects the manager pods", func() {
			rendered := parseObjects(mustHelmTemplate(defaultNamespace))
			svc := convert[corev1.Service](find(rendered, "Service", ""))
			Expect(svc.Spec.Selector).To(Equal(deployment(rendered).Spec.Selector.MatchLabels))
			Expect(svc.Spec.Ports).To(ConsistOf(corev1.ServicePort{
				Name: "metrics", Port: 8080, TargetPort: intstr.FromString("metrics"), Protocol: corev1.ProtocolTCP,
			}))
		})

		It("renders no ServiceMonitor when the Prometheus Operator API is missing, even if asked", func() {
			rendered := parseObjects(mustHelmTemplate(defaultNamespace, "--set", "metrics.serviceMonitor.enabled=true"))
			Expect(kindsOf(rendered)).NotTo(ContainElement(HavePrefix("ServiceMonitor/")))
		})

		It("is admitted by the API server in a restricted namespace (server-side dry-run)", func() {
			rendered := parseObjects(mustHelmTemplate(defaultNamespace))
			By("installing the chart's CRDs for real")
			kube.MustApply(toYAML(find(rendered, "CustomResourceDefinition", "segmentsources.tally.dev"),
				find(rendered, "CustomResourceDefinition", "tenants.tally.dev")))
			_, err := kube.Run("", "wait", "--for=condition=Established", "crd/segmentsources.tally.dev", "crd/tenants.tally.dev", "--timeout=60s")
			Expect(err).NotTo(HaveOccurred())

			By("dry-running every rendered object")
			out, err := kube.DryRun(toYAML(rendered...))
			Expect(err).NotTo(HaveOccurred())
			Expect(out).To(ContainSubstring("deployment.apps/tally-manager serverside-applied (server dry run)"))

			By("dry-running the manager's pod as the Deployment would create it")
			_, err = kube.DryRun(toYAML(podsFromTemplates(rendered)...))
			Expect(err).NotTo(HaveOccurred())
		})
	})

	Describe("with non-default values", func() {
		render := func() []*unstructured.Unstructured {
			GinkgoHelper()
			return parseObjects(mustHelmTemplate(customNamespace,
				"--values", "test/deploy/testdata/custom-values.yaml",
				"--api-versions", "monitoring.coreos.com/v1"))
		}

		It("renders the optional objects, Roles instead of a ClusterRole, and leaves out the CRDs", func() {
			Expect(kindsOf(render())).To(ConsistOf(
				"ServiceAccount/acme-operator",
				"Secret/acme-db",
				"Role/acme-tally-manager",
				"RoleBinding/acme-tally-manager",
				"Role/acme-tally-manager-secrets",
				"RoleBinding/acme-tally-manager-secrets",
				"ClusterRole/acme-tally-manager-tenants",
				"ClusterRoleBinding/acme-tally-manager-tenants",
				"Role/acme-tally-leader-election",
				"RoleBinding/acme-tally-leader-election",
				"NetworkPolicy/acme-tally-manager",
				"NetworkPolicy/acme-tally-receivers",
				"NetworkPolicy/acme-tally-workers",
				"NetworkPolicy/acme-tally-nats-clients",
				"Service/acme-tally-manager-metrics",
				"Deployment/acme-tally-manager",
				"ServiceMonitor/acme-tally-manager",
			))
		})

		It("passes image, pull secrets, scheduling, resources, NATS, database and namespace settings through", func() {
			objects := render()
			d := deployment(objects)
			spec := d.Spec.Template.Spec
			c := spec.Containers[0]
			Expect(*d.Spec.Replicas).To(BeEquivalentTo(2))
			Expect(c.Image).To(Equal("registry.example.com/mirror/tally:1.2.3-rc.1"))
			Expect(c.ImagePullPolicy).To(Equal(corev1.PullAlways))
			Expect(envVar(c, "TALLY_POD_IMAGE").Value).To(Equal("registry.example.com/mirror/tally:1.2.3-rc.1"))
			Expect(envVar(c, "GOMEMLIMIT").Value).To(Equal("200MiB"))
			Expect(spec.ImagePullSecrets).To(Equal([]corev1.LocalObjectReference{{Name: "regcred"}}))
			Expect(spec.ServiceAccountName).To(Equal("acme-operator"))
			Expect(spec.PriorityClassName).To(Equal("system-cluster-critical"))
			Expect(spec.NodeSelector).To(Equal(map[string]string{"kubernetes.io/os": "linux", "node-role.example.com/ops": "true"}))
			Expect(spec.Tolerations).To(Equal([]corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "ops", Effect: corev1.TaintEffectNoSchedule}}))
			Expect(spec.Affinity).NotTo(BeNil())
			Expect(spec.Affinity.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution).To(HaveLen(1))
			Expect(c.Resources.Requests.Cpu().Equal(resource.MustParse("200m"))).To(BeTrue())
			Expect(c.Resources.Limits.Memory().Equal(resource.MustParse("512Mi"))).To(BeTrue())
			Expect(d.Spec.Template.Annotations).To(HaveKeyWithValue("example.com/team", "data"))
			Expect(d.Spec.Template.Labels).To(HaveKeyWithValue("example.com/cost-center", "analytics"))
			Expect(c.Args).To(Equal([]string{
				"manager",
				"--nats-url=tls://nats.messaging.svc:4222",
				"--nats-creds=/var/run/secrets/tally/nats/tally.creds",
				"--nats-creds-secret=tally-nats",
				"--nats-creds-secret-key=tally.creds",
				"--workload-image=registry.example.com/mirror/tally-workload:1.2.3",
				`--receiver-resources={"limits":{},"requests":{"cpu":"250m","memory":"64Mi"}}`,
				"--receiver-atomic-batches",
				`--worker-resources={"limits":{"cpu":2,"memory":"1Gi"},"requests":{"cpu":"500m","memory":"256Mi"}}`,
				"--stream-max-bytes=5Gi",
				"--database-secret=acme-db",
				"--database-secret-key=dsn",
				"--tenant-database-roles=false",
				"--watch-namespace=tenants",
				"--require-tenant=false",
				"--metrics-bind-address=:9090",
				"--health-probe-bind-address=:9440",
				"--leader-elect",
				"--leader-elect-lease-duration=60s",
				"--leader-elect-renew-deadline=40s",
				"--leader-elect-retry-period=5s",
				"--log-level=debug",
				"--log-format=text",
				"--requeue-interval=30s",
			}))
			Expect(c.VolumeMounts).To(Equal([]corev1.VolumeMount{{Name: "nats-creds", MountPath: "/var/run/secrets/tally/nats", ReadOnly: true}}))
			Expect(spec.Volumes).To(HaveLen(1))
			Expect(spec.Volumes[0].Secret.SecretName).To(Equal("tally-nats"))
			Expect(spec.Volumes[0].Secret.Items).To(Equal([]corev1.KeyToPath{{Key: "tally.creds", Path: "tally.creds"}}))
			Expect(c.LivenessProbe.HTTPGet.Port).To(Equal(intstr.FromString("health")))
			Expect(c.Ports).To(ContainElement(corev1.ContainerPort{Name: "health", ContainerPort: 9440, Protocol: corev1.ProtocolTCP}))
			expectRestrictedSecurity(spec)

			secret := convert[corev1.Secret](find(objects, "Secret", "acme-db"))
			Expect(secret.Namespace).To(Equal(customNamespace))
			Expect(secret.StringData).To(HaveKeyWithValue("dsn", "postgres://tally:secret@postgres.db.svc:5432/tally?sslmode=require"))

			sa := convert[corev1.ServiceAccount](find(objects, "ServiceAccount", ""))
			Expect(sa.Annotations).To(HaveKeyWithValue("iam.example.com/role", "tally"))
			binding := convert[rbacv1.ClusterRoleBinding](find(objects, "ClusterRoleBinding", ""))
			Expect(binding.Subjects).To(Equal([]rbacv1.Subject{{Kind: "ServiceAccount", Name: "acme-operator", Namespace: customNamespace}}))
		})

		It("scrapes the metrics Service with the ServiceMonitor", func() {
			objects := render()
			svc := convert[corev1.Service](find(objects, "Service", ""))
			Expect(svc.Spec.Ports).To(ConsistOf(corev1.ServicePort{
				Name: "metrics", Port: 9090, TargetPort: intstr.FromString("metrics"), Protocol: corev1.ProtocolTCP,
			}))
			sm := find(objects, "ServiceMonitor", "")
			Expect(sm.GetLabels()).To(HaveKeyWithValue("release", "kube-prometheus"))
			selector, found, err := unstructured.NestedStringMap(sm.Object, "spec", "selector", "matchLabels")
			Expect(err).NotTo(HaveOccurred())
			Expect(found).To(BeTrue())
			Expect(selector).NotTo(BeEmpty())
			for k, v := range selector {
				Expect(svc.Labels).To(HaveKeyWithValue(k, v), "the ServiceMonitor selects the metrics Service")
			}
			Expect(sm.Object["spec"]).To(HaveKeyWithValue("endpoints", ConsistOf(map[string]any{
				"port": "metrics", "path": "/metrics", "scheme": "http", "interval": "30s", "scrapeTimeout": "10s",
			})))
		})

		It("is admitted by the API server in a restricted namespace (server-side dry-run)", func() {
			objects := render()
			out, err := kube.DryRun(toYAML(objects...))
			Expect(err).NotTo(HaveOccurred())
			Expect(out).To(ContainSubstring("servicemonitor.monitoring.coreos.com/acme-tally-manager serverside-applied (server dry run)"))
			_, err = kube.DryRun(toYAML(podsFromTemplates(objects)...))
			Expect(err).NotTo(HaveOccurred())
		})
	})

	Describe("option switches", func() {
		It("omits the keep annotation when crds.keep is false", func() {
			rendered := parseObjects(mustHelmTemplate(defaultNamespace, "--set", "crds.keep=false"))
			for _, name := range []string{"segmentsources.tally.dev", "segmentsourcepools.tally.dev", "tenants.tally.dev"} {
				Expect(find(rendered, "CustomResourceDefinition", name).GetAnnotations()).NotTo(HaveKey("helm.sh/resource-policy"), name)
			}
		})

		It("creates no RBAC when rbac.create is false and no ServiceAccount when serviceAccount.create is false", func() {
			rendered := parseObjects(mustHelmTemplate(defaultNamespace,
				"--set", "rbac.create=false", "--set", "serviceAccount.create=false", "--set", "serviceAccount.name=existing"))
			Expect(kindsOf(rendered)).To(ConsistOf(
				"CustomResourceDefinition/segmentsources.tally.dev",
				"CustomResourceDefinition/segmentsourcepools.tally.dev",
				"CustomResourceDefinition/tenants.tally.dev",
				"NetworkPolicy/tally-manager",
				"Service/tally-manager-metrics",
				"Deployment/tally-manager",
			))
			Expect(deployment(rendered).Spec.Template.Spec.ServiceAccountName).To(Equal("existing"))
		})

		It("turns metrics off on the manager and drops the Service when metrics.enabled is false", func() {
			rendered := parseObjects(mustHelmTemplate(defaultNamespace, "--set", "metrics.enabled=false",
				"--set", "metrics.serviceMonitor.enabled=true", "--api-versions", "monitoring.coreos.com/v1"))
			Expect(kindsOf(rendered)).NotTo(ContainElement(HavePrefix("Service/")))
			Expect(kindsOf(rendered)).NotTo(ContainElement(HavePrefix("ServiceMonitor/")))
			Expect(deployment(rendered).Spec.Template.Spec.Containers[0].Args).To(ContainElement("--metrics-bind-address=0"))
		})

		It("turns leader election off, and drops its Role, when manager.leaderElection.enabled is false", func() {
			rendered := parseObjects(mustHelmTemplate(defaultNamespace, "--set", "manager.leaderElection.enabled=false"))
			Expect(kindsOf(rendered)).NotTo(ContainElement(HavePrefix("Role/")))
			args := deployment(rendered).Spec.Template.Spec.Containers[0].Args
			Expect(args).To(ContainElement("--leader-elect=false"))
			Expect(args).NotTo(ContainElement(HavePrefix("--leader-elect-lease-duration")))
		})

		It("pins the image by digest when image.digest is set", func() {
			digest := "sha256:" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
			c := deployment(parseObjects(mustHelmTemplate(defaultNamespace, "--set", "image.digest="+digest))).Spec.Template.Spec.Containers[0]
			Expect(c.Image).To(Equal("ghcr.io/tallyhq/tally@" + digest))
			Expect(c.Args).To(ContainElement("--workload-image=ghcr.io/tallyhq/tally@" + digest))
		})

		It("is refused by Pod Security admission without its security contexts (the dry-run check works)", func() {
			rendered := parseObjects(mustHelmTemplate(defaultNamespace,
				"--set", "manager.podSecurityContext=null", "--set", "manager.securityContext=null"))
			spec := deployment(rendered).Spec.Template.Spec
			Expect(spec.SecurityContext).To(BeNil())
			Expect(spec.Containers[0].SecurityContext).To(BeNil())
			_, err := kube.DryRun(toYAML(find(rendered, "Deployment", "")))
			Expect(err).To(MatchError(ContainSubstring("would violate PodSecurity \"restricted:latest\"")))
			_, err = kube.DryRun(toYAML(podsFromTemplates(rendered)...))
			Expect(err).To(MatchError(ContainSubstring("violates PodSecurity \"restricted:latest\"")))
		})
	})
})
