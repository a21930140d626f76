package controllers_test

import (
	"context"
	"os/exec"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers"
	"github.com/tallyhq/tally/controllers/resources"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
)

var _ = Describe("SegmentSource", func() {
	var ns string
	BeforeEach(func() { ns = newNamespace() })

	Describe("a new source", func() {
		var (
			s     *tallyv1.SegmentSource
			key   client.ObjectKey
			owner metav1.OwnerReference
		)
		BeforeEach(func() {
			s = newSource(ns, "acme-web")
			created := createSource(s, true)
			key = client.ObjectKeyFromObject(s)

			By("reading InProgress before the operator has looked at it (observedGeneration defaults to -1)")
			Expect(created.Status.ObservedGeneration).To(Equal(int64(-1)))
			Expect(kstatusOf(created)).To(Equal(status.InProgressStatus))
			Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonRollingOut))
			owner = metav1.OwnerReference{APIVersion: "tally.dev/v1alpha1", Kind: "SegmentSource", Name: "acme-web",
				UID: getSource(key).UID, Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}
		})

		It("is rolling out with a finalizer, an endpoint, its stream and kstatus-compliant conditions", func() {
			got := getSource(key)
			Expect(got.Status.ObservedGeneration).To(Equal(got.Generation))
			Expect(got.Finalizers).To(ContainElement(controllers.Finalizer))
			Expect(got.Status.Endpoint).To(Equal("http://acme-web-receiver." + ns + ".svc:8080"))
			Expect(got.Status.Stream).To(Equal("TALLY_" + ns + "_acme-web"))
			Expect(condition(got, tallyv1.ConditionStreamReady).Status).To(Equal(metav1.ConditionTrue))
			Expect(condition(got, tallyv1.ConditionReceiving).Status).To(Equal(metav1.ConditionFalse))
			Expect(condition(got, tallyv1.ConditionReconciling)).To(BeNil())
			Expect(condition(got, tallyv1.ConditionStalled)).To(BeNil())
			Expect(kstatusOf(got)).To(Equal(status.InProgressStatus))
			expectStatusCompliant(got)
		})

		It("gets a ConfigMap of its settings without its write keys", func() {
			cm := &corev1.ConfigMap{}
			Expect(k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: "acme-web-config"}, cm)).To(Succeed())
			Expect(cm.OwnerReferences).To(ConsistOf(owner))
			Expect(cm.Labels).To(HaveKeyWithValue("app.kubernetes.io/managed-by", "tally-operator"))
			cfg, err := source.DecodeConfig([]byte(cm.Data[source.ConfigFileName]))
			Expect(err).NotTo(HaveOccurred())
			Expect(cfg.Tenant).To(Equal(ns))
			Expect(cfg.IgnoredEvents).To(Equal([]string{"Heartbeat"}))
			Expect(cm.Data[source.ConfigFileName]).NotTo(ContainSubstring("key-one"), "write keys never go in the ConfigMap")
		})

		It("gets a hardened receiver Deployment and its Service", func() {
			recv := deployment(ns, "acme-web-receiver")
			Expect(recv.OwnerReferences).To(ConsistOf(owner))
			Expect(recv.Labels).To(Equal(map[string]string{
				"app.kubernetes.io/name": "tally", "app.kubernetes.io/instance": "acme-web",
				"app.kubernetes.io/component": "receiver", "app.kubernetes.io/managed-by": "tally-operator",
				"app.kubernetes.io/part-of": "tally",
			}))
			Expect(*recv.Spec.Replicas).To(Equal(int32(1)))
			Expect(recv.Spec.Strategy.RollingUpdate.MaxUnavailable.IntValue()).To(Equal(0))
			pod := recv.Spec.Template.Spec
			Expect(*pod.AutomountServiceAccountToken).To(BeFalse())
			Expect(*pod.SecurityContext.RunAsNonRoot).To(BeTrue())
			Expect(pod.SecurityContext.SeccompProfile.Type).To(Equal(corev1.SeccompProfileTypeRuntimeDefault))
			c := pod.Containers[0]
			Expect(c.Image).To(Equal(workloadImage))
			Expect(c.Command).To(Equal([]string{"/tally"}))
			Expect(c.Args).To(Equal([]string{"receiver", "--listen=:8080", "--nats-url=" + natsURL,
				"--source-config=/etc/tally/source/source.json", "--write-keys-file=/etc/tally/write-keys/writeKey",
				"--shutdown-delay=5s"}))
			Expect(pod.TerminationGracePeriodSeconds).To(HaveValue(BeNumerically(">", 10)),
				"time for the shutdown delay and the requests in flight")
			Expect(*c.SecurityContext.ReadOnlyRootFilesystem).To(BeTrue())
			Expect(*c.SecurityContext.AllowPrivilegeEscalation).To(BeFalse())
			Expect(c.SecurityContext.Capabilities.Drop).To(ConsistOf(corev1.Capability("ALL")))
			Expect(c.LivenessProbe.HTTPGet.Path).To(Equal("/healthz"))
			Expect(c.ReadinessProbe.HTTPGet.Path).To(Equal("/readyz"))
			Expect(c.VolumeMounts).To(ContainElements(
				corev1.VolumeMount{Name: "config", MountPath: "/etc/tally/source", ReadOnly: true},
				corev1.VolumeMount{Name: "write-keys", MountPath: "/etc/tally/write-keys", ReadOnly: true},
				corev1.VolumeMount{Name: "tmp", MountPath: "/tmp"}))
			Expect(recv.Spec.Template.Annotations).To(HaveKey(resources.AnnotationConfigHash))
			Expect(recv.Spec.Template.Annotations).To(HaveKey(resources.AnnotationWriteKeyHash))

			svc := &corev1.Service{}
			Expect(k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: "acme-web-receiver"}, svc)).To(Succeed())
			Expect(svc.OwnerReferences).To(ConsistOf(owner))
			Expect(svc.Spec.Ports[0].Port).To(Equal(int32(8080)))
			Expect(svc.Spec.Selector).To(Equal(recv.Spec.Selector.MatchLabels))

			By("creating no PDB and no HPA for a single, fixed receiver")
			Expect(notFound(k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: "acme-web-receiver"}, &policyv1.PodDisruptionBudget{}))).To(BeTrue())
			Expect(notFound(k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: "acme-web-receiver"}, &autoscalingv2.HorizontalPodAutoscaler{}))).To(BeTrue())
		})

		It("gets a worker Deployment with the database URL of its tenant's own Postgres login", func() {
			worker := deployment(ns, "acme-web-worker")
			Expect(worker.OwnerReferences).To(ConsistOf(owner))
			wc := worker.Spec.Template.Spec.Containers[0]
			Expect(wc.Args).To(Equal([]string{"worker", "--nats-url=" + natsURL,
				"--source-config=/etc/tally/source/source.json", "--batch-size=2000", "--metrics-listen=:9090"}))
			Expect(wc.Env).To(ConsistOf(corev1.EnvVar{Name: "TALLY_DATABASE_URL", ValueFrom: &corev1.EnvVarSource{
				SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "acme-web-database"}, Key: "url"}}}))
			Expect(wc.LivenessProbe.HTTPGet.Port.String()).To(Equal("metrics"))
			dbCopy := &corev1.Secret{}
			Expect(k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: "acme-web-database"}, dbCopy)).To(Succeed())
			Expect(dbCopy.OwnerReferences).To(ConsistOf(owner))
			tenantURL := string(dbCopy.Data["url"])
			Expect(tenantURL).To(HavePrefix("postgres://tally_t_"))
			Expect(tenantURL).NotTo(Equal(databaseURL))

			By("the login reaches its tenant's rows and no other's")
			admin, err := pgx.Connect(ctx, databaseURL)
			Expect(err).NotTo(HaveOccurred())
			defer admin.Close(ctx)
			_, err = admin.Exec(ctx, `INSERT INTO tally.users (tenant, user_id, created_at, updated_at) VALUES ($1, 'u-own', now(), now()), ('someone-else', 'u-other', now(), now())`, ns)
			Expect(err).NotTo(HaveOccurred())
			conn, err := pgx.Connect(ctx, tenantURL)
			Expect(err).NotTo(HaveOccurred())
			defer conn.Close(ctx)
			rows, err := conn.Query(ctx, `SELECT tenant || '/' || user_id FROM tally.users`)
			Expect(err).NotTo(HaveOccurred())
			seen, err := pgx.CollectRows(rows, pgx.RowTo[string])
			Expect(err).NotTo(HaveOccurred())
			Expect(seen).To(ConsistOf(ns + "/u-own"))
		})

		It("gets its stream and the workers' consumer in NATS", func() {
			streamOK, consumerOK := streamExists(ns, "acme-web")
			Expect(streamOK).To(BeTrue())
			Expect(consumerOK).To(BeTrue())
		})

		It("turns Ready only once both Deployments are available, which `kubectl wait` sees", func() {
			wait := exec.Command(kubectlBin, "--kubeconfig", kubeconfig, "-n", ns, "wait",
				"--for=condition=Ready", "segmentsource/acme-web", "--timeout=60s")
			var out strings.Builder
			wait.Stdout, wait.Stderr = &out, &out
			Expect(wait.Start()).To(Succeed())
			Consistently(readyReason(key)).Should(Equal("False/"+controllers.ReasonRollingOut), "nothing is available yet")
			makeAllAvailable(s)
			Eventually(readyReason(key)).Should(Equal("True/" + controllers.ReasonSucceeded))
			Expect(wait.Wait()).To(Succeed(), out.String())
			Expect(out.String()).To(ContainSubstring("condition met"))
			got := getSource(key)
			Expect(kstatusOf(got)).To(Equal(status.CurrentStatus))
			expectStatusCompliant(got)
			Expect(eventReasons(ns, "acme-web")).To(ContainElement(controllers.ReasonSucceeded))

			get := exec.Command(kubectlBin, "--kubeconfig", kubeconfig, "-n", ns, "get", "segmentsources", "-o", "wide")
			table, err := get.CombinedOutput()
			Expect(err).NotTo(HaveOccurred(), string(table))
			AddReportEntry("kubectl get segmentsources -o wide", string(table))
			Expect(string(table)).To(ContainSubstring("acme-web"))
		})
	})

	It("gives a partitioned source a consumer per partition and keeps them when the count goes down", func() {
		s := newSource(ns, "parts")
		s.Spec.Stream.Partitions = 4
		s = createSource(s, true)
		key := client.ObjectKeyFromObject(s)
		settings := func() *source.Config {
			cm := &corev1.ConfigMap{}
			Expect(k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: "parts-config"}, cm)).To(Succeed())
			cfg, err := source.DecodeConfig([]byte(cm.Data[source.ConfigFileName]))
			Expect(err).NotTo(HaveOccurred())
			return cfg
		}
		consumers := func() int {
			st, err := stream.Inspect(ctx, testJS, stream.Source{Namespace: ns, Name: "parts"})
			if err != nil {
				return -1
			}
			return st.Partitions
		}
		Eventually(consumers).Should(Equal(4))
		Eventually(func() int { return settings().Partitions }).Should(Equal(4))
		Expect(settings().ConsumedPartitions()).To(Equal(4))

		By("lowering the count: receivers route to 2, workers still consume all 4")
		updateSource(key, func(s *tallyv1.SegmentSource) { s.Spec.Stream.Partitions = 2 })
		Eventually(func() int { return settings().Partitions }).Should(Equal(2))
		Eventually(func() int32 { return getSource(key).Status.ConsumerPartitions }).Should(Equal(int32(4)))
		Eventually(func() int { return settings().ConsumedPartitions() }).Should(Equal(4))
		Expect(consumers()).To(Equal(4))

		By("a count outside the powers of two is refused by the API server")
		// Read again on a conflict with the operator's status write: only the validation counts.
		Eventually(func() error {
			c := getSource(key)
			c.Spec.Stream.Partitions = 3
			return k8s.Update(ctx, c)
		}).Should(MatchError(ContainSubstring("spec.stream.partitions")))
	})

	It("rolls receivers and workers out when settings change, and reports the new generation", func() {
		s := createSource(newSource(ns, "settings"), true)
		key := client.ObjectKeyFromObject(s)
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonRollingOut))
		makeAllAvailable(s)
		Eventually(readyReason(key)).Should(Equal("True/" + controllers.ReasonSucceeded))
		recvHash := deployment(ns, "settings-receiver").Spec.Template.Annotations[resources.AnnotationConfigHash]
		workerHash := deployment(ns, "settings-worker").Spec.Template.Annotations[resources.AnnotationConfigHash]

		got := updateSource(key, func(s *tallyv1.SegmentSource) {
			s.Spec.IgnoredEvents = []string{"Heartbeat", "Ping"}
			s.Spec.AccountProperty = "orgId"
			s.Spec.Receiver.RateLimit = &tallyv1.RateLimit{EventsPerSecond: 500}
		})
		Expect(kstatusOf(got)).To(Equal(status.InProgressStatus), "a new generation is InProgress until observed")

		Eventually(func() string {
			return deployment(ns, "settings-receiver").Spec.Template.Annotations[resources.AnnotationConfigHash]
		}).ShouldNot(Equal(recvHash))
		Eventually(func() string {
			return deployment(ns, "settings-worker").Spec.Template.Annotations[resources.AnnotationConfigHash]
		}).ShouldNot(Equal(workerHash))
		cm := &corev1.ConfigMap{}
		Expect(k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: "settings-config"}, cm)).To(Succeed())
		cfg, err := source.DecodeConfig([]byte(cm.Data[source.ConfigFileName]))
		Expect(err).NotTo(HaveOccurred())
		Expect(cfg.IgnoredEvents).To(Equal([]string{"Heartbeat", "Ping"}))
		Expect(cfg.AccountProperty).To(Equal("orgId"))
		Expect(cfg.RateLimit).To(Equal(&source.RateLimit{EventsPerSecond: 500}))

		By("reporting the rollout as not Ready until the new pods are available")
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonRollingOut))
		got = getSource(key)
		Expect(got.Status.ObservedGeneration).To(Equal(int64(2)))
		expectStatusCompliant(got)
		makeAllAvailable(s)
		Eventually(readyReason(key)).Should(Equal("True/" + controllers.ReasonSucceeded))
		got = getSource(key)
		Expect(kstatusOf(got)).To(Equal(status.CurrentStatus))
		expectStatusCompliant(got)
	})

	It("adds a PDB for several receivers and leaves replicas to the HPA when autoscaling", func() {
		s := newSource(ns, "scaled")
		s.Spec.Receiver.Replicas = ptr.To(int32(3))
		createSource(s, true)
		key := client.ObjectKeyFromObject(s)
		pdbKey := types.NamespacedName{Namespace: ns, Name: "scaled-receiver"}
		pdb := &policyv1.PodDisruptionBudget{}
		Eventually(func() error { return k8s.Get(ctx, pdbKey, pdb) }).Should(Succeed())
		Expect(pdb.Spec.MaxUnavailable.IntValue()).To(Equal(1))
		Expect(*deployment(ns, "scaled-receiver").Spec.Replicas).To(Equal(int32(3)))

		updateSource(key, func(s *tallyv1.SegmentSource) {
			s.Spec.Receiver.Autoscaling = &tallyv1.Autoscaling{MinReplicas: 2, MaxReplicas: 6, TargetCPUUtilizationPercentage: 60}
		})
		hpa := &autoscalingv2.HorizontalPodAutoscaler{}
		Eventually(func() error { return k8s.Get(ctx, pdbKey, hpa) }).Should(Succeed())
		Expect(*hpa.Spec.MinReplicas).To(Equal(int32(2)))
		Expect(hpa.Spec.MaxReplicas).To(Equal(int32(6)))
		Expect(hpa.Spec.ScaleTargetRef.Name).To(Equal("scaled-receiver"))
		Eventually(func() bool { return ownsReplicas(deployment(ns, "scaled-receiver")) }).Should(BeFalse(),
			"the operator must not own spec.replicas while an HPA does")

		By("removing the HPA again when autoscaling is unset")
		updateSource(key, func(s *tallyv1.SegmentSource) {
			s.Spec.Receiver.Autoscaling = nil
			s.Spec.Receiver.Replicas = ptr.To(int32(1))
		})
		Eventually(func() bool { return notFound(k8s.Get(ctx, pdbKey, &autoscalingv2.HorizontalPodAutoscaler{})) }).Should(BeTrue())
		Eventually(func() bool { return notFound(k8s.Get(ctx, pdbKey, &policyv1.PodDisruptionBudget{})) }).Should(BeTrue())
		Expect(*deployment(ns, "scaled-receiver").Spec.Replicas).To(Equal(int32(1)))
	})

	It("scales both Deployments to zero when suspended and keeps the stream", func() {
		s := createSource(newSource(ns, "paused"), true)
		key := client.ObjectKeyFromObject(s)
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonRollingOut))
		updateSource(key, func(s *tallyv1.SegmentSource) { s.Spec.Suspend = true })
		Eventually(func() int32 { return *deployment(ns, "paused-receiver").Spec.Replicas }).Should(BeZero())
		Eventually(func() int32 { return *deployment(ns, "paused-worker").Spec.Replicas }).Should(BeZero())
		makeAllAvailable(s)
		Eventually(readyReason(key)).Should(Equal("True/" + controllers.ReasonSuspended))
		streamOK, consumerOK := streamExists(ns, "paused")
		Expect(streamOK && consumerOK).To(BeTrue())
		got := getSource(key)
		Expect(kstatusOf(got)).To(Equal(status.CurrentStatus))
		expectStatusCompliant(got)
	})

	It("removes the stream and consumer on deletion, or keeps them with deletionPolicy Retain", func() {
		s := createSource(newSource(ns, "gone"), true)
		r := newSource(ns, "kept")
		r.Spec.Stream.DeletionPolicy = tallyv1.DeletionPolicyRetain
		createSource(r, true)
		Eventually(func() bool { ok, c := streamExists(ns, "gone"); return ok && c }).Should(BeTrue())
		Eventually(func() bool { ok, c := streamExists(ns, "kept"); return ok && c }).Should(BeTrue())

		Expect(k8s.Delete(ctx, s)).To(Succeed())
		Expect(k8s.Delete(ctx, r)).To(Succeed())
		Eventually(func() bool { return notFound(k8s.Get(ctx, client.ObjectKeyFromObject(s), &tallyv1.SegmentSource{})) }).Should(BeTrue())
		Eventually(func() bool { return notFound(k8s.Get(ctx, client.ObjectKeyFromObject(r), &tallyv1.SegmentSource{})) }).Should(BeTrue())
		ok, _ := streamExists(ns, "gone")
		Expect(ok).To(BeFalse(), "stream of a deleted source")
		_, err := testJS.Stream(ctx, stream.Source{Namespace: ns, Name: "gone"}.DeadLetterStreamName())
		Expect(err).To(HaveOccurred(), "dead-letter stream of a deleted source")
		ok, c := streamExists(ns, "kept")
		Expect(ok && c).To(BeTrue(), "stream of a deleted source with deletionPolicy Retain")
		Expect(testJS.DeleteStream(ctx, "TALLY_"+ns+"_kept")).To(Succeed())
	})

	It("reports a missing Secret or key as Ready=False with an Event, and recovers when it appears", func() {
		s := createSource(newSource(ns, "nokey"), false)
		key := client.ObjectKeyFromObject(s)
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonSecretNotFound))
		got := getSource(key)
		Expect(condition(got, tallyv1.ConditionReady).Message).To(ContainSubstring(`"nokey-segment" not found`))
		Expect(condition(got, tallyv1.ConditionReconciling).Status).To(Equal(metav1.ConditionTrue))
		Expect(got.Status.ObservedGeneration).To(Equal(int64(-1)), "a generation not yet applied is not observed")
		Expect(kstatusOf(got)).To(Equal(status.InProgressStatus))
		expectStatusCompliant(got)
		Eventually(func() []string { return eventReasons(ns, "nokey") }).Should(ContainElement(controllers.ReasonSecretNotFound))

		By("naming the missing key when the Secret exists without it")
		wrong := writeKeySecret(ns, "nokey-segment", "k")
		wrong.Data = map[string][]byte{"other": []byte("k")}
		Expect(k8s.Create(ctx, wrong)).To(Succeed())
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonSecretKeyNotFound))

		By("recovering through the Secret watch once the key is there")
		wrong.Data = map[string][]byte{"writeKey": []byte("key-one")}
		Expect(k8s.Update(ctx, wrong)).To(Succeed())
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonRollingOut))
		makeAllAvailable(s)
		Eventually(readyReason(key)).Should(Equal("True/" + controllers.ReasonSucceeded))
		got = getSource(key)
		Expect(condition(got, tallyv1.ConditionReconciling)).To(BeNil())
		expectStatusCompliant(got)
		Expect(kstatusOf(got)).To(Equal(status.CurrentStatus))
	})

	It("gives workers the source's own database Secret when it names one, watching it like the write key", func() {
		s := createSource(newSource(ns, "owndb"), true)
		key := client.ObjectKeyFromObject(s)
		copyKey := types.NamespacedName{Namespace: ns, Name: "owndb-database"}
		Eventually(func() error { return k8s.Get(ctx, copyKey, &corev1.Secret{}) }).Should(Succeed(),
			"a copy of the manager's database Secret while the source names none")

		updateSource(key, func(s *tallyv1.SegmentSource) {
			s.Spec.Worker.DatabaseSecretRef = &tallyv1.DatabaseSecretRef{Name: "owndb-postgres"}
		})
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonSecretNotFound))
		Expect(condition(getSource(key), tallyv1.ConditionReady).Message).To(ContainSubstring(`database Secret "owndb-postgres" not found`))

		Expect(k8s.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "owndb-postgres", Namespace: ns, Labels: sourceSecretLabels},
			StringData: map[string]string{"url": "postgres://own@db/tally"}})).To(Succeed())
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonRollingOut))
		env := deployment(ns, "owndb-worker").Spec.Template.Spec.Containers[0].Env
		Expect(env[0].ValueFrom.SecretKeyRef.Name).To(Equal("owndb-postgres"))
		Expect(env[0].ValueFrom.SecretKeyRef.Key).To(Equal("url"))
		Eventually(func() bool { return notFound(k8s.Get(ctx, copyKey, &corev1.Secret{})) }).Should(BeTrue(),
			"the unused copy of the manager's database Secret is removed")
	})

	It("gives pods the manager's default resources unless the source sets its own", func() {
		s := newSource(ns, "sized")
		ownWorker := corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1"), corev1.ResourceMemory: resource.MustParse("1Gi")},
		}
		s.Spec.Worker.Resources = ownWorker
		createSource(s, true)
		key := client.ObjectKeyFromObject(s)
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonRollingOut))

		containerResources := func(name string) func() corev1.ResourceRequirements {
			return func() corev1.ResourceRequirements {
				return deployment(ns, name).Spec.Template.Spec.Containers[0].Resources
			}
		}
		Expect(containerResources("sized-receiver")()).To(EqualSemantically(resources.DefaultReceiverResources()), "the manager's default")
		Expect(containerResources("sized-worker")()).To(EqualSemantically(ownWorker), "the source's own, not merged with the default")

		By("replacing the default once the source sets receiver resources")
		ownReceiver := corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")}}
		updateSource(key, func(s *tallyv1.SegmentSource) { s.Spec.Receiver.Resources = ownReceiver })
		Eventually(containerResources("sized-receiver")).Should(EqualSemantically(ownReceiver))
	})

	It("rolls the receivers out when the write key is rotated in the Secret", func() {
		s := createSource(newSource(ns, "rotate"), true)
		Eventually(func() error {
			return k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: "rotate-worker"}, &appsv1.Deployment{})
		}).Should(Succeed())
		before := deployment(ns, "rotate-receiver").Spec.Template.Annotations[resources.AnnotationWriteKeyHash]
		workerBefore := deployment(ns, "rotate-worker").Spec.Template.Annotations
		secret := &corev1.Secret{}
		Expect(k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: "rotate-segment"}, secret)).To(Succeed())
		secret.Data["writeKey"] = []byte("key-one\nkey-two\n")
		Expect(k8s.Update(ctx, secret)).To(Succeed())
		Eventually(func() string {
			return deployment(ns, "rotate-receiver").Spec.Template.Annotations[resources.AnnotationWriteKeyHash]
		}).ShouldNot(Equal(before))
		Expect(deployment(ns, "rotate-worker").Spec.Template.Annotations).To(Equal(workerBefore), "workers never see write keys")
		Eventually(func() string { return getSource(client.ObjectKeyFromObject(s)).Status.WriteKeySecretVersion }).Should(Equal(secret.ResourceVersion))
	})

	It("mounts the destination's shared secret into the receivers, waits for it, and rolls them out on a rotation", func() {
		s := newSource(ns, "signed")
		s.Spec.Destination.SharedSecretRef = &tallyv1.SharedSecretRef{Name: "signed-webhook"}
		createSource(s, true)
		key := client.ObjectKeyFromObject(s)
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonSecretNotFound))
		Expect(getSource(key).Status.Conditions).To(ContainElement(And(
			HaveField("Type", tallyv1.ConditionReady), HaveField("Message", ContainSubstring(`shared secret Secret "signed-webhook" not found`)))))

		secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "signed-webhook", Namespace: ns, Labels: sourceSecretLabels},
			Data: map[string][]byte{"sharedSecret": []byte("old-secret\n")}}
		Expect(k8s.Create(ctx, secret)).To(Succeed())
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonRollingOut))
		recv := deployment(ns, "signed-receiver")
		c := recv.Spec.Template.Spec.Containers[0]
		Expect(c.Args).To(ContainElement("--shared-secrets-file=/etc/tally/shared-secrets/sharedSecret"))
		Expect(c.VolumeMounts).To(ContainElement(corev1.VolumeMount{Name: "shared-secrets", MountPath: "/etc/tally/shared-secrets", ReadOnly: true}))
		Expect(recv.Spec.Template.Spec.Volumes).To(ContainElement(HaveField("Secret.SecretName", "signed-webhook")))
		before := recv.Spec.Template.Annotations[resources.AnnotationSharedSecretHash]
		Expect(before).NotTo(BeEmpty())

		secret.Data["sharedSecret"] = []byte("old-secret\nnew-secret\n")
		Expect(k8s.Update(ctx, secret)).To(Succeed())
		Eventually(func() string {
			return deployment(ns, "signed-receiver").Spec.Template.Annotations[resources.AnnotationSharedSecretHash]
		}).ShouldNot(Equal(before))
		Expect(deployment(ns, "signed-worker").Spec.Template.Spec.Volumes).NotTo(ContainElement(HaveField("Name", "shared-secrets")),
			"workers never see the shared secret")
	})

	It("reports the tenant's unnamed accounts, read through the worker package", func() {
		s := createSource(newSource(ns, "unnamed"), true)
		key := client.ObjectKeyFromObject(s)
		Eventually(func() *int64 { return getSource(key).Status.UnnamedAccounts }).Should(HaveValue(BeZero()))

		db, err := pgx.Connect(ctx, databaseURL)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(db.Close, context.Background())
		_, err = db.Exec(ctx, `INSERT INTO tally.accounts (tenant, account_id, name, traits, created_at, updated_at)
			VALUES ($1, 'a1', NULL, '{}', now(), now()), ($1, 'a2', NULL, '{}', now(), now()), ($1, 'a3', 'Named', '{}', now(), now()),
			       ('someone-else', 'a4', NULL, '{}', now(), now())`, ns)
		Expect(err).NotTo(HaveOccurred())
		Eventually(func() *int64 { return getSource(key).Status.UnnamedAccounts }).Should(HaveValue(Equal(int64(2))))

		By("summarising the tenant's event catalog: names received, ignored, seen in the last day")
		_, err = db.Exec(ctx, `INSERT INTO tally.event_catalog (tenant, event, first_seen_at, last_seen_at, count, ignored) VALUES
			($1, 'Report Built', now() - interval '3 days', now() - interval '1 hour', 40, false),
			($1, 'Signed In', now() - interval '3 days', now() - interval '2 days', 7, false),
			($1, 'Heartbeat', NULL, NULL, 0, true),
			('someone-else', 'Other', now(), now(), 1, false)`, ns)
		Expect(err).NotTo(HaveOccurred())
		Eventually(func() *tallyv1.CatalogStatus { return getSource(key).Status.Catalog }).Should(HaveValue(Equal(
			tallyv1.CatalogStatus{Events: 2, Ignored: 1, SeenLastDay: 1})))
	})

	It("rotates the tenant's Postgres login on request, for every source of the tenant, and drops it with the last one", func() {
		a, b := createSource(newSource(ns, "rot-a"), true), createSource(newSource(ns, "rot-b"), true)
		dbURL := func(name string) func() string {
			return func() string {
				secret := &corev1.Secret{}
				if err := k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: name + "-database"}, secret); err != nil {
					return ""
				}
				return string(secret.Data["url"])
			}
		}
		Eventually(dbURL("rot-a")).ShouldNot(BeEmpty())
		first := dbURL("rot-a")()
		Eventually(dbURL("rot-b")).Should(Equal(first), "one login per tenant")
		hash := func() string {
			d := &appsv1.Deployment{}
			if err := k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: "rot-b-worker"}, d); err != nil {
				return ""
			}
			return d.Spec.Template.Annotations[resources.AnnotationDatabaseHash]
		}
		Eventually(hash).ShouldNot(BeEmpty())
		before := hash()

		patch := client.MergeFrom(a.DeepCopy())
		a.Annotations = map[string]string{controllers.RotateDatabaseCredentialsAnnotation: "2026-12-01"}
		Expect(k8s.Patch(ctx, a, patch)).To(Succeed())
		Eventually(dbURL("rot-a")).ShouldNot(Equal(first))
		rotated := dbURL("rot-a")()
		Eventually(dbURL("rot-b")).Should(Equal(rotated), "the tenant's other sources follow on their next pass")
		Eventually(hash).ShouldNot(Equal(before), "their workers roll out with the new password")

		db, err := pgx.Connect(ctx, databaseURL)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(db.Close, context.Background())
		roles := func() (int, error) {
			var n int
			err := db.QueryRow(ctx, `SELECT count(*) FROM tally.tenant_roles r JOIN pg_roles p ON p.rolname = r.role_name WHERE r.tenant = $1`, ns).Scan(&n)
			return n, err
		}
		Expect(roles()).To(Equal(1))
		Expect(k8s.Delete(ctx, a)).To(Succeed())
		Eventually(func() bool { return notFound(k8s.Get(ctx, client.ObjectKeyFromObject(a), &tallyv1.SegmentSource{})) }).Should(BeTrue())
		Expect(roles()).To(Equal(1), "the tenant still has a source")
		Expect(k8s.Delete(ctx, b)).To(Succeed())
		Eventually(roles).Should(BeZero())
	})

	It("bounds the stream by spec.stream.maxBytes (else the manager's default) and says when it is nearly full", func() {
		s := newSource(ns, "bounded")
		limit := resource.MustParse("64Ki")
		s.Spec.Stream.MaxBytes = &limit
		createSource(s, true)
		key := client.ObjectKeyFromObject(s)
		src := stream.Source{Namespace: ns, Name: "bounded"}
		Eventually(func() (int64, error) {
			st, err := testJS.Stream(ctx, src.StreamName())
			if err != nil {
				return 0, err
			}
			return st.CachedInfo().Config.MaxBytes, nil
		}).Should(Equal(int64(64 << 10)))

		payload := []byte(`{"type":"track","p":"` + strings.Repeat("x", 4<<10) + `"}`)
		DeferCleanup(func() { // no worker will consume them; deletion would wait for them
			if st, err := testJS.Stream(ctx, src.StreamName()); err == nil {
				_ = st.Purge(ctx)
			}
		})
		for range 14 { // about 88% of 64 KiB; no worker consumes in envtest
			_, err := testJS.Publish(ctx, src.Subject("track"), payload)
			Expect(err).NotTo(HaveOccurred())
		}
		Eventually(func() *metav1.Condition { return condition(getSource(key), tallyv1.ConditionStreamReady) }).Should(And(
			HaveField("Status", metav1.ConditionTrue), HaveField("Reason", controllers.ReasonStreamNearlyFull),
			HaveField("Message", ContainSubstring("% full"))))

		other := createSource(newSource(ns, "unbounded"), true)
		Eventually(func() (int64, error) {
			st, err := testJS.Stream(ctx, stream.Source{Namespace: ns, Name: other.Name}.StreamName())
			if err != nil {
				return 0, err
			}
			return st.CachedInfo().Config.MaxBytes, nil
		}).Should(Equal(int64(stream.DefaultMaxBytes)), "the manager's default, 1Gi")
	})

	It("refuses a stream of another tenant with its name instead of adopting it, without naming that tenant", func() {
		src := stream.Source{Namespace: ns, Name: "squat"}
		Expect(stream.Ensure(ctx, testJS, src, stream.Settings{Tenant: "someone-else"})).To(Succeed())
		DeferCleanup(func() { _ = stream.Delete(ctx, testJS, src) })
		s := createSource(newSource(ns, "squat"), true)
		key := client.ObjectKeyFromObject(s)
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonStreamOfOtherTenant))
		got := getSource(key)
		Expect(condition(got, tallyv1.ConditionStalled)).NotTo(BeNil())
		for _, c := range got.Status.Conditions {
			Expect(c.Message).NotTo(ContainSubstring("someone-else"))
		}
		Expect(eventReasons(ns, "squat")).NotTo(BeEmpty())
	})

	It("is Stalled on a Secret not labelled for it, mounts nothing from it, and goes on once it is labelled", func() {
		s := newSource(ns, "unlabelled")
		createSource(s, false)
		secret := writeKeySecret(ns, "unlabelled-segment", "key-one\n")
		secret.Labels = nil
		Expect(k8s.Create(ctx, secret)).To(Succeed())
		key := client.ObjectKeyFromObject(s)
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonSecretNotLabelled))
		got := getSource(key)
		Expect(condition(got, tallyv1.ConditionStalled)).NotTo(BeNil())
		Expect(condition(got, tallyv1.ConditionReady).Message).To(ContainSubstring(resources.LabelSourceSecret))
		Expect(notFound(k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: "unlabelled-receiver"}, &appsv1.Deployment{}))).To(BeTrue())
		Eventually(func() []string { return eventReasons(ns, "unlabelled") }).Should(ContainElement(controllers.ReasonSecretNotLabelled))

		secret.Labels = sourceSecretLabels
		Expect(k8s.Update(ctx, secret)).To(Succeed())
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonRollingOut))
	})

	It("reverts edits to the fields it owns and keeps fields others add", func() {
		s := createSource(newSource(ns, "drifted"), true)
		depKey := types.NamespacedName{Namespace: ns, Name: "drifted-receiver"}
		Eventually(func() error { return k8s.Get(ctx, depKey, &appsv1.Deployment{}) }).Should(Succeed())
		Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
			d := deployment(ns, "drifted-receiver")
			d.Spec.Template.Spec.Containers[0].Image = "someone/else:latest"
			d.Annotations["team.example/owner"] = "platform"
			return k8s.Update(ctx, d)
		})).To(Succeed())
		Eventually(func() string { return deployment(ns, "drifted-receiver").Spec.Template.Spec.Containers[0].Image }).
			Should(Equal(workloadImage))
		Expect(deployment(ns, "drifted-receiver").Annotations).To(HaveKeyWithValue("team.example/owner", "platform"))
		_ = s
	})

	It("is Stalled when JetStream refuses the stream configuration, until the spec is fixed", func() {
		s := newSource(ns, "tripled")
		s.Spec.Stream.Replicas = 3 // the embedded server is not clustered
		createSource(s, true)
		key := client.ObjectKeyFromObject(s)
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonStreamRejected))
		got := getSource(key)
		Expect(condition(got, tallyv1.ConditionStalled).Status).To(Equal(metav1.ConditionTrue))
		Expect(condition(got, tallyv1.ConditionStalled).Message).To(ContainSubstring("replicas > 1 not supported"))
		Expect(condition(got, tallyv1.ConditionReconciling)).To(BeNil())
		Expect(got.Status.ObservedGeneration).To(Equal(got.Generation))
		Expect(kstatusOf(got)).To(Equal(status.FailedStatus))
		expectStatusCompliant(got)

		updateSource(key, func(s *tallyv1.SegmentSource) { s.Spec.Stream.Replicas = 1 })
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonRollingOut))
		got = getSource(key)
		Expect(condition(got, tallyv1.ConditionStalled)).To(BeNil())
		Expect(kstatusOf(got)).To(Equal(status.InProgressStatus))
		expectStatusCompliant(got)
	})

	It("refuses to adopt a same-named object it does not control", func() {
		foreign := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "clash-config", Namespace: ns}, Data: map[string]string{"mine": "yes"}}
		Expect(k8s.Create(ctx, foreign)).To(Succeed())
		s := createSource(newSource(ns, "clash"), true)
		key := client.ObjectKeyFromObject(s)
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonResourceConflict))
		Expect(condition(getSource(key), tallyv1.ConditionReady).Message).To(ContainSubstring(`ConfigMap "clash-config" already exists`))
		Eventually(func() []string { return eventReasons(ns, "clash") }).Should(ContainElement(controllers.ReasonResourceConflict))
		Expect(k8s.Get(ctx, client.ObjectKeyFromObject(foreign), foreign)).To(Succeed())
		Expect(foreign.Data).To(Equal(map[string]string{"mine": "yes"}))
		Expect(foreign.OwnerReferences).To(BeEmpty())
	})

	It("sets Receiving once a message reaches the stream, with message times and backlog", func() {
		s := createSource(newSource(ns, "live"), true)
		key := client.ObjectKeyFromObject(s)
		Eventually(func() bool { ok, c := streamExists(ns, "live"); return ok && c }).Should(BeTrue())
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonRollingOut))
		// Let the reconciles triggered by creating the owned objects drain, so the message is
		// picked up by the periodic re-check, the path a real cluster relies on.
		Consistently(readyReason(key)).Should(Equal("False/" + controllers.ReasonRollingOut))
		_, err := testJS.Publish(ctx, stream.Source{Namespace: ns, Name: "live"}.Subject("track"), []byte(`{"type":"track"}`))
		Expect(err).NotTo(HaveOccurred())
		published := time.Now()
		Eventually(func() metav1.ConditionStatus {
			c := condition(getSource(key), tallyv1.ConditionReceiving)
			if c == nil {
				return ""
			}
			return c.Status
		}).Should(Equal(metav1.ConditionTrue))
		AddReportEntry("Receiving turned true after", time.Since(published).Round(time.Millisecond).String())
		got := getSource(key)
		Expect(got.Status.FirstMessageAt).NotTo(BeNil())
		Expect(got.Status.LastMessageAt).NotTo(BeNil())
		Expect(got.Status.Backlog).To(Equal(int64(1)))
		first, last := *got.Status.FirstMessageAt, *got.Status.LastMessageAt

		By("exporting what the dashboard and alerts read: backlog, stream bytes against the limit, last message time")
		gauge := func(name string) func() float64 {
			return func() float64 {
				families, err := metrics.Registry.Gather()
				Expect(err).NotTo(HaveOccurred())
				for _, f := range families {
					for _, m := range f.GetMetric() {
						labels := map[string]string{}
						for _, l := range m.GetLabel() {
							labels[l.GetName()] = l.GetValue()
						}
						if f.GetName() == name && labels["namespace"] == ns && labels["name"] == "live" {
							return m.GetGauge().GetValue()
						}
					}
				}
				return -1
			}
		}
		Eventually(gauge("tally_segmentsource_backlog_messages")).Should(Equal(1.0))
		Eventually(gauge("tally_segmentsource_stream_bytes")).Should(BeNumerically(">", 0))
		Expect(gauge("tally_segmentsource_stream_max_bytes")()).To(Equal(float64(1 << 30)))
		Expect(gauge("tally_segmentsource_dead_letters")()).To(BeZero())
		Eventually(gauge("tally_segmentsource_last_message_timestamp_seconds")).Should(Equal(float64(last.Unix())))

		By("keeping firstMessageAt and Receiving once a worker consumed the message and purged it")
		ackAll(ns, "live", 1)
		Eventually(func(g Gomega) {
			info, err := testJS.Stream(ctx, stream.Source{Namespace: ns, Name: "live"}.StreamName())
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(info.CachedInfo().State.Msgs).To(BeZero())
		}).Should(Succeed())
		touch(key)
		Eventually(func() int64 { return getSource(key).Status.Backlog }).Should(BeZero())
		got = getSource(key)
		Expect(got.Status.FirstMessageAt).NotTo(BeNil())
		Expect(got.Status.FirstMessageAt.Equal(&first)).To(BeTrue(), "firstMessageAt %v, was %v", got.Status.FirstMessageAt, first)
		Expect(got.Status.LastMessageAt).NotTo(BeNil())
		Expect(got.Status.LastMessageAt.Before(&last)).To(BeFalse())
		Expect(condition(got, tallyv1.ConditionReceiving).Status).To(Equal(metav1.ConditionTrue))

		By("not moving firstMessageAt forward when the stream is re-created")
		Expect(testJS.DeleteStream(ctx, stream.Source{Namespace: ns, Name: "live"}.StreamName())).To(Succeed())
		touch(key)
		Eventually(func() bool { ok, c := streamExists(ns, "live"); return ok && c }).Should(BeTrue())
		_, err = testJS.Publish(ctx, stream.Source{Namespace: ns, Name: "live"}.Subject("track"), []byte(`{"type":"track"}`))
		Expect(err).NotTo(HaveOccurred())
		touch(key)
		Eventually(func() int64 { return getSource(key).Status.Backlog }).Should(Equal(int64(1)))
		got = getSource(key)
		Expect(got.Status.FirstMessageAt.Equal(&first)).To(BeTrue(), "firstMessageAt %v, was %v", got.Status.FirstMessageAt, first)
		Expect(condition(got, tallyv1.ConditionReceiving).Status).To(Equal(metav1.ConditionTrue))
		ackAll(ns, "live", 1)
	})

	It("stays Stalled while JetStream refuses a change to an existing stream, on every reconcile, until the spec is fixed", func() {
		s := createSource(newSource(ns, "grown"), true)
		key := client.ObjectKeyFromObject(s)
		Eventually(func() bool { ok, c := streamExists(ns, "grown"); return ok && c }).Should(BeTrue())
		makeAllAvailable(s)
		Eventually(readyReason(key)).Should(Equal("True/" + controllers.ReasonSucceeded))

		updateSource(key, func(s *tallyv1.SegmentSource) { s.Spec.Stream.Replicas = 3 }) // not clustered
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonStreamRejected))
		Expect(conditionOf(key, tallyv1.ConditionStalled)()).To(Equal("True/" + controllers.ReasonStreamRejected))

		By("staying Stalled when something else triggers a reconcile of the same generation")
		touch(key)
		Consistently(readyReason(key)).Should(Equal("False/" + controllers.ReasonStreamRejected))
		Expect(conditionOf(key, tallyv1.ConditionStalled)()).To(Equal("True/" + controllers.ReasonStreamRejected))

		updateSource(key, func(s *tallyv1.SegmentSource) { s.Spec.Stream.Replicas = 1 })
		makeAllAvailable(s)
		Eventually(readyReason(key)).Should(Equal("True/" + controllers.ReasonSucceeded))
		Expect(conditionOf(key, tallyv1.ConditionStalled)()).To(BeEmpty())
	})

	It("restores a hand-edited stream configuration on the periodic re-check", func() {
		s := createSource(newSource(ns, "edited"), true)
		key := client.ObjectKeyFromObject(s)
		Eventually(func() bool { ok, c := streamExists(ns, "edited"); return ok && c }).Should(BeTrue())
		makeAllAvailable(s)
		Eventually(readyReason(key)).Should(Equal("True/" + controllers.ReasonSucceeded))
		src := stream.Source{Namespace: ns, Name: "edited"}
		cfg := stream.StreamConfig(src, resources.SourceConfig(getSource(key)).StreamSettings())
		cfg.MaxAge = time.Hour
		_, err := testJS.UpdateStream(ctx, cfg)
		Expect(err).NotTo(HaveOccurred())
		edited := time.Now()
		Eventually(func(g Gomega) {
			st, err := testJS.Stream(ctx, src.StreamName())
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(st.CachedInfo().Config.MaxAge).To(BeZero())
		}).Should(Succeed())
		AddReportEntry("hand-edited stream restored after", time.Since(edited).Round(time.Millisecond).String())
		Eventually(func() []string { return eventReasons(ns, "edited") }).Should(ContainElement("StreamConfigRestored"))
		Expect(readyReason(key)()).To(Equal("True/" + controllers.ReasonSucceeded))
	})

	It("waits with the deletion until the workers consumed the backlog, unless forced", func() {
		s := createSource(newSource(ns, "busy"), true)
		key := client.ObjectKeyFromObject(s)
		src := stream.Source{Namespace: ns, Name: "busy"}
		Eventually(func() bool { ok, c := streamExists(ns, "busy"); return ok && c }).Should(BeTrue())
		_, err := testJS.Publish(ctx, src.Subject("track"), []byte(`{"type":"track"}`))
		Expect(err).NotTo(HaveOccurred())

		Expect(k8s.Delete(ctx, s)).To(Succeed())
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonDeletionBlocked))
		got := getSource(key)
		Expect(got.DeletionTimestamp).NotTo(BeNil())
		Expect(got.Finalizers).To(ContainElement(controllers.Finalizer))
		msg := condition(got, tallyv1.ConditionReady).Message
		Expect(msg).To(ContainSubstring("1 unprocessed message(s)"))
		Expect(msg).To(ContainSubstring("0 dead letter(s)"))
		Expect(msg).To(ContainSubstring(controllers.ForceDeleteAnnotation))
		ok, _ := streamExists(ns, "busy")
		Expect(ok).To(BeTrue(), "the stream outlives a blocked deletion")
		Eventually(func() []string { return eventReasons(ns, "busy") }).Should(ContainElement(controllers.ReasonDeletionBlocked))

		By("completing the deletion once the message is consumed")
		ackAll(ns, "busy", 1)
		Eventually(func() bool { return notFound(k8s.Get(ctx, key, &tallyv1.SegmentSource{})) }).Should(BeTrue())
		ok, _ = streamExists(ns, "busy")
		Expect(ok).To(BeFalse())

		By("deleting at once, messages and dead letters included, with the force annotation")
		f := newSource(ns, "doomed")
		f.Annotations = map[string]string{controllers.ForceDeleteAnnotation: "true"}
		createSource(f, true)
		fsrc := stream.Source{Namespace: ns, Name: "doomed"}
		Eventually(func() bool { ok, c := streamExists(ns, "doomed"); return ok && c }).Should(BeTrue())
		_, err = testJS.Publish(ctx, fsrc.Subject("track"), []byte(`{"type":"track"}`))
		Expect(err).NotTo(HaveOccurred())
		_, err = testJS.Publish(ctx, fsrc.DeadLetterSubject(), []byte(`{"type":"track"}`))
		Expect(err).NotTo(HaveOccurred())
		Expect(k8s.Delete(ctx, f)).To(Succeed())
		Eventually(func() bool { return notFound(k8s.Get(ctx, client.ObjectKeyFromObject(f), &tallyv1.SegmentSource{})) }).Should(BeTrue())
		ok, _ = streamExists(ns, "doomed")
		Expect(ok).To(BeFalse())
		_, err = testJS.Stream(ctx, fsrc.DeadLetterStreamName())
		Expect(err).To(MatchError(jetstream.ErrStreamNotFound))
	})

	It("waits with the deletion while dead letters are left", func() {
		s := createSource(newSource(ns, "letters"), true)
		key := client.ObjectKeyFromObject(s)
		src := stream.Source{Namespace: ns, Name: "letters"}
		Eventually(func() bool { ok, c := streamExists(ns, "letters"); return ok && c }).Should(BeTrue())
		_, err := testJS.Publish(ctx, src.DeadLetterSubject(), []byte(`{"type":"track"}`))
		Expect(err).NotTo(HaveOccurred())
		Expect(k8s.Delete(ctx, s)).To(Succeed())
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonDeletionBlocked))
		Expect(condition(getSource(key), tallyv1.ConditionReady).Message).To(ContainSubstring("1 dead letter(s)"))
		dlq, err := testJS.Stream(ctx, src.DeadLetterStreamName())
		Expect(err).NotTo(HaveOccurred())
		Expect(dlq.Purge(ctx)).To(Succeed())
		Eventually(func() bool { return notFound(k8s.Get(ctx, key, &tallyv1.SegmentSource{})) }).Should(BeTrue())
	})

	It("refuses a tenant another namespace claimed first, and lets one namespace share its tenant", func() {
		owner := newSource(ns, "first")
		owner.Spec.Tenant = "shared-" + ns
		createSource(owner, true)
		Eventually(readyReason(client.ObjectKeyFromObject(owner))).Should(Equal("False/" + controllers.ReasonRollingOut))

		sibling := newSource(ns, "second")
		sibling.Spec.Tenant = owner.Spec.Tenant
		createSource(sibling, true)
		Eventually(readyReason(client.ObjectKeyFromObject(sibling))).Should(Equal("False/" + controllers.ReasonRollingOut))

		// creationTimestamp has one-second resolution, so a same-second tie is likely here; it
		// goes to the namespace that sorts first, which a name with ns as prefix never is.
		other := ns + "-other"
		Expect(k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: other}})).To(Succeed())
		intruder := newSource(other, "intruder")
		intruder.Spec.Tenant = owner.Spec.Tenant
		createSource(intruder, true)
		key := client.ObjectKeyFromObject(intruder)
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonTenantClaimed))
		got := getSource(key)
		Expect(condition(got, tallyv1.ConditionStalled).Status).To(Equal(metav1.ConditionTrue))
		msg := condition(got, tallyv1.ConditionStalled).Message
		Expect(msg).To(ContainSubstring(`tenant "` + owner.Spec.Tenant + `" belongs to another namespace`))
		// (This suite names tenants after their namespace: the tenant the intruder chose is not news.)
		told := strings.NewReplacer(other, "", `"`+owner.Spec.Tenant+`"`, "").Replace(msg)
		Expect(told).NotTo(ContainSubstring(ns), "the owner's namespace is not told")
		Expect(msg).NotTo(ContainSubstring("first"), "nor the owner's source")
		Expect(kstatusOf(got)).To(Equal(status.FailedStatus))
		expectStatusCompliant(got)
		Eventually(func() []string { return eventReasons(other, "intruder") }).Should(ContainElement(controllers.ReasonTenantClaimed))
		ok, _ := streamExists(other, "intruder")
		Expect(ok).To(BeFalse(), "no stream for a refused source")
		Expect(notFound(k8s.Get(ctx, types.NamespacedName{Namespace: other, Name: resources.ReceiverName(intruder)}, &appsv1.Deployment{}))).To(BeTrue())
		Expect(notFound(k8s.Get(ctx, types.NamespacedName{Namespace: other, Name: resources.WorkerName(intruder)}, &appsv1.Deployment{}))).To(BeTrue())
	})

	It("re-creates a stream deleted behind its back on the periodic re-check", func() {
		s := createSource(newSource(ns, "drift"), true)
		key := client.ObjectKeyFromObject(s)
		Eventually(func() bool { ok, c := streamExists(ns, "drift"); return ok && c }).Should(BeTrue())
		makeAllAvailable(s)
		Eventually(readyReason(key)).Should(Equal("True/" + controllers.ReasonSucceeded))
		// Let event-triggered reconciles drain: only the periodic re-check may find the drift.
		Consistently(readyReason(key)).Should(Equal("True/" + controllers.ReasonSucceeded))
		Expect(testJS.DeleteStream(ctx, "TALLY_"+ns+"_drift")).To(Succeed())
		deleted := time.Now()
		Eventually(func() bool { ok, c := streamExists(ns, "drift"); return ok && c }).Should(BeTrue())
		AddReportEntry("deleted stream re-created after", time.Since(deleted).Round(time.Millisecond).String())
		Eventually(func() []string { return eventReasons(ns, "drift") }).Should(ContainElement("StreamRecreated"))
		Expect(readyReason(key)()).To(Equal("True/" + controllers.ReasonSucceeded))
	})

	It("writes nothing to the API server when a periodic re-check finds nothing changed", func() {
		s := createSource(newSource(ns, "steady"), true)
		key := client.ObjectKeyFromObject(s)
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonRollingOut))
		makeAllAvailable(s)
		Eventually(readyReason(key)).Should(Equal("True/" + controllers.ReasonSucceeded))
		Consistently(readyReason(key)).Should(Equal("True/" + controllers.ReasonSucceeded))
		rv := getSource(key).ResourceVersion
		applies, statusWrites := counterSum("tally_operator_applies_total"), counterSum("tally_operator_status_writes_total")
		reconciles := counterSum("controller_runtime_reconcile_total")
		// At least one periodic reconcile of every live source (interval 15 s ± 10%).
		Eventually(func() float64 { return counterSum("controller_runtime_reconcile_total") }).
			Should(BeNumerically(">=", reconciles+1))
		Expect(counterSum("tally_operator_applies_total")).To(Equal(applies), "server-side applies during periodic reconciles")
		Expect(counterSum("tally_operator_status_writes_total")).To(Equal(statusWrites), "status writes during periodic reconciles")
		Expect(getSource(key).ResourceVersion).To(Equal(rv))
	})

	It("reports NATS down as Ready=False and recovers when NATS is back", Serial, func() {
		s := createSource(newSource(ns, "outage"), true)
		key := client.ObjectKeyFromObject(s)
		Eventually(func() bool { ok, c := streamExists(ns, "outage"); return ok && c }).Should(BeTrue())
		makeAllAvailable(s)
		Eventually(readyReason(key)).Should(Equal("True/" + controllers.ReasonSucceeded))

		natsSrv.Shutdown()
		natsSrv.WaitForShutdown()
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonNATSUnavailable))
		got := getSource(key)
		Expect(condition(got, tallyv1.ConditionReady).Message).To(ContainSubstring("not reachable"))
		Expect(condition(got, tallyv1.ConditionStreamReady).Status).To(Equal(metav1.ConditionFalse))
		Expect(condition(got, tallyv1.ConditionReconciling)).To(BeNil(), "the generation was observed already")
		expectStatusCompliant(got)
		Expect(kstatusOf(got)).To(Equal(status.InProgressStatus))
		Eventually(func() []string { return eventReasons(ns, "outage") }).Should(ContainElement(controllers.ReasonNATSUnavailable))

		startNATS(natsPort)
		restarted := time.Now()
		Eventually(readyReason(key)).WithTimeout(natsRecoveryTimeout).Should(Equal("True/" + controllers.ReasonSucceeded))
		AddReportEntry("Ready again after NATS restart", time.Since(restarted).Round(time.Millisecond).String())
		expectStatusCompliant(getSource(key))
	})
})

