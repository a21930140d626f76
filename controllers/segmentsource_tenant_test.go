package controllers_test

import (
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers"
	"github.com/tallyhq/tally/controllers/manager"
	"github.com/tallyhq/tally/controllers/resources"
)

// createTenant creates a Tenant (cluster-scoped, so it outlives the spec's namespace unless
// deleted) and deletes it when the spec ends.
func createTenant(name string, namespaces ...string) *tallyv1.Tenant {
	GinkgoHelper()
	t := &tallyv1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: tallyv1.TenantSpec{Namespaces: namespaces}}
	Expect(k8s.Create(ctx, t)).To(Succeed())
	deleteTenantAtEnd(name)
	return t
}

func deleteTenantAtEnd(name string) {
	DeferCleanup(func() {
		_ = client.IgnoreNotFound(k8s.Delete(ctx, &tallyv1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: name}}))
	})
}

func otherNamespace(ns string) string {
	GinkgoHelper()
	other := ns + "-other"
	Expect(k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: other}})).To(Succeed())
	return other
}

// expectRefused checks that a source is Stalled with reason (kstatus Failed, with an Event) and
// returns the Stalled message.
func expectRefused(key client.ObjectKey, reason string) string {
	GinkgoHelper()
	Eventually(readyReason(key)).Should(Equal("False/" + reason))
	got := getSource(key)
	stalled := condition(got, tallyv1.ConditionStalled)
	Expect(stalled).NotTo(BeNil())
	Expect(stalled.Status).To(Equal(metav1.ConditionTrue))
	Expect(stalled.Reason).To(Equal(reason))
	Expect(kstatusOf(got)).To(Equal(status.FailedStatus))
	expectStatusCompliant(got)
	Eventually(func() []string { return eventReasons(key.Namespace, key.Name) }).Should(ContainElement(reason))
	return stalled.Message
}

// expectNothingCreated checks that the operator made nothing for a source: no stream, no
// Deployment, Service or ConfigMap, and no Secret but the user's write key Secret.
func expectNothingCreated(s *tallyv1.SegmentSource) {
	GinkgoHelper()
	ok, _ := streamExists(s.Namespace, s.Name)
	Expect(ok).To(BeFalse(), "no stream")
	managed := client.MatchingLabels{resources.LabelManagedBy: resources.ManagedBy}
	var deployments appsv1.DeploymentList
	Expect(k8s.List(ctx, &deployments, client.InNamespace(s.Namespace))).To(Succeed())
	Expect(deployments.Items).To(BeEmpty(), "no Deployment")
	var services corev1.ServiceList
	Expect(k8s.List(ctx, &services, client.InNamespace(s.Namespace))).To(Succeed())
	Expect(services.Items).To(BeEmpty(), "no Service")
	var configMaps corev1.ConfigMapList
	Expect(k8s.List(ctx, &configMaps, client.InNamespace(s.Namespace), managed)).To(Succeed())
	Expect(configMaps.Items).To(BeEmpty(), "no ConfigMap")
	var secrets corev1.SecretList
	Expect(k8s.List(ctx, &secrets, client.InNamespace(s.Namespace))).To(Succeed())
	names := []string{}
	for _, sec := range secrets.Items {
		names = append(names, sec.Name)
	}
	Expect(names).To(ConsistOf(s.Spec.WriteKeySecretRef.Name), "no Secret copies")
}

