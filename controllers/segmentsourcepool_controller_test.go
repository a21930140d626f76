package controllers_test

import (
	"encoding/json"
	"errors"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers"
	"github.com/tallyhq/tally/controllers/resources"
	"github.com/tallyhq/tally/workers/pool"
	"github.com/tallyhq/tally/workers/source"
)

// createPool creates a pool and deletes it when the spec ends.
func createPool(ns, name string, spec tallyv1.SegmentSourcePoolSpec) *tallyv1.SegmentSourcePool {
	GinkgoHelper()
	p := &tallyv1.SegmentSourcePool{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: spec}
	Expect(k8s.Create(ctx, p)).To(Succeed())
	DeferCleanup(func() {
		_ = k8s.Delete(ctx, p)
		Eventually(func() bool {
			return notFound(k8s.Get(ctx, client.ObjectKeyFromObject(p), &tallyv1.SegmentSourcePool{}))
		}).Should(BeTrue())
	})
	return p
}

func getPool(key client.ObjectKey) *tallyv1.SegmentSourcePool {
	GinkgoHelper()
	p := &tallyv1.SegmentSourcePool{}
	Expect(k8s.Get(ctx, key, p)).To(Succeed())
	return p
}

// poolReady is "<status>/<reason>" of the pool's Ready condition.
func poolReady(key client.ObjectKey) func() string {
	return func() string {
		p := &tallyv1.SegmentSourcePool{}
		if err := k8s.Get(ctx, key, p); err != nil {
			return err.Error()
		}
		c := meta.FindStatusCondition(p.Status.Conditions, tallyv1.ConditionReady)
		if c == nil {
			return ""
		}
		return string(c.Status) + "/" + c.Reason
	}
}

// readyPool creates a pool and stands in for the kubelet until it is Ready.
func readyPool(ns, name string, spec tallyv1.SegmentSourcePoolSpec) *tallyv1.SegmentSourcePool {
	GinkgoHelper()
	p := createPool(ns, name, spec)
	Eventually(func() error {
		return k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: resources.PoolWorkerName(p)}, &appsv1.Deployment{})
	}).Should(Succeed())
	makeAvailable(ns, resources.PoolReceiverName(p))
	makeAvailable(ns, resources.PoolWorkerName(p))
	Eventually(poolReady(client.ObjectKeyFromObject(p))).Should(Equal("True/" + controllers.ReasonSucceeded))
	return getPool(client.ObjectKeyFromObject(p))
}

// member is a source of namespace ns joining the pool.
func member(ns, name string, p *tallyv1.SegmentSourcePool) *tallyv1.SegmentSource {
	s := newSource(ns, name)
	s.Spec.Pool = &tallyv1.PoolRef{Name: p.Name, Namespace: p.Namespace}
	return s
}

// bucketEntries reads every entry of the pool's bucket, raw.
func bucketEntries(p *tallyv1.SegmentSourcePool) map[string][]byte {
	GinkgoHelper()
	kv, err := testJS.KeyValue(ctx, pool.Ref{Namespace: p.Namespace, Name: p.Name}.Bucket())
	Expect(err).NotTo(HaveOccurred())
	out := map[string][]byte{}
	keys, err := kv.ListKeys(ctx)
	Expect(err).NotTo(HaveOccurred())
	for k := range keys.Keys() {
		e, err := kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // removed since it was listed
		}
		Expect(err).NotTo(HaveOccurred())
		out[k] = e.Value()
	}
	return out
}

// entry decodes one member's entry, nil when absent.
func entry(p *tallyv1.SegmentSourcePool, s *tallyv1.SegmentSource) func() *pool.Member {
	return func() *pool.Member {
		raw, ok := bucketEntries(p)[s.Namespace+"."+s.Name]
		if !ok {
			return nil
		}
		m := &pool.Member{}
		Expect(json.Unmarshal(raw, m)).To(Succeed())
		return m
	}
}

func bucketRevision(p *tallyv1.SegmentSourcePool) uint64 {
	GinkgoHelper()
	kv, err := testJS.KeyValue(ctx, pool.Ref{Namespace: p.Namespace, Name: p.Name}.Bucket())
	Expect(err).NotTo(HaveOccurred())
	st, err := kv.Status(ctx)
	Expect(err).NotTo(HaveOccurred())
	return st.(*jetstream.KeyValueBucketStatus).StreamInfo().State.LastSeq
}

