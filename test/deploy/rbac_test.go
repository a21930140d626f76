package deploy_test

import (
	"context"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/manager"
	"github.com/tallyhq/tally/controllers/resources"
	"github.com/tallyhq/tally/workers/natsserver"
)

// splitTenantRule splits the generated rules into those on namespaced kinds and the one on
// tenants (cluster-scoped), as the chart does. The rule on namespaces (cluster-scoped, read for
// pools' allowedNamespaces) is neither: namespacesRule returns it.
func splitTenantRule(rules []rbacv1.PolicyRule) (namespaced []rbacv1.PolicyRule, tenants rbacv1.PolicyRule) {
	GinkgoHelper()
	found := 0
	for _, r := range rules {
		if slices.Contains(r.Resources, "namespaces") {
			continue
		}
		if slices.Contains(r.Resources, "tenants") {
			Expect(r.Resources).To(Equal([]string{"tenants"}), "the tenants rule stands alone")
			tenants = r
			found++
			continue
		}
		namespaced = append(namespaced, r)
	}
	Expect(found).To(Equal(1), "config/rbac/role.yaml has one rule on tenants")
	return namespaced, tenants
}

// namespacesRule is the generated rule on namespaces, which the chart puts into the ClusterRole
// that reads Tenants.
func namespacesRule(rules []rbacv1.PolicyRule) rbacv1.PolicyRule {
	GinkgoHelper()
	for _, r := range rules {
		if slices.Contains(r.Resources, "namespaces") {
			Expect(r.Resources).To(Equal([]string{"namespaces"}), "the namespaces rule stands alone")
			Expect(r.Verbs).To(Equal([]string{"get", "list", "watch"}), "namespaces are only read")
			return r
		}
	}
	Fail("config/rbac/role.yaml has no rule on namespaces")
	return rbacv1.PolicyRule{}
}

// tenantVerbs lists the verbs on tally.dev tenants of every rule of every Role and ClusterRole
// rendered.
func tenantVerbs(objects []*unstructured.Unstructured) []string {
	GinkgoHelper()
	var verbs []string
	for _, o := range objects {
		var rules []rbacv1.PolicyRule
		switch o.GetKind() {
		case "ClusterRole":
			rules = convert[rbacv1.ClusterRole](o).Rules
		case "Role":
			rules = convert[rbacv1.Role](o).Rules
		default:
			continue
		}
		for _, r := range rules {
			if (slices.Contains(r.APIGroups, "tally.dev") || slices.Contains(r.APIGroups, "*")) &&
				(slices.Contains(r.Resources, "tenants") || slices.Contains(r.Resources, "*")) {
				verbs = append(verbs, r.Verbs...)
			}
		}
	}
	return verbs
}

func networkPolicy(objects []*unstructured.Unstructured, name string) *networkingv1.NetworkPolicy {
	GinkgoHelper()
	return convert[networkingv1.NetworkPolicy](find(objects, "NetworkPolicy", name))
}

func tcp(port int) networkingv1.NetworkPolicyPort {
	p, proto := intstr.FromInt32(int32(port)), corev1.ProtocolTCP
	return networkingv1.NetworkPolicyPort{Port: &p, Protocol: &proto}
}

func udp(port int) networkingv1.NetworkPolicyPort {
	p, proto := intstr.FromInt32(int32(port)), corev1.ProtocolUDP
	return networkingv1.NetworkPolicyPort{Port: &p, Protocol: &proto}
}

var dnsRule = networkingv1.NetworkPolicyEgressRule{Ports: []networkingv1.NetworkPolicyPort{udp(53), tcp(53)}}

