package deploy_test

import (
	"encoding/json"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/tallyhq/tally/controllers/manager"
	"github.com/tallyhq/tally/controllers/resources"
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

			// The kubelet must not kill the manager while it still shuts down gracefully.
			shutdown, err := cmd.Flags().GetDuration("graceful-shutdown-timeout")
			Expect(err).NotTo(HaveOccurred())
			pod := deployment(parseObjects(render())).Spec.Template.Spec
			Expect(pod.TerminationGracePeriodSeconds).NotTo(BeNil())
			Expect(time.Duration(*pod.TerminationGracePeriodSeconds)*time.Second).To(BeNumerically(">=", shutdown+5*time.Second),
				"terminationGracePeriodSeconds leaves --graceful-shutdown-timeout (%s) and a margin", shutdown)
		},
		Entry("Helm chart, default values", func() string { return mustHelmTemplate(defaultNamespace) }),
		Entry("Helm chart, non-default values", func() string {
			return mustHelmTemplate(customNamespace, "--values", "test/deploy/testdata/custom-values.yaml")
		}),
		Entry("Helm chart, leader election and metrics off", func() string {
			return mustHelmTemplate(defaultNamespace, "--set", "manager.leaderElection.enabled=false", "--set", "metrics.enabled=false")
		}),
		Entry("Helm chart, no default receiver resources", func() string {
			return mustHelmTemplate(defaultNamespace, "--set", "workload.receiver.resources=null")
		}),
		Entry("kustomize config/default", func() string { return toYAML(kustomizeBuild("config/default")...) }),
	)

	// The manager reads the values as JSON ResourceRequirements; comparing what its flag set makes
	// of them (not the rendered strings) shows the operator gets what values.yaml says.
	DescribeTable("gives workloads the resources of the chart's values",
		func(render func() string, wantReceiver, wantWorker corev1.ResourceRequirements) {
			cmd := manager.NewCommand()
			Expect(cmd.Flags().Parse(managerArgs(render)[1:])).To(Succeed())
			Expect(cmd.Flags().Lookup("receiver-resources").Value.String()).To(MatchJSON(toJSON(wantReceiver)))
			Expect(cmd.Flags().Lookup("worker-resources").Value.String()).To(MatchJSON(toJSON(wantWorker)))
		},
		Entry("default values: the manager's built-in defaults", func() string { return mustHelmTemplate(defaultNamespace) },
			resources.DefaultReceiverResources(), resources.DefaultWorkerResources()),
		Entry("non-default values, merged into the defaults", func() string {
			return mustHelmTemplate(customNamespace, "--values", "test/deploy/testdata/custom-values.yaml")
		},
			corev1.ResourceRequirements{Requests: corev1.ResourceList{
				corev1.ResourceCPU: resource.MustParse("250m"), corev1.ResourceMemory: resource.MustParse("64Mi")}},
			corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("500m"), corev1.ResourceMemory: resource.MustParse("256Mi")},
				Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("2"), corev1.ResourceMemory: resource.MustParse("1Gi")},
			}),
		Entry("resources: null, no default at all", func() string {
			return mustHelmTemplate(defaultNamespace, "--set", "workload.receiver.resources=null")
		}, corev1.ResourceRequirements{}, resources.DefaultWorkerResources()),
	)
})

func toJSON(v any) string {
	GinkgoHelper()
	b, err := json.Marshal(v)
	Expect(err).NotTo(HaveOccurred())
	return string(b)
}
