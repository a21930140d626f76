package deploy_test

import (
	"path/filepath"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// kustomizeBuild builds a kustomization directory (relative to the repository root) the way
// `kustomize build` does.
func kustomizeBuild(dir string) []*unstructured.Unstructured {
	GinkgoHelper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	resources, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join(repoRoot, dir))
	Expect(err).NotTo(HaveOccurred())
	out, err := resources.AsYaml()
	Expect(err).NotTo(HaveOccurred())
	return parseObjects(string(out))
}

var _ = Describe("kustomize install (config/default)", func() {
	const namespace = "tally-system"

	It("renders the CRDs, the manager's RBAC, the manager and its metrics Service in tally-system", func() {
		objects := kustomizeBuild("config/default")
		Expect(kindsOf(objects)).To(ConsistOf(
			"Namespace/tally-system",
			"CustomResourceDefinition/segmentsources.tally.dev",
			"CustomResourceDefinition/segmentsourcepools.tally.dev",
			"CustomResourceDefinition/tenants.tally.dev",
			"ServiceAccount/tally-controller-manager",
			"ClusterRole/tally-manager-role",
			"ClusterRoleBinding/tally-manager-rolebinding",
			"Role/tally-leader-election-role",
			"RoleBinding/tally-leader-election-rolebinding",
			"Service/tally-controller-manager-metrics",
			"Deployment/tally-controller-manager",
		))
		for _, o := range objects {
			switch o.GetKind() {
			case "Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding":
				Expect(o.GetNamespace()).To(BeEmpty(), o.GetKind())
			default:
				Expect(o.GetNamespace()).To(Equal(namespace), o.GetKind())
			}
			Expect(o.GetLabels()).To(HaveKeyWithValue("app.kubernetes.io/part-of", "tally"), o.GetKind())
		}
		ns := convert[corev1.Namespace](find(objects, "Namespace", ""))
		Expect(ns.Labels).To(HaveKeyWithValue("pod-security.kubernetes.io/enforce", "restricted"))
	})

	It("installs the generated CRDs unchanged and grants exactly the generated RBAC rules", func() {
		objects := kustomizeBuild("config/default")
		for _, generated := range generatedCRDs() {
			crd := crdOf(find(objects, "CustomResourceDefinition", generated.Name))
			Expect(equality.Semantic.DeepEqual(crd.Spec, generated.Spec)).To(BeTrue(), generated.Name)
		}

		role := convert[rbacv1.ClusterRole](find(objects, "ClusterRole", ""))
		Expect(role.Rules).To(Equal(generatedRole().Rules))
		binding := convert[rbacv1.ClusterRoleBinding](find(objects, "ClusterRoleBinding", ""))
		Expect(binding.RoleRef.Name).To(Equal(role.Name))
		Expect(binding.Subjects).To(Equal([]rbacv1.Subject{{Kind: "ServiceAccount", Name: "tally-controller-manager", Namespace: namespace}}))
		leaderBinding := convert[rbacv1.RoleBinding](find(objects, "RoleBinding", ""))
		Expect(leaderBinding.RoleRef.Name).To(Equal("tally-leader-election-role"))
		Expect(leaderBinding.Subjects).To(Equal(binding.Subjects))
	})

	It("runs the same image as the chart's appVersion, hardened, and passes that image on to workloads", func() {
		objects := kustomizeBuild("config/default")
		d := deployment(objects)
		spec := d.Spec.Template.Spec
		Expect(spec.ServiceAccountName).To(Equal("tally-controller-manager"))
		c := spec.Containers[0]
		Expect(c.Image).To(Equal("ghcr.io/tallyhq/tally:" + readChartMeta().AppVersion))
		Expect(envVar(c, "TALLY_POD_IMAGE").Value).To(Equal(c.Image))
		Expect(envVar(c, "POD_NAMESPACE").ValueFrom.FieldRef.FieldPath).To(Equal("metadata.namespace"))
		Expect(c.Args[0]).To(Equal("manager"))
		Expect(c.Args).To(ContainElements(
			HavePrefix("--nats-url="),
			HavePrefix("--database-secret="),
			"--metrics-bind-address=:8080",
			"--health-probe-bind-address=:8081",
			"--leader-elect",
		))
		Expect(c.LivenessProbe.HTTPGet.Path).To(Equal("/healthz"))
		Expect(c.ReadinessProbe.HTTPGet.Path).To(Equal("/readyz"))
		expectRestrictedSecurity(spec)

		svc := convert[corev1.Service](find(objects, "Service", ""))
		for k, v := range svc.Spec.Selector {
			Expect(d.Spec.Template.Labels).To(HaveKeyWithValue(k, v), "the metrics Service selects the manager pods")
		}
	})

	It("is admitted by the API server (server-side dry-run), in its own restricted namespace", func() {
		objects := kustomizeBuild("config/default")
		By("creating its Namespace and CRDs for real")
		kube.MustApply(toYAML(find(objects, "Namespace", ""), find(objects, "CustomResourceDefinition", "segmentsources.tally.dev"),
			find(objects, "CustomResourceDefinition", "tenants.tally.dev"), find(objects, "CustomResourceDefinition", "segmentsourcepools.tally.dev")))
		live, err := kube.Run("", "get", "namespace", namespace, "-o", "jsonpath={.metadata.labels}")
		Expect(err).NotTo(HaveOccurred())
		Expect(live).To(ContainSubstring(`"pod-security.kubernetes.io/enforce":"restricted"`))

		By("dry-running every object, then the manager's pod")
		out, err := kube.DryRun(toYAML(objects...))
		Expect(err).NotTo(HaveOccurred())
		Expect(out).To(ContainSubstring("deployment.apps/tally-controller-manager serverside-applied (server dry run)"))
		_, err = kube.DryRun(toYAML(podsFromTemplates(objects)...))
		Expect(err).NotTo(HaveOccurred())
	})
})

var _ = Describe("samples (config/samples)", func() {
	It("are admitted by the API server with the CRDs installed (server-side dry-run)", func() {
		kube.MustApply(readFile("config/crd/bases/tally.dev_segmentsources.yaml") + "\n---\n" + readFile("config/crd/bases/tally.dev_tenants.yaml") +
			"\n---\n" + readFile("config/crd/bases/tally.dev_segmentsourcepools.yaml"))
		_, err := kube.Run("", "wait", "--for=condition=Established", "crd/segmentsources.tally.dev", "crd/tenants.tally.dev",
			"crd/segmentsourcepools.tally.dev", "--timeout=60s")
		Expect(err).NotTo(HaveOccurred())

		samples, err := filepath.Glob(filepath.Join(repoRoot, "config/samples/*.yaml"))
		Expect(err).NotTo(HaveOccurred())
		Expect(samples).NotTo(BeEmpty())
		for _, sample := range samples {
			manifests := readFile(filepath.Join("config/samples", filepath.Base(sample)))
			Expect(kindsOf(parseObjects(manifests))).To(ContainElement(HavePrefix("SegmentSource/")), sample)
			out, err := kube.DryRun(manifests)
			Expect(err).NotTo(HaveOccurred(), sample)
			Expect(out).To(ContainSubstring("segmentsource.tally.dev/"), sample)
		}
	})
})