var _ = Describe("the manager's RBAC in the chart", func() {
	It("is a ClusterRole of the generated rules without watchNamespace, and no Role but leader election", func() {
		rendered := parseObjects(mustHelmTemplate(defaultNamespace))
		namespaced, _ := splitTenantRule(generatedRole().Rules)
		Expect(convert[rbacv1.ClusterRole](find(rendered, "ClusterRole", "tally-manager")).Rules).To(Equal(namespaced))
		for _, o := range rendered {
			if o.GetKind() == "Role" {
				Expect(o.GetName()).To(Equal("tally-leader-election"))
			}
		}
	})

	It("is Roles in the watched namespace with watchNamespace, and no ClusterRole reaches a namespaced kind", func() {
		rendered := parseObjects(mustHelmTemplate(defaultNamespace, "--set", "watchNamespace="+watchedNamespace))
		namespaced, _ := splitTenantRule(generatedRole().Rules)
		subjects := []rbacv1.Subject{{Kind: "ServiceAccount", Name: "tally-manager", Namespace: defaultNamespace}}

		By("the generated rules on namespaced kinds, in a Role of the watched namespace")
		role := convert[rbacv1.Role](find(rendered, "Role", "tally-manager"))
		Expect(role.Namespace).To(Equal(watchedNamespace))
		Expect(role.Rules).To(Equal(namespaced))
		binding := convert[rbacv1.RoleBinding](find(rendered, "RoleBinding", "tally-manager"))
		Expect(binding.Namespace).To(Equal(watchedNamespace))
		Expect(binding.RoleRef).To(Equal(rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name}))
		Expect(binding.Subjects).To(Equal(subjects))

		By("in its own namespace, get on its own Secrets by name, nothing else")
		secrets := convert[rbacv1.Role](find(rendered, "Role", "tally-manager-secrets"))
		Expect(secrets.Namespace).To(Equal(defaultNamespace))
		Expect(secrets.Rules).To(Equal([]rbacv1.PolicyRule{{
			APIGroups: []string{""}, Resources: []string{"secrets"}, ResourceNames: []string{"tally-database"}, Verbs: []string{"get"},
		}}))
		Expect(convert[rbacv1.RoleBinding](find(rendered, "RoleBinding", "tally-manager-secrets")).Subjects).To(Equal(subjects))
		withCreds := parseObjects(mustHelmTemplate(defaultNamespace, "--set", "watchNamespace="+watchedNamespace, "--set", "nats.credsSecret=tally-nats"))
		Expect(convert[rbacv1.Role](find(withCreds, "Role", "tally-manager-secrets")).Rules[0].ResourceNames).To(
			Equal([]string{"tally-database", "tally-nats"}))

		By("the only ClusterRole reads Tenants and Namespaces, which are cluster-scoped")
		var clusterRoles []string
		for _, o := range rendered {
			if o.GetKind() != "ClusterRole" {
				continue
			}
			clusterRoles = append(clusterRoles, o.GetName())
			for _, r := range convert[rbacv1.ClusterRole](o).Rules {
				Expect(r.Resources).To(Or(Equal([]string{"tenants"}), Equal([]string{"namespaces"})), o.GetName())
				if r.Resources[0] == "namespaces" {
					Expect(r).To(Equal(namespacesRule(generatedRole().Rules)))
				} else {
					Expect(r.APIGroups).To(Equal([]string{"tally.dev"}), o.GetName())
				}
			}
		}
		Expect(clusterRoles).To(ConsistOf("tally-manager-tenants"))
		Expect(convert[rbacv1.ClusterRoleBinding](find(rendered, "ClusterRoleBinding", "tally-manager-tenants")).Subjects).To(Equal(subjects))
	})

	DescribeTable("lets the operator read Tenants, create them only for first claims, and never change one",
		func(flags []string, wantVerbs []string, wantArg string) {
			rendered := parseObjects(mustHelmTemplate(defaultNamespace, flags...))
			Expect(tenantVerbs(rendered)).To(ConsistOf(wantVerbs), "no rendered role grants more on tenants (tenant teams get none)")
			Expect(deployment(rendered).Spec.Template.Spec.Containers[0].Args).To(ContainElement(wantArg))
		},
		Entry("tenants.required (default)", nil, []string{"get", "list", "watch"}, "--require-tenant=true"),
		Entry("tenants.required=false", []string{"--set", "tenants.required=false"}, []string{"get", "list", "watch", "create"}, "--require-tenant=false"),
		Entry("with watchNamespace", []string{"--set", "watchNamespace=" + watchedNamespace}, []string{"get", "list", "watch"}, "--require-tenant=true"),
	)

	It("is admitted by the API server in both modes (server-side dry-run)", func() {
		for _, flags := range [][]string{nil, {"--set", "watchNamespace=" + watchedNamespace, "--set", "tenants.required=false"}} {
			rendered := parseObjects(mustHelmTemplate(defaultNamespace, flags...))
			var rbac []*unstructured.Unstructured
			for _, o := range rendered {
				switch o.GetKind() {
				case "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding", "ServiceAccount", "NetworkPolicy":
					rbac = append(rbac, o)
				}
			}
			_, err := kube.DryRun(toYAML(rbac...))
			Expect(err).NotTo(HaveOccurred(), "%v", flags)
		}
	})
})