func poolSecret(p *tallyv1.SegmentSourcePool, name string) map[string][]byte {
	GinkgoHelper()
	s := &corev1.Secret{}
	Expect(k8s.Get(ctx, types.NamespacedName{Namespace: p.Namespace, Name: name}, s)).To(Succeed())
	return s.Data
}

func podTemplateJSON(ns, name string) string {
	GinkgoHelper()
	raw, err := json.Marshal(deployment(ns, name).Spec.Template)
	Expect(err).NotTo(HaveOccurred())
	return string(raw)
}

var _ = Describe("SegmentSourcePool", func() {
	var platform string
	BeforeEach(func() { platform = newNamespace() })

	It("accepts an empty spec, defaults it and runs the shared receiver and workers", func() {
		p := createPool(platform, "shared", tallyv1.SegmentSourcePoolSpec{})
		key := client.ObjectKeyFromObject(p)
		got := getPool(key)
		Expect(got.Spec.AllowedNamespaces.From).To(Equal(tallyv1.NamespacesFromSame))
		Expect(got.Spec.Receiver.Replicas).To(Equal(ptr.To(int32(1))))
		Expect(got.Spec.Receiver.Port).To(Equal(int32(8080)))

		Eventually(poolReady(key)).Should(Equal("False/" + controllers.ReasonRollingOut))
		recv := deployment(platform, "shared-receiver")
		Expect(recv.Spec.Template.Spec.Containers[0].Args).To(ContainElements("receiver", "--pool="+platform+"/shared",
			"--shared-secrets-dir="+resources.PoolSharedSecretsMountPath))
		work := deployment(platform, "shared-worker")
		Expect(work.Spec.Template.Spec.Containers[0].Args).To(ContainElements("worker", "--pool="+platform+"/shared",
			"--credentials-dir="+resources.PoolCredentialsMountPath))
		for _, d := range []*appsv1.Deployment{recv, work} {
			c := d.Spec.Template.Spec.Containers[0]
			Expect(*c.SecurityContext.ReadOnlyRootFilesystem).To(BeTrue())
			Expect(*d.Spec.Template.Spec.SecurityContext.RunAsNonRoot).To(BeTrue())
			Expect(metav1.IsControlledBy(d, got)).To(BeTrue())
		}
		Expect(k8s.Get(ctx, types.NamespacedName{Namespace: platform, Name: "shared-receiver"}, &corev1.Service{})).To(Succeed())
		Expect(poolSecret(got, resources.PoolReceiverSecretsName("shared"))).To(BeEmpty())
		Expect(poolSecret(got, resources.PoolWorkerSecretsName("shared"))).To(And(HaveLen(1), HaveKey(resources.PoolDatabaseURLKey)),
			"only the pool's own Postgres login")
		Expect(bucketEntries(got)).To(BeEmpty())

		makeAvailable(platform, "shared-receiver")
		makeAvailable(platform, "shared-worker")
		Eventually(poolReady(key)).Should(Equal("True/" + controllers.ReasonSucceeded))
		got = getPool(key)
		Expect(got.Status.Endpoint).To(Equal("http://shared-receiver." + platform + ".svc:8080"))
		Expect(got.Status.ObservedGeneration).To(Equal(got.Generation))
		Expect(got.Status.Members).To(BeZero())
	})

	It("gives more than one receiver a PodDisruptionBudget and an autoscaled worker an HPA", func() {
		p := createPool(platform, "big", tallyv1.SegmentSourcePoolSpec{
			Receiver: tallyv1.ReceiverSpec{Replicas: ptr.To(int32(3))},
			Worker:   tallyv1.PoolWorkerSpec{Autoscaling: &tallyv1.Autoscaling{MaxReplicas: 4}},
		})
		pdb := &policyv1.PodDisruptionBudget{}
		Eventually(func() error {
			return k8s.Get(ctx, types.NamespacedName{Namespace: platform, Name: "big-receiver"}, pdb)
		}).Should(Succeed())
		Expect(pdb.Spec.Selector.MatchLabels).To(Equal(deployment(platform, "big-receiver").Spec.Selector.MatchLabels))
		hpa := &autoscalingv2.HorizontalPodAutoscaler{}
		Eventually(func() error { return k8s.Get(ctx, types.NamespacedName{Namespace: platform, Name: "big-worker"}, hpa) }).Should(Succeed())
		Expect(hpa.Spec.MaxReplicas).To(Equal(int32(4)))
		Expect(deployment(platform, "big-worker").Spec.Replicas).To(Or(BeNil(), Equal(ptr.To(int32(1)))), "the HPA owns the replicas")
		Expect(*deployment(platform, "big-receiver").Spec.Replicas).To(Equal(int32(3)))

		By("scaling the receivers down to one")
		Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
			cur := getPool(client.ObjectKeyFromObject(p))
			cur.Spec.Receiver.Replicas = ptr.To(int32(1))
			return k8s.Update(ctx, cur)
		})).To(Succeed())
		Eventually(func() bool {
			return notFound(k8s.Get(ctx, types.NamespacedName{Namespace: platform, Name: "big-receiver"}, &policyv1.PodDisruptionBudget{}))
		}).Should(BeTrue())
	})

	It("refuses a selector unless from is Selector, and requires one when it is", func() {
		bad := &tallyv1.SegmentSourcePool{ObjectMeta: metav1.ObjectMeta{Namespace: platform, Name: "bad"},
			Spec: tallyv1.SegmentSourcePoolSpec{AllowedNamespaces: tallyv1.AllowedNamespaces{From: tallyv1.NamespacesFromSelector}}}
		Expect(k8s.Create(ctx, bad)).To(MatchError(ContainSubstring("selector is required")))
		bad.Spec.AllowedNamespaces = tallyv1.AllowedNamespaces{From: tallyv1.NamespacesFromAll, Selector: &metav1.LabelSelector{}}
		Expect(k8s.Create(ctx, bad)).To(MatchError(ContainSubstring("selector is required")))
	})

	It("admits members by allowedNamespaces (Same, All, Selector) and refuses others as Stalled", func() {
		p := readyPool(platform, "shared", tallyv1.SegmentSourcePoolSpec{})
		team := newNamespace()
		local := createSource(member(platform, "local", p), true)
		away := createSource(member(team, "away", p), true)
		Eventually(readyReason(client.ObjectKeyFromObject(local))).Should(Equal("True/" + controllers.ReasonSucceeded))
		Eventually(readyReason(client.ObjectKeyFromObject(away))).Should(Equal("False/" + controllers.ReasonPoolNotAllowed))
		Expect(conditionOf(client.ObjectKeyFromObject(away), tallyv1.ConditionStalled)()).To(Equal("True/" + controllers.ReasonPoolNotAllowed))
		Eventually(func() []string { return eventReasons(team, "away") }).Should(ContainElement(controllers.ReasonPoolNotAllowed))
		Expect(entry(p, away)()).To(BeNil())

		By("from: All")
		setAllowed := func(a tallyv1.AllowedNamespaces) {
			Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
				cur := getPool(client.ObjectKeyFromObject(p))
				cur.Spec.AllowedNamespaces = a
				return k8s.Update(ctx, cur)
			})).To(Succeed())
		}
		setAllowed(tallyv1.AllowedNamespaces{From: tallyv1.NamespacesFromAll})
		Eventually(readyReason(client.ObjectKeyFromObject(away))).Should(Equal("True/" + controllers.ReasonSucceeded))
		Expect(entry(p, away)()).NotTo(BeNil())

		By("from: Selector, the namespace not labelled")
		setAllowed(tallyv1.AllowedNamespaces{From: tallyv1.NamespacesFromSelector,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"tally.dev/pool": "shared"}}})
		Eventually(readyReason(client.ObjectKeyFromObject(away))).Should(Equal("False/" + controllers.ReasonPoolNotAllowed))
		Eventually(entry(p, away)).Should(BeNil(), "a refused member leaves the pool")
		Eventually(readyReason(client.ObjectKeyFromObject(local))).Should(Equal("False/" + controllers.ReasonPoolNotAllowed))

		By("labelling the namespace")
		nsObj := &corev1.Namespace{}
		Expect(k8s.Get(ctx, types.NamespacedName{Name: team}, nsObj)).To(Succeed())
		nsObj.Labels["tally.dev/pool"] = "shared"
		Expect(k8s.Update(ctx, nsObj)).To(Succeed())
		Eventually(readyReason(client.ObjectKeyFromObject(away))).Should(Equal("True/" + controllers.ReasonSucceeded))
		Expect(getSource(client.ObjectKeyFromObject(away)).Status.Endpoint).To(Equal(getPool(client.ObjectKeyFromObject(p)).Status.Endpoint))
	})

	It("reports a missing pool as Stalled PoolNotFound, with an Event", func() {
		s := newSource(platform, "lost")
		s.Spec.Pool = &tallyv1.PoolRef{Name: "nowhere"}
		createSource(s, true)
		key := client.ObjectKeyFromObject(s)
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonPoolNotFound))
		Expect(conditionOf(key, tallyv1.ConditionStalled)()).To(Equal("True/" + controllers.ReasonPoolNotFound))
		Eventually(func() []string { return eventReasons(platform, "lost") }).Should(ContainElement(controllers.ReasonPoolNotFound))

		By("the pool appearing")
		readyPool(platform, "nowhere", tallyv1.SegmentSourcePoolSpec{})
		Eventually(readyReason(key)).Should(Equal("True/" + controllers.ReasonSucceeded))
	})

	It("serves members without Deployments of their own, with key digests in the bucket and never the keys", func() {
		p := readyPool(platform, "shared", tallyv1.SegmentSourcePoolSpec{})
		s := member(platform, "acme-web", p)
		s.Spec.Destination.SharedSecretRef = &tallyv1.SharedSecretRef{Name: "acme-web-segment", Key: "sharedSecret"}
		Expect(k8s.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: "acme-web-segment", Namespace: platform, Labels: sourceSecretLabels},
			StringData: map[string]string{"writeKey": "plaintext-write-key-1", "sharedSecret": "shared-secret-1"},
		})).To(Succeed())
		createSource(s, false)
		key := client.ObjectKeyFromObject(s)
		Eventually(readyReason(key)).Should(Equal("True/" + controllers.ReasonSucceeded))
		Eventually(func() int32 { return getPool(client.ObjectKeyFromObject(p)).Status.Members }).Should(Equal(int32(1)))

		var deps appsv1.DeploymentList
		Expect(k8s.List(ctx, &deps, client.InNamespace(platform))).To(Succeed())
		Expect(deps.Items).To(HaveLen(2), "only the pool's Deployments")
		ok, consumer := streamExists(platform, "acme-web")
		Expect(ok && consumer).To(BeTrue(), "the member keeps its own stream")

		m := entry(p, s)()
		Expect(m).NotTo(BeNil())
		Expect(m.WriteKeyDigests).To(Equal([]string{pool.DigestKey("plaintext-write-key-1")}))
		Expect(m.Source.Tenant).To(Equal(s.Spec.Tenant))
		Expect(m.Source.IgnoredEvents).To(Equal([]string{"Heartbeat"}))
		Expect(m.Source.AccountProperty).To(Equal("accountId"))
		for _, raw := range bucketEntries(p) {
			Expect(string(raw)).NotTo(ContainSubstring("plaintext-write-key-1"))
		}
		recv := poolSecret(p, resources.PoolReceiverSecretsName("shared"))
		Expect(recv).To(HaveKeyWithValue(platform+".acme-web", []byte("shared-secret-1")))
		work := poolSecret(p, resources.PoolWorkerSecretsName("shared"))
		Expect(work).NotTo(HaveKey(platform+".acme-web.database-url"), "no login per member")
		Expect(string(work[platform+".acme-web.database-role"])).To(HavePrefix("tally_t_"), "the tenant's role")
		Expect(string(work[resources.PoolDatabaseURLKey])).To(ContainSubstring("tally_p_"), "the pool's own login")
		memberOf := poolLoginMemberOf(platform + "/shared")
		Expect(memberOf(Default)).To(ConsistOf(string(work[platform+".acme-web.database-role"])), "the pool's login may act as the member's tenant, and no other")
		for _, data := range []map[string][]byte{recv, work} {
			for _, v := range data {
				Expect(string(v)).NotTo(ContainSubstring("plaintext-write-key-1"))
			}
		}

		By("rotating the key")
		receiverTemplate, workerTemplate := podTemplateJSON(platform, "shared-receiver"), podTemplateJSON(platform, "shared-worker")
		sec := &corev1.Secret{}
		Expect(k8s.Get(ctx, types.NamespacedName{Namespace: platform, Name: "acme-web-segment"}, sec)).To(Succeed())
		sec.Data["writeKey"] = []byte("plaintext-write-key-1\nplaintext-write-key-2")
		Expect(k8s.Update(ctx, sec)).To(Succeed())
		Eventually(func() []string {
			if m := entry(p, s)(); m != nil {
				return m.WriteKeyDigests
			}
			return nil
		}).Should(Equal([]string{pool.DigestKey("plaintext-write-key-1"), pool.DigestKey("plaintext-write-key-2")}))

		By("another member joining from the same namespace, for another tenant")
		other := member(platform, "globex-app", p)
		other.Spec.Tenant = "globex-" + platform
		other = createSource(other, true)
		Eventually(readyReason(client.ObjectKeyFromObject(other))).Should(Equal("True/" + controllers.ReasonSucceeded))
		Eventually(func() int32 { return getPool(client.ObjectKeyFromObject(p)).Status.Members }).Should(Equal(int32(2)))
		Expect(podTemplateJSON(platform, "shared-receiver")).To(Equal(receiverTemplate), "no rollout of the pool's receivers")
		Expect(podTemplateJSON(platform, "shared-worker")).To(Equal(workerTemplate), "no rollout of the pool's workers")
		poolMembers := func() []string {
			return dbStrings(`SELECT member FROM tally.pool_members WHERE pool = $1`, platform+"/shared")
		}
		Eventually(poolMembers).Should(ConsistOf(platform+"/acme-web", platform+"/globex-app"))

		By("a member that names a database Secret of its own writes with it, and the pool's login no longer acts for it")
		Expect(k8s.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "globex-app-postgres", Namespace: platform, Labels: sourceSecretLabels},
			StringData: map[string]string{"url": "postgres://own@db/tally"}})).To(Succeed())
		otherKey := client.ObjectKeyFromObject(other)
		updateSource(otherKey, func(s *tallyv1.SegmentSource) {
			s.Spec.Worker.DatabaseSecretRef = &tallyv1.DatabaseSecretRef{Name: "globex-app-postgres"}
		})
		workerSecrets := func() map[string][]byte { return poolSecret(p, resources.PoolWorkerSecretsName("shared")) }
		Eventually(workerSecrets).Should(And(
			HaveKeyWithValue(platform+".globex-app.database-url", []byte("postgres://own@db/tally")),
			Not(HaveKey(platform+".globex-app.database-role"))))
		Eventually(poolMembers).Should(ConsistOf(platform + "/acme-web"))
		Eventually(memberOf).Should(ConsistOf(string(work[platform+".acme-web.database-role"])), "its tenant's role is taken back")

		By("and when it names none again, the pool's login acts for it again")
		updateSource(otherKey, func(s *tallyv1.SegmentSource) { s.Spec.Worker.DatabaseSecretRef = nil })
		Eventually(workerSecrets).Should(And(
			HaveKey(platform+".globex-app.database-role"), Not(HaveKey(platform+".globex-app.database-url"))))
		Eventually(poolMembers).Should(ConsistOf(platform+"/acme-web", platform+"/globex-app"))
		Expect(memberOf(Default)).To(ConsistOf(string(work[platform+".acme-web.database-role"]),
			string(workerSecrets()[platform+".globex-app.database-role"])))

		By("suspending a member")
		updateSource(key, func(s *tallyv1.SegmentSource) { s.Spec.Suspend = true })
		Eventually(func() bool { m := entry(p, s)(); return m != nil && m.Suspended }).Should(BeTrue())
		Eventually(readyReason(key)).Should(Equal("True/" + controllers.ReasonSuspended))

		By("leaving the pool")
		updateSource(key, func(s *tallyv1.SegmentSource) { s.Spec.Pool = nil; s.Spec.Suspend = false })
		Eventually(entry(p, s)).Should(BeNil())
		Eventually(func() map[string][]byte { return poolSecret(p, resources.PoolReceiverSecretsName("shared")) }).ShouldNot(HaveKey(platform + ".acme-web"))
		Eventually(func() map[string][]byte { return poolSecret(p, resources.PoolWorkerSecretsName("shared")) }).ShouldNot(HaveKey(platform + ".acme-web.database-role"))
		Expect(poolSecret(p, resources.PoolWorkerSecretsName("shared"))).To(HaveKey(platform + ".globex-app.database-role"))
		Eventually(memberOf).Should(ConsistOf(string(poolSecret(p, resources.PoolWorkerSecretsName("shared"))[platform+".globex-app.database-role"])),
			"the tenant of the member that left is taken back")
		Eventually(func() error {
			return k8s.Get(ctx, types.NamespacedName{Namespace: platform, Name: resources.ReceiverName(s)}, &appsv1.Deployment{})
		}).Should(Succeed(), "dedicated Deployments again")
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonRollingOut))
		Eventually(func() int32 { return getPool(client.ObjectKeyFromObject(p)).Status.Members }).Should(Equal(int32(1)))

		By("deleting the other member")
		Expect(k8s.Delete(ctx, other)).To(Succeed())
		Eventually(func() bool {
			return notFound(k8s.Get(ctx, client.ObjectKeyFromObject(other), &tallyv1.SegmentSource{}))
		}).Should(BeTrue())
		Expect(entry(p, other)()).To(BeNil())
		Expect(poolSecret(p, resources.PoolWorkerSecretsName("shared"))).NotTo(HaveKey(platform + ".globex-app.database-role"))
		Eventually(func() int32 { return getPool(client.ObjectKeyFromObject(p)).Status.Members }).Should(BeZero())
		Expect(memberOf(Default)).To(BeEmpty())

		By("deleting the pool drops its login")
		Expect(k8s.Delete(ctx, p)).To(Succeed())
		Eventually(func() bool {
			return notFound(k8s.Get(ctx, client.ObjectKeyFromObject(p), &tallyv1.SegmentSourcePool{}))
		}).Should(BeTrue())
		Expect(poolLogins(platform + "/shared")).To(BeEmpty())
	})

	It("gives members the pool's rate limit unless they set their own, and follows a change of it without a rollout", func() {
		p := readyPool(platform, "limited", tallyv1.SegmentSourcePoolSpec{Receiver: tallyv1.ReceiverSpec{RateLimit: &tallyv1.RateLimit{EventsPerSecond: 200}}})
		plain := createSource(member(platform, "plain", p), true)
		own := member(platform, "own", p)
		own.Spec.Receiver.RateLimit = &tallyv1.RateLimit{EventsPerSecond: 5000, Burst: 10000}
		Expect(k8s.Create(ctx, writeKeySecret(platform, own.Spec.WriteKeySecretRef.Name, "key-of-own"))).To(Succeed())
		createSource(own, false)
		limitOf := func(s *tallyv1.SegmentSource) func() *source.RateLimit {
			return func() *source.RateLimit {
				if m := entry(p, s)(); m != nil {
					return m.Source.RateLimit
				}
				return nil
			}
		}
		Eventually(limitOf(plain)).Should(Equal(&source.RateLimit{EventsPerSecond: 200}))
		Eventually(limitOf(own)).Should(Equal(&source.RateLimit{EventsPerSecond: 5000, Burst: 10000}))
		receiverTemplate := podTemplateJSON(platform, "limited-receiver")

		By("changing the pool's limit")
		Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
			latest := getPool(client.ObjectKeyFromObject(p))
			latest.Spec.Receiver.RateLimit = &tallyv1.RateLimit{EventsPerSecond: 300, Burst: 600}
			return k8s.Update(ctx, latest)
		})).To(Succeed())
		Eventually(limitOf(plain)).Should(Equal(&source.RateLimit{EventsPerSecond: 300, Burst: 600}))
		Expect(limitOf(own)()).To(Equal(&source.RateLimit{EventsPerSecond: 5000, Burst: 10000}), "a member's own limit wins")
		Expect(podTemplateJSON(platform, "limited-receiver")).To(Equal(receiverTemplate), "the receivers follow the bucket, no rollout")
	})

	It("takes the Deployments of a dedicated source that moves into a pool", func() {
		p := readyPool(platform, "shared", tallyv1.SegmentSourcePoolSpec{})
		s := createSource(newSource(platform, "mover"), true)
		key := client.ObjectKeyFromObject(s)
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonRollingOut))
		Expect(k8s.Get(ctx, types.NamespacedName{Namespace: platform, Name: resources.WorkerName(s)}, &appsv1.Deployment{})).To(Succeed())

		updateSource(key, func(s *tallyv1.SegmentSource) { s.Spec.Pool = &tallyv1.PoolRef{Name: p.Name} })
		Eventually(readyReason(key)).Should(Equal("True/" + controllers.ReasonSucceeded))
		for _, name := range []string{resources.ReceiverName(s), resources.WorkerName(s)} {
			Expect(notFound(k8s.Get(ctx, types.NamespacedName{Namespace: platform, Name: name}, &appsv1.Deployment{}))).To(BeTrue(), name)
		}
		Expect(notFound(k8s.Get(ctx, types.NamespacedName{Namespace: platform, Name: resources.ReceiverName(s)}, &corev1.Service{}))).To(BeTrue())
		Expect(notFound(k8s.Get(ctx, types.NamespacedName{Namespace: platform, Name: resources.DatabaseSecretCopyName(s)}, &corev1.Secret{}))).To(BeTrue())
		Expect(entry(p, s)()).NotTo(BeNil())
	})

	It("writes nothing when periodic re-checks find the pool and its members unchanged", func() {
		p := readyPool(platform, "steady", tallyv1.SegmentSourcePoolSpec{AllowedNamespaces: tallyv1.AllowedNamespaces{From: tallyv1.NamespacesFromAll}})
		team := newNamespace()
		members := []*tallyv1.SegmentSource{createSource(member(platform, "one", p), true), createSource(member(team, "two", p), true)}
		for _, s := range members {
			Eventually(readyReason(client.ObjectKeyFromObject(s))).Should(Equal("True/" + controllers.ReasonSucceeded))
		}
		Eventually(func() int32 { return getPool(client.ObjectKeyFromObject(p)).Status.Members }).Should(Equal(int32(2)))
		Consistently(poolReady(client.ObjectKeyFromObject(p))).Should(Equal("True/" + controllers.ReasonSucceeded))

		versions := func() map[string]string {
			out := map[string]string{"pool": getPool(client.ObjectKeyFromObject(p)).ResourceVersion}
			for _, s := range members {
				out[s.Name] = getSource(client.ObjectKeyFromObject(s)).ResourceVersion
			}
			for _, name := range []string{resources.PoolReceiverSecretsName("steady"), resources.PoolWorkerSecretsName("steady")} {
				sec := &corev1.Secret{}
				Expect(k8s.Get(ctx, types.NamespacedName{Namespace: platform, Name: name}, sec)).To(Succeed())
				out[name] = sec.ResourceVersion
			}
			for _, name := range []string{"steady-receiver", "steady-worker"} {
				out[name] = deployment(platform, name).ResourceVersion
			}
			return out
		}
		before, revision := versions(), bucketRevision(p)
		applies, statusWrites := counterSum("tally_operator_applies_total"), counterSum("tally_operator_status_writes_total")
		reconciles := counterSum("controller_runtime_reconcile_total")
		// Two periodic passes of the pool and both members at least.
		Eventually(func() float64 { return counterSum("controller_runtime_reconcile_total") }).Should(BeNumerically(">=", reconciles+6))
		Expect(versions()).To(Equal(before))
		Expect(bucketRevision(p)).To(Equal(revision), "no bucket write")
		Expect(counterSum("tally_operator_applies_total")).To(Equal(applies))
		Expect(counterSum("tally_operator_status_writes_total")).To(Equal(statusWrites))
	})
})