var _ = Describe("Tenants, first claim (--require-tenant=false, the suite's manager)", func() {
	var ns string
	BeforeEach(func() { ns = newNamespace() })

	It("records the first claim as a Tenant, so a squatter stays refused after the owner's source is deleted and re-created", func() {
		tenant := "claim-" + ns
		deleteTenantAtEnd(tenant)
		owner := newSource(ns, "first")
		owner.Spec.Tenant = tenant
		createSource(owner, true)
		Eventually(readyReason(client.ObjectKeyFromObject(owner))).Should(Equal("False/" + controllers.ReasonRollingOut))

		By("the operator recorded the claim as a Tenant of its own")
		claim := &tallyv1.Tenant{}
		Eventually(func() error { return k8s.Get(ctx, client.ObjectKey{Name: tenant}, claim) }).Should(Succeed())
		Expect(claim.Spec.Namespaces).To(ConsistOf(ns))
		Expect(claim.Labels).To(HaveKeyWithValue(tallyv1.LabelTenantClaim, tallyv1.TenantClaimAutomatic))

		By("a squatter in another namespace waits for the tenant")
		other := otherNamespace(ns)
		squatter := newSource(other, "squatter")
		squatter.Spec.Tenant = tenant
		createSource(squatter, true)
		key := client.ObjectKeyFromObject(squatter)
		msg := expectRefused(key, controllers.ReasonTenantClaimed)
		told := strings.NewReplacer(other, "", `"`+tenant+`"`, "").Replace(msg)
		Expect(told).NotTo(ContainSubstring(ns), "the owner's namespace is not told")
		Expect(msg).NotTo(ContainSubstring("first"), "nor the owner's source")

		By("deleting the owner's only source does not release the tenant")
		Expect(k8s.Delete(ctx, owner)).To(Succeed())
		Eventually(func() bool {
			return notFound(k8s.Get(ctx, client.ObjectKeyFromObject(owner), &tallyv1.SegmentSource{}))
		}).Should(BeTrue())
		Consistently(readyReason(key)).Should(Equal("False/" + controllers.ReasonTenantClaimed))
		expectNothingCreated(squatter)

		By("re-creating the owner's source: the owner proceeds, the squatter is still refused")
		// Another name: envtest runs no garbage collector, so the first source's Deployments are
		// still there, and a source never adopts what another one owns.
		again := newSource(ns, "first-again")
		again.Spec.Tenant = tenant
		createSource(again, true)
		Eventually(readyReason(client.ObjectKeyFromObject(again))).Should(Equal("False/" + controllers.ReasonRollingOut))
		Consistently(readyReason(key)).Should(Equal("False/" + controllers.ReasonTenantClaimed))
		expectNothingCreated(squatter)
	})

	It("follows a Tenant a cluster administrator wrote: refused until it lists the namespace", func() {
		tenant := "bound-" + ns
		createTenant(tenant, "somewhere-else")
		s := newSource(ns, "bound")
		s.Spec.Tenant = tenant
		createSource(s, true)
		key := client.ObjectKeyFromObject(s)
		msg := expectRefused(key, controllers.ReasonTenantNotAllowed)
		Expect(msg).NotTo(ContainSubstring("somewhere-else"))
		expectNothingCreated(s)

		By("adding the namespace to the Tenant lets the source proceed")
		t := &tallyv1.Tenant{}
		Expect(k8s.Get(ctx, client.ObjectKey{Name: tenant}, t)).To(Succeed())
		t.Spec.Namespaces = append(t.Spec.Namespaces, ns)
		Expect(k8s.Update(ctx, t)).To(Succeed())
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonRollingOut))
		Eventually(func() bool { ok, c := streamExists(ns, "bound"); return ok && c }).Should(BeTrue())
	})
})