var _ = Describe("the chart's NetworkPolicies", func() {
	managerPods := map[string]string{
		"app.kubernetes.io/name": "tally", "app.kubernetes.io/instance": "tally", "app.kubernetes.io/component": "manager",
	}

	It("let the manager reach only DNS, the Kubernetes API, NATS and Postgres (default values)", func() {
		rendered := parseObjects(mustHelmTemplate(defaultNamespace))
		var names []string
		for _, o := range rendered {
			if o.GetKind() == "NetworkPolicy" {
				names = append(names, o.GetName())
			}
		}
		Expect(names).To(ConsistOf("tally-manager"), "without watchNamespace the chart knows only the manager's namespace")
		np := networkPolicy(rendered, "tally-manager")
		Expect(np.Namespace).To(Equal(defaultNamespace))
		Expect(np.Spec.PodSelector.MatchLabels).To(Equal(managerPods))
		Expect(np.Spec.PodSelector.MatchLabels).To(Equal(deployment(rendered).Spec.Selector.MatchLabels), "it selects the manager's pods")
		Expect(np.Spec.PolicyTypes).To(Equal([]networkingv1.PolicyType{networkingv1.PolicyTypeEgress}))
		Expect(np.Spec.Ingress).To(BeEmpty())
		Expect(np.Spec.Egress).To(Equal([]networkingv1.NetworkPolicyEgressRule{
			dnsRule,
			{Ports: []networkingv1.NetworkPolicyPort{tcp(443), tcp(6443)}},
			{Ports: []networkingv1.NetworkPolicyPort{tcp(4222)}},
			{Ports: []networkingv1.NetworkPolicyPort{tcp(5432)}},
		}))
	})

	It("with watchNamespace, limit receivers to NATS and workers to NATS and Postgres, leaving the receivers reachable", func() {
		rendered := parseObjects(mustHelmTemplate(defaultNamespace, "--set", "watchNamespace="+watchedNamespace))
		receivers := networkPolicy(rendered, "tally-receivers")
		Expect(receivers.Namespace).To(Equal(watchedNamespace))
		Expect(receivers.Spec.PodSelector.MatchLabels).To(Equal(map[string]string{
			"app.kubernetes.io/name": "tally", "app.kubernetes.io/managed-by": "tally-operator", "app.kubernetes.io/component": "receiver",
		}))
		Expect(receivers.Spec.PolicyTypes).To(Equal([]networkingv1.PolicyType{networkingv1.PolicyTypeEgress}),
			"Egress only: Segment clients reach the receivers from anywhere")
		Expect(receivers.Spec.Ingress).To(BeEmpty())
		Expect(receivers.Spec.Egress).To(Equal([]networkingv1.NetworkPolicyEgressRule{
			dnsRule, {Ports: []networkingv1.NetworkPolicyPort{tcp(4222)}},
		}))
		workers := networkPolicy(rendered, "tally-workers")
		Expect(workers.Namespace).To(Equal(watchedNamespace))
		Expect(workers.Spec.PodSelector.MatchLabels).To(HaveKeyWithValue("app.kubernetes.io/component", "worker"))
		Expect(workers.Spec.PolicyTypes).To(Equal([]networkingv1.PolicyType{networkingv1.PolicyTypeEgress}))
		Expect(workers.Spec.Egress).To(Equal([]networkingv1.NetworkPolicyEgressRule{
			dnsRule, {Ports: []networkingv1.NetworkPolicyPort{tcp(4222)}}, {Ports: []networkingv1.NetworkPolicyPort{tcp(5432)}},
			{Ports: []networkingv1.NetworkPolicyPort{tcp(443)}}, // spec.insights: Segment's Tracking API
		}))

		By("selecting the pods the operator creates, by the labels it gives them")
		src := &tallyv1.SegmentSource{ObjectMeta: metav1.ObjectMeta{Name: "acme-web", Namespace: watchedNamespace}}
		for np, component := range map[*networkingv1.NetworkPolicy]string{receivers: resources.ComponentReceiver, workers: resources.ComponentWorker} {
			selector, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
			Expect(err).NotTo(HaveOccurred())
			Expect(selector.Matches(labels.Set(resources.Labels(src, component)))).To(BeTrue(), component)
		}
	})

	It("narrow destinations when told where NATS, Postgres and the API are, and admit only Tally's pods to NATS", func() {
		rendered := parseObjects(mustHelmTemplate(customNamespace, "--values", "test/deploy/testdata/custom-values.yaml"))
		nats := []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "messaging"}}}}
		postgres := []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.20.0.0/16"}}}
		manager := networkPolicy(rendered, "acme-tally-manager")
		Expect(manager.Spec.Egress).To(Equal([]networkingv1.NetworkPolicyEgressRule{
			dnsRule,
			{Ports: []networkingv1.NetworkPolicyPort{tcp(6443)}, To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.1/32"}}}},
			{Ports: []networkingv1.NetworkPolicyPort{tcp(4222)}, To: nats},
			{Ports: []networkingv1.NetworkPolicyPort{tcp(5432)}, To: postgres},
		}))
		Expect(networkPolicy(rendered, "acme-tally-workers").Spec.Egress).To(Equal([]networkingv1.NetworkPolicyEgressRule{
			dnsRule, {Ports: []networkingv1.NetworkPolicyPort{tcp(4222)}, To: nats}, {Ports: []networkingv1.NetworkPolicyPort{tcp(5432)}, To: postgres},
		}), "no insights egress when networkPolicy.insights.ports is empty")

		By("an ingress policy on the NATS pods: clients only from the manager and the watched namespace's receivers and workers")
		ingress := networkPolicy(rendered, "acme-tally-nats-clients")
		Expect(ingress.Namespace).To(Equal(natsNamespace))
		natsPods := metav1.LabelSelector{MatchLabels: map[string]string{"app.kubernetes.io/name": "nats"}}
		Expect(ingress.Spec.PodSelector).To(Equal(natsPods))
		Expect(ingress.Spec.PolicyTypes).To(Equal([]networkingv1.PolicyType{networkingv1.PolicyTypeIngress}))
		watched := &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": watchedNamespace}}
		workload := func(component string) *metav1.LabelSelector {
			return &metav1.LabelSelector{MatchLabels: map[string]string{
				"app.kubernetes.io/name": "tally", "app.kubernetes.io/managed-by": "tally-operator", "app.kubernetes.io/component": component,
			}}
		}
		Expect(ingress.Spec.Ingress).To(Equal([]networkingv1.NetworkPolicyIngressRule{
			{
				From: []networkingv1.NetworkPolicyPeer{
					{
						NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": customNamespace}},
						PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{
							"app.kubernetes.io/name": "tally", "app.kubernetes.io/instance": "tally", "app.kubernetes.io/component": "manager",
						}},
					},
					{NamespaceSelector: watched, PodSelector: workload("receiver")},
					{NamespaceSelector: watched, PodSelector: workload("worker")},
				},
				Ports: []networkingv1.NetworkPolicyPort{tcp(4222)},
			},
			{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &natsPods}}},
		}))
		Expect(kindsOf(rendered)).NotTo(ContainElement("NetworkPolicy/acme-tally-postgres-clients"), "no Postgres namespace given")
	})

	It("admit only the manager and the workers, from any namespace, to an in-cluster Postgres", func() {
		rendered := parseObjects(mustHelmTemplate(defaultNamespace,
			"--set", "networkPolicy.postgres.ingress.namespace="+natsNamespace,
			"--set", "networkPolicy.postgres.ingress.podSelector.matchLabels.app=postgres"))
		ingress := networkPolicy(rendered, "tally-postgres-clients")
		Expect(ingress.Namespace).To(Equal(natsNamespace))
		Expect(ingress.Spec.Ingress).To(HaveLen(2))
		from := ingress.Spec.Ingress[0].From
		Expect(from).To(HaveLen(2), "the manager and the workers; receivers never talk to Postgres")
		Expect(from[0].PodSelector.MatchLabels).To(Equal(managerPods))
		Expect(from[1].NamespaceSelector).To(Equal(&metav1.LabelSelector{}), "without watchNamespace: workers of any namespace")
		Expect(from[1].PodSelector.MatchLabels).To(HaveKeyWithValue("app.kubernetes.io/component", "worker"))
		Expect(ingress.Spec.Ingress[0].Ports).To(Equal([]networkingv1.NetworkPolicyPort{tcp(5432)}))
	})

	It("are left out when networkPolicy.enabled is false", func() {
		rendered := parseObjects(mustHelmTemplate(customNamespace, "--values", "test/deploy/testdata/custom-values.yaml",
			"--set", "networkPolicy.enabled=false"))
		Expect(kindsOf(rendered)).NotTo(ContainElement(HavePrefix("NetworkPolicy/")))
	})
})

