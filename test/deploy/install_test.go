package deploy_test

import (
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

var _ = Describe("helm install, upgrade and uninstall against the API server", func() {
	It("installs (adopting an existing CRD), upgrades in place, and keeps the CRD on uninstall", func() {
		const release = "tally-it"
		kubeconfig := "--kubeconfig=" + kube.kubeconfig

		By("installing over a CRD that exists already, as after `kubectl apply -k config/default`")
		kube.MustApply(readFile("config/crd/bases/tally.dev_segmentsources.yaml"))
		out, err := helm("install", release, "charts/tally", "--namespace", installNamespace, kubeconfig,
			"--take-ownership", "--set", "database.create=true", "--set", "database.url=postgres://tally@db:5432/tally")
		Expect(err).NotTo(HaveOccurred())
		Expect(out).To(ContainSubstring("STATUS: deployed"))
		Expect(out).To(ContainSubstring("kubectl -n " + installNamespace + " rollout status deployment/" + release + "-manager"))
		Expect(out).To(ContainSubstring("resource.customizations.health.tally.dev_SegmentSource"))
		Expect(out).NotTo(ContainSubstring("create secret generic"), "no hint to create the database Secret when the chart created it")

		args, err := kube.Run("", "-n", installNamespace, "get", "deployment", release+"-manager", "-o", "jsonpath={.spec.template.spec.containers[0].args}")
		Expect(err).NotTo(HaveOccurred())
		Expect(args).To(ContainSubstring("--log-level=info"))
		owner, err := kube.Run("", "get", "crd", "segmentsources.tally.dev", "-o", `jsonpath={.metadata.annotations.meta\.helm\.sh/release-name}`)
		Expect(err).NotTo(HaveOccurred())
		Expect(owner).To(Equal(release))

		By("upgrading with a changed value")
		_, err = helm("upgrade", release, "charts/tally", "--namespace", installNamespace, kubeconfig,
			"--reuse-values", "--set", "manager.logLevel=debug")
		Expect(err).NotTo(HaveOccurred())
		args, err = kube.Run("", "-n", installNamespace, "get", "deployment", release+"-manager", "-o", "jsonpath={.spec.template.spec.containers[0].args}")
		Expect(err).NotTo(HaveOccurred())
		Expect(args).To(ContainSubstring("--log-level=debug"))

		By("uninstalling: everything goes but the CRD")
		out, err = helm("uninstall", release, "--namespace", installNamespace, kubeconfig)
		Expect(err).NotTo(HaveOccurred())
		Expect(out).To(ContainSubstring("segmentsources.tally.dev"), "Helm reports the CRD as kept")
		_, err = kube.Run("", "-n", installNamespace, "get", "deployment", release+"-manager")
		Expect(err).To(MatchError(ContainSubstring("NotFound")))
		_, err = kube.Run("", "get", "clusterrole", release+"-manager")
		Expect(err).To(MatchError(ContainSubstring("NotFound")))
		_, err = kube.Run("", "get", "crd", "segmentsources.tally.dev")
		Expect(err).NotTo(HaveOccurred(), "the CRD, and every SegmentSource, survives helm uninstall")
	})
})