// poolLoginMemberOf reads, from Postgres, the tenant roles the pool's login is a member of; the
// login must exist and be in the tenants' group besides.
func poolLoginMemberOf(pool string) func(g Gomega) []string {
	return func(g Gomega) []string {
		g.Expect(poolLogins(pool)).To(HaveLen(1), "the pool's login")
		roles := dbStrings(`SELECT g.rolname::text FROM tally.pool_logins l JOIN pg_roles u ON u.rolname = l.role_name
			JOIN pg_auth_members m ON m.member = u.oid JOIN pg_roles g ON g.oid = m.roleid WHERE l.pool = $1`, pool)
		g.Expect(roles).To(ContainElement("tally_tenant"), "the tenants' group")
		return slices.DeleteFunc(roles, func(r string) bool { return r == "tally_tenant" })
	}
}

// poolLogins lists the logins Postgres has for the pool.
func poolLogins(pool string) []string {
	GinkgoHelper()
	return dbStrings(`SELECT l.role_name FROM tally.pool_logins l JOIN pg_roles r ON r.rolname = l.role_name WHERE l.pool = $1`, pool)
}

func dbStrings(sql string, args ...any) []string {
	GinkgoHelper()
	db, err := pgx.Connect(ctx, databaseURL)
	Expect(err).NotTo(HaveOccurred())
	defer db.Close(ctx)
	rows, err := db.Query(ctx, sql, args...)
	Expect(err).NotTo(HaveOccurred())
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	Expect(err).NotTo(HaveOccurred())
	return out
}