// The operator run in-process (the wiring of `tally manager`) as the chart's ServiceAccount, bound
// to nothing but the RBAC the chart renders for watchNamespace: proof that the narrowed rules are
// enough, that Tenants are still watched cluster-wide, and that the rules stop at the namespace.
var _ = Describe("the operator on the chart's watchNamespace RBAC", Ordered, func() {
	const (
		release = "narrow"
		sa      = "narrow-tally-manager"
	)
	var (
		c   client.Client // the test's admin client
		own client.Client // the manager's identity
	)

	BeforeAll(func() {
		ctx := context.Background()
		By("installing the CRDs and the RBAC the chart renders for watchNamespace, for real")
		kube.MustApply(readFile("config/crd/bases/tally.dev_segmentsources.yaml") + "\n---\n" + readFile("config/crd/bases/tally.dev_tenants.yaml") +
			"\n---\n" + readFile("config/crd/bases/tally.dev_segmentsourcepools.yaml"))
		_, err := kube.Run("", "wait", "--for=condition=Established", "crd/segmentsources.tally.dev", "crd/tenants.tally.dev",
			"crd/segmentsourcepools.tally.dev", "--timeout=60s")
		Expect(err).NotTo(HaveOccurred())
		out, err := helm("template", release, "charts/tally", "--namespace", defaultNamespace, "--set", "watchNamespace="+watchedNamespace,
			"--set", "database.secretName=narrow-database", "--set", "crds.enabled=false")
		Expect(err).NotTo(HaveOccurred())
		var rbac []*unstructured.Unstructured
		for _, o := range parseObjects(out) {
			switch o.GetKind() {
			case "ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding":
				rbac = append(rbac, o)
			}
		}
		kube.MustApply(toYAML(rbac...))

		admin, err := env.AddUser(envtest.User{Name: "narrow-admin", Groups: []string{"system:masters"}}, nil)
		Expect(err).NotTo(HaveOccurred())
		c, err = client.New(admin.Config(), client.Options{Scheme: manager.Scheme()})
		Expect(err).NotTo(HaveOccurred())
		// What the API server authenticates a ServiceAccount token as.
		user, err := env.AddUser(envtest.User{Name: "system:serviceaccount:" + defaultNamespace + ":" + sa,
			Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + defaultNamespace}}, nil)
		Expect(err).NotTo(HaveOccurred())
		own, err = client.New(user.Config(), client.Options{Scheme: manager.Scheme()})
		Expect(err).NotTo(HaveOccurred())

		Expect(c.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "narrow-database", Namespace: defaultNamespace},
			StringData: map[string]string{"url": "postgres://db.invalid/tally"}})).To(Succeed())

		ns, err := natsserver.Start(natsserver.Options{StoreDir: GinkgoT().TempDir()})
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(ns.Shutdown)
		nc, err := nats.Connect(ns.ClientURL(), nats.MaxReconnects(-1))
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(nc.Close)

		opts := &manager.Options{
			NATSURL:            ns.ClientURL(),
			NATSCredsSecretKey: "nats.creds",
			WorkloadImage:      "registry.example/tally:narrow",
			DatabaseSecret:     "narrow-database",
			DatabaseSecretKey:  "url",
			ManagerNamespace:   defaultNamespace,
			WatchNamespace:     watchedNamespace,
			RequireTenant:      true,
			RequeueInterval:    2 * time.Second,
			NATSTimeout:        2 * time.Second,
			MetricsAddr:        "0",
			ProbeAddr:          "0",
			GracefulShutdown:   5 * time.Second,
			EventRecorderName:  "tally-operator",
			ReceiverResources:  resources.DefaultReceiverResources(),
			WorkerResources:    resources.DefaultWorkerResources(),
		}
		mgr, err := manager.NewManager(user.Config(), opts)
		Expect(err).NotTo(HaveOccurred())
		Expect(manager.Setup(mgr, opts, manager.NewNATS(nc, ns.ClientURL()))).To(Succeed())
		mctx, cancel := context.WithCancel(ctrl.LoggerInto(context.Background(), GinkgoLogr))
		done := make(chan struct{})
		go func() {
			defer GinkgoRecover()
			defer close(done)
			Expect(mgr.Start(mctx)).To(Succeed())
		}()
		DeferCleanup(func() {
			cancel()
			Eventually(done, 30*time.Second).Should(BeClosed())
		})
	})

	readyReason := func(key client.ObjectKey) func() string {
		return func() string {
			s := &tallyv1.SegmentSource{}
			if err := c.Get(context.Background(), key, s); err != nil {
				return err.Error()
			}
			if r := meta.FindStatusCondition(s.Status.Conditions, tallyv1.ConditionReady); r != nil {
				return string(r.Status) + "/" + r.Reason
			}
			return ""
		}
	}

	It("refuses a source without a Tenant, then reconciles it once a Tenant lists the namespace", func(ctx SpecContext) {
		Expect(c.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: "narrow-segment", Namespace: watchedNamespace, Labels: map[string]string{resources.LabelSourceSecret: "true"}},
			StringData: map[string]string{"writeKey": "narrow-key"},
		})).To(Succeed())
		src := &tallyv1.SegmentSource{
			ObjectMeta: metav1.ObjectMeta{Name: "narrow", Namespace: watchedNamespace},
			Spec:       tallyv1.SegmentSourceSpec{Tenant: "narrow-acme", WriteKeySecretRef: tallyv1.SecretKeyRef{Name: "narrow-segment"}},
		}
		Expect(c.Create(ctx, src)).To(Succeed())
		key := client.ObjectKeyFromObject(src)
		Eventually(readyReason(key), 30*time.Second, 200*time.Millisecond).Should(Equal("False/TenantNotAllowed"))
		Expect(apierrors.IsNotFound(c.Get(ctx, client.ObjectKey{Namespace: watchedNamespace, Name: "narrow-receiver"}, &appsv1.Deployment{}))).To(BeTrue())

		Expect(c.Create(ctx, &tallyv1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: "narrow-acme"},
			Spec: tallyv1.TenantSpec{Namespaces: []string{watchedNamespace}}})).To(Succeed())
		Eventually(readyReason(key), 30*time.Second, 200*time.Millisecond).Should(Equal("False/RollingOut"))
		for _, name := range []string{"narrow-receiver", "narrow-worker"} {
			Expect(c.Get(ctx, client.ObjectKey{Namespace: watchedNamespace, Name: name}, &appsv1.Deployment{})).To(Succeed(), name)
		}
		Expect(c.Get(ctx, client.ObjectKey{Namespace: watchedNamespace, Name: "narrow-receiver"}, &corev1.Service{})).To(Succeed())
		Expect(c.Get(ctx, client.ObjectKey{Namespace: watchedNamespace, Name: "narrow-config"}, &corev1.ConfigMap{})).To(Succeed())
	})

	It("leaves sources of other namespaces alone", func(ctx SpecContext) {
		src := &tallyv1.SegmentSource{
			ObjectMeta: metav1.ObjectMeta{Name: "elsewhere", Namespace: customNamespace},
			Spec:       tallyv1.SegmentSourceSpec{Tenant: "narrow-acme", WriteKeySecretRef: tallyv1.SecretKeyRef{Name: "narrow-segment"}},
		}
		Expect(c.Create(ctx, src)).To(Succeed())
		Consistently(readyReason(client.ObjectKeyFromObject(src)), 3*time.Second, 200*time.Millisecond).Should(BeEmpty())
	})

	It("cannot read Secrets beyond the watched namespace and its own, nor change Tenants", func(ctx SpecContext) {
		Expect(c.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "not-for-tally", Namespace: defaultNamespace},
			StringData: map[string]string{"k": "v"}})).To(Succeed())
		Expect(own.Get(ctx, client.ObjectKey{Namespace: defaultNamespace, Name: "narrow-database"}, &corev1.Secret{})).To(Succeed())
		Expect(apierrors.IsForbidden(own.Get(ctx, client.ObjectKey{Namespace: defaultNamespace, Name: "not-for-tally"}, &corev1.Secret{}))).To(BeTrue())
		Expect(apierrors.IsForbidden(own.List(ctx, &corev1.SecretList{}, client.InNamespace(customNamespace)))).To(BeTrue())
		Expect(apierrors.IsForbidden(own.List(ctx, &corev1.SecretList{}))).To(BeTrue(), "no cluster-wide Secret list")
		Expect(own.List(ctx, &corev1.SecretList{}, client.InNamespace(watchedNamespace))).To(Succeed())
		Expect(own.List(ctx, &tallyv1.TenantList{})).To(Succeed())
		t := &tallyv1.Tenant{}
		Expect(own.Get(ctx, client.ObjectKey{Name: "narrow-acme"}, t)).To(Succeed())
		t.Spec.Namespaces = append(t.Spec.Namespaces, customNamespace)
		Expect(apierrors.IsForbidden(own.Update(ctx, t))).To(BeTrue(), "the operator cannot widen a Tenant")
		Expect(apierrors.IsForbidden(own.Create(ctx, &tallyv1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: "narrow-new"}}))).To(BeTrue(),
			"with tenants.required the operator creates no Tenant")
	})
})
