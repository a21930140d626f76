package deploy_test

import (
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/controllers/manager"
)

// managerArgs returns the manager container's args of the only Deployment in a rendered install.
func managerArgs(render func() string) []string {
	GinkgoHelper()
	d := deployment(parseObjects(render()))
	Expect(d.Spec.Template.Spec.Containers).To(HaveLen(1))
	return d.Spec.Template.Spec.Containers[0].Args
}

var _ = Describe("the manager's command line in both installs", func() {
	DescribeTable("is accepted by `tally manager`'s own flag set (names and values)",
		func(render func() string) {
			args := managerArgs(render)
			Expect(args).NotTo(BeEmpty())
			Expect(args[0]).To(Equal("manager"), "the image's entrypoint is /tally; the first argument picks the subcommand")

			cmd := manager.NewCommand()
			Expect(cmd.Flags().Parse(args[1:])).To(Succeed())
			Expect(cmd.Flags().Args()).To(BeEmpty(), "no positional arguments")
			for _, name := range []string{"nats-url", "database-secret", "metrics-bind-address", "health-probe-bind-address"} {
				Expect(cmd.Flags().Changed(name)).To(BeTrue(), "--%s is set explicitly", name)
			}
		},
		Entry("Helm chart, default values", func() string { return mustHelmTemplate(defaultNamespace) }),
		Entry("Helm chart, non-default values", func() string {
			return mustHelmTemplate(customNamespace, "--values", "test/deploy/testdata/custom-values.yaml")
		}),
		Entry("Helm chart, leader election and metrics off", func() string {
			return mustHelmTemplate(defaultNamespace, "--set", "manager.leaderElection.enabled=false", "--set", "metrics.enabled=false")
		}),
		Entry("kustomize config/default", func() string { return toYAML(kustomizeBuild("config/default")...) }),
	)
})
