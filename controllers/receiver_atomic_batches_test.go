package controllers_test

import (
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/types"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/manager"
	"github.com/tallyhq/tally/controllers/resources"
)

var _ = Describe("Receivers with group commit (--receiver-atomic-batches)", Serial, Ordered, func() {
	BeforeAll(func() {
		restartManager(func(o *manager.Options) { o.ReceiverAtomicBatches = true })
	})

	It("runs every receiver, a source's own and a pool's, with --atomic-batches", func() {
		ns := newNamespace()
		createSource(newSource(ns, "acme-web"), true)
		p := createPool(ns, "shared", tallyv1.SegmentSourcePoolSpec{})
		for _, name := range []string{"acme-web-receiver", resources.PoolReceiverName(p)} {
			Eventually(func(g Gomega) []string {
				d := &appsv1.Deployment{}
				g.Expect(k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, d)).To(Succeed())
				return d.Spec.Template.Spec.Containers[0].Args
			}).Should(ContainElement("--atomic-batches"), name)
		}
	})
})