var _ = Describe("SegmentSource validation by the API server", func() {
	var ns string
	BeforeEach(func() { ns = newNamespace() })

	DescribeTable("refuses invalid sources with a message a person understands",
		func(mutate func(*tallyv1.SegmentSource), want string) {
			s := newSource(ns, "valid")
			mutate(s)
			err := k8s.Create(ctx, s)
			Expect(err).To(HaveOccurred())
			Expect(err.Error()).To(ContainSubstring(want))
		},
		Entry("missing tenant", func(s *tallyv1.SegmentSource) { s.Spec.Tenant = "" }, "spec.tenant"),
		Entry("tenant with upper case", func(s *tallyv1.SegmentSource) { s.Spec.Tenant = "Acme" }, "spec.tenant"),
		Entry("bad accountProperty", func(s *tallyv1.SegmentSource) { s.Spec.AccountProperty = "account id" }, "spec.accountProperty"),
		Entry("duplicate ignoredEvents", func(s *tallyv1.SegmentSource) { s.Spec.IgnoredEvents = []string{"A", "A"} }, "Duplicate value"),
		Entry("empty ignored event", func(s *tallyv1.SegmentSource) { s.Spec.IgnoredEvents = []string{""} }, "spec.ignoredEvents"),
		Entry("name that is no DNS-1035 label", func(s *tallyv1.SegmentSource) { s.Name = "1st-source" }, "DNS-1035"),
		Entry("name too long for the receiver's Service", func(s *tallyv1.SegmentSource) { s.Name = strings.Repeat("a", 55) }, "at most 54 characters"),
		Entry("autoscaling bounds reversed", func(s *tallyv1.SegmentSource) {
			s.Spec.Receiver.Autoscaling = &tallyv1.Autoscaling{MinReplicas: 5, MaxReplicas: 2}
		}, "minReplicas must not exceed maxReplicas"),
		Entry("stream maxAge below a minute", func(s *tallyv1.SegmentSource) {
			s.Spec.Stream.MaxAge = metav1.Duration{Duration: -time.Hour}
		}, "maxAge must be at least 1m"),
		Entry("stream maxAge of seconds", func(s *tallyv1.SegmentSource) {
			s.Spec.Stream.MaxAge = metav1.Duration{Duration: 30 * time.Second}
		}, "maxAge must be at least 1m"),
		Entry("rate limit of no events", func(s *tallyv1.SegmentSource) {
			s.Spec.Receiver.RateLimit = &tallyv1.RateLimit{EventsPerSecond: 0}
		}, "spec.receiver.rateLimit.eventsPerSecond"),
		Entry("unknown deletion policy", func(s *tallyv1.SegmentSource) { s.Spec.Stream.DeletionPolicy = "Maybe" }, "spec.stream.deletionPolicy"),
	)

	It("refuses a tenant change", func() {
		s := newSource(ns, "fixed")
		Expect(k8s.Create(ctx, s)).To(Succeed())
		DeferCleanup(func() { _ = k8s.Delete(context.Background(), s) })
		// A merge patch without resourceVersion: the refusal must come from the tenant rule, not
		// from a conflict with the operator's finalizer.
		err := k8s.Patch(ctx, s, client.RawPatch(types.MergePatchType, []byte(`{"spec":{"tenant":"other"}}`)))
		Expect(err).To(HaveOccurred())
		Expect(err.Error()).To(ContainSubstring("tenant is immutable"))
	})
})

// ownsReplicas reports whether the operator's field manager owns spec.replicas of a Deployment.
func ownsReplicas(d *appsv1.Deployment) bool {
	for _, mf := range d.ManagedFields {
		if mf.Manager == controllers.FieldOwner && mf.FieldsV1 != nil && strings.Contains(mf.FieldsV1.GetRawString(), `"f:replicas"`) {
			return true
		}
	}
	return false
}