var _ = Describe("Tenants bound by the platform team (--require-tenant)", Serial, Ordered, func() {
	BeforeAll(func() {
		restartManager(func(o *manager.Options) { o.RequireTenant = true })
	})

	var ns string
	BeforeEach(func() { ns = newNamespace() })

	It("stalls a source whose tenant has no Tenant listing its namespace, creating nothing, until one does", func() {
		tenant := "bound-" + ns
		s := newSource(ns, "acme-web")
		s.Spec.Tenant = tenant
		createSource(s, true)
		key := client.ObjectKeyFromObject(s)
		msg := expectRefused(key, controllers.ReasonTenantNotAllowed)
		Expect(msg).To(ContainSubstring(`no Tenant "` + tenant + `" lists namespace ` + ns))
		Consistently(readyReason(key)).Should(Equal("False/" + controllers.ReasonTenantNotAllowed))
		expectNothingCreated(s)
		Expect(notFound(k8s.Get(ctx, client.ObjectKey{Name: tenant}, &tallyv1.Tenant{}))).To(BeTrue(),
			"with --require-tenant the operator creates no Tenant")

		By("a Tenant listing the namespace lets it proceed, without touching the source")
		createTenant(tenant, ns)
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonRollingOut))
		Eventually(func() bool { ok, c := streamExists(ns, "acme-web"); return ok && c }).Should(BeTrue())
		deployment(ns, resources.ReceiverName(s))
		deployment(ns, resources.WorkerName(s))
		makeAllAvailable(s)
		Eventually(readyReason(key)).Should(Equal("True/" + controllers.ReasonSucceeded))
		got := getSource(key)
		Expect(condition(got, tallyv1.ConditionStalled)).To(BeNil())
		expectStatusCompliant(got)
	})

	It("refuses a squatter with the message it would get for an unused tenant, naming no other namespace", func() {
		tenant := "owned-" + ns
		createTenant(tenant, ns)
		owner := newSource(ns, "owner")
		owner.Spec.Tenant = tenant
		createSource(owner, true)
		Eventually(readyReason(client.ObjectKeyFromObject(owner))).Should(Equal("False/" + controllers.ReasonRollingOut))

		other := otherNamespace(ns)
		squatter := newSource(other, "squatter")
		squatter.Spec.Tenant = tenant
		createSource(squatter, true)
		msg := expectRefused(client.ObjectKeyFromObject(squatter), controllers.ReasonTenantNotAllowed)
		told := strings.NewReplacer(other, "", `"`+tenant+`"`, "").Replace(msg)
		Expect(told).NotTo(ContainSubstring(ns), "the owner's namespace is not told")
		Expect(msg).NotTo(ContainSubstring("owner"), "nor the owner's source")
		expectNothingCreated(squatter)

		By("the message reads the same as for a tenant no Tenant names: it does not even tell the tenant is in use")
		unused := newSource(other, "unused")
		unused.Spec.Tenant = "unused-" + ns
		createSource(unused, true)
		unusedMsg := expectRefused(client.ObjectKeyFromObject(unused), controllers.ReasonTenantNotAllowed)
		Expect(strings.ReplaceAll(unusedMsg, "unused-"+ns, "T")).To(Equal(strings.ReplaceAll(msg, tenant, "T")))

		By("a Tenant the operator recorded for a first claim binds too")
		claimed := "auto-" + ns
		t := createTenant(claimed, ns)
		t.Labels = map[string]string{tallyv1.LabelTenantClaim: tallyv1.TenantClaimAutomatic}
		Expect(k8s.Update(ctx, t)).To(Succeed())
		late := newSource(other, "late")
		late.Spec.Tenant = claimed
		createSource(late, true)
		expectRefused(client.ObjectKeyFromObject(late), controllers.ReasonTenantNotAllowed)
	})

	It("stalls the sources of a namespace removed from its Tenant", func() {
		tenant := "revoked-" + ns
		createTenant(tenant, ns)
		s := newSource(ns, "revoked")
		s.Spec.Tenant = tenant
		createSource(s, true)
		key := client.ObjectKeyFromObject(s)
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonRollingOut))
		workloads := func() []string {
			var names []string
			for _, name := range []string{"revoked-receiver", "revoked-worker"} {
				if k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &appsv1.Deployment{}) == nil {
					names = append(names, name)
				}
			}
			return names
		}
		Eventually(workloads).Should(HaveLen(2))
		Expect(k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: "revoked-database"}, &corev1.Secret{})).To(Succeed())

		Expect(k8s.Delete(ctx, &tallyv1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: tenant}})).To(Succeed())
		expectRefused(key, controllers.ReasonTenantNotAllowed)
		Eventually(workloads).Should(BeEmpty(), "a revoked source stops writing the tenant's rows at once")
		Eventually(func() bool {
			return notFound(k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: "revoked-database"}, &corev1.Secret{}))
		}).Should(BeTrue(), "and the namespace no longer holds the tenant's Postgres login")

		By("coming back when the Tenant lists the namespace again")
		createTenant(tenant, ns)
		Eventually(workloads).Should(HaveLen(2))
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonRollingOut))
	})
})
