package controllers_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	kstatus "sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers"
	"github.com/tallyhq/tally/controllers/resources"
	"github.com/tallyhq/tally/test/testenv"
	"github.com/tallyhq/tally/workers/insights"
	"github.com/tallyhq/tally/workers/source"
)

var _ = Describe("SegmentSource insights", func() {
	var ns string
	BeforeEach(func() { ns = newNamespace() })

	insightsSecret := func(name, key string, labelled bool) *corev1.Secret {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Data: map[string][]byte{"writeKey": []byte(key + "\n")}}
		if labelled {
			s.Labels = sourceSecretLabels
		}
		return s
	}
	insightsCondition := func(key client.ObjectKey) func() string {
		return func() string {
			c := condition(getSource(key), tallyv1.ConditionInsightsDelivered)
			if c == nil {
				return ""
			}
			return string(c.Status) + "/" + c.Reason
		}
	}
	// pushOnce runs a real pusher of the source once, against endpoint, as its worker would.
	pushOnce := func(s *tallyv1.SegmentSource, endpoint string) error {
		GinkgoHelper()
		conn, err := pgx.ParseConfig(databaseURL)
		Expect(err).NotTo(HaveOccurred())
		p, err := insights.New(insights.Options{
			Source: &source.Config{Namespace: s.Namespace, Name: s.Name, Tenant: s.Spec.Tenant,
				Insights: &source.InsightsConfig{Endpoint: endpoint, Interval: time.Minute, WriteKey: "insights-key"}},
			Conn: conn, Logger: testenv.QuietLogger(), Metrics: insights.NewMetrics(prometheus.NewRegistry()),
			RetryBase: time.Millisecond, RetryMax: time.Millisecond,
		})
		Expect(err).NotTo(HaveOccurred())
		defer p.Close()
		_, err = p.Push(ctx)
		return err
	}

	It("insights: mounts the write key into the workers only, rolls them on a new key, and reports the pushes", func() {
		s := newSource(ns, "pushing")
		s.Spec.Insights = &tallyv1.InsightsSpec{WriteKeySecretRef: tallyv1.InsightsWriteKeyRef{Name: "segment-insights"}}
		createSource(s, true)
		key := client.ObjectKeyFromObject(s)

		By("waiting for the Secret, which must carry the label like every Secret a source names")
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonSecretNotFound))
		Eventually(insightsCondition(key)).Should(Equal("False/" + controllers.ReasonSecretNotFound))
		secret := insightsSecret("segment-insights", "key-one", false)
		Expect(k8s.Create(ctx, secret)).To(Succeed())
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonSecretNotLabelled))
		Eventually(insightsCondition(key)).Should(Equal("False/" + controllers.ReasonSecretNotLabelled))
		secret.Labels = sourceSecretLabels
		Expect(k8s.Update(ctx, secret)).To(Succeed())

		By("mounting it read-only into the workers, never into the receivers")
		Eventually(readyReason(key)).Should(Equal("False/" + controllers.ReasonRollingOut))
		worker := deployment(ns, "pushing-worker")
		c := worker.Spec.Template.Spec.Containers[0]
		Expect(c.Args).To(ContainElement("--insights-write-key-file=/etc/tally/insights-write-key/writeKey"))
		Expect(c.VolumeMounts).To(ContainElement(corev1.VolumeMount{Name: "insights-write-key", MountPath: "/etc/tally/insights-write-key", ReadOnly: true}))
		Expect(worker.Spec.Template.Spec.Volumes).To(ContainElement(And(
			HaveField("Secret.SecretName", "segment-insights"), HaveField("Secret.Items", ConsistOf(HaveField("Key", "writeKey"))))))
		recv := deployment(ns, "pushing-receiver")
		Expect(recv.Spec.Template.Spec.Volumes).NotTo(ContainElement(HaveField("Name", "insights-write-key")))
		Expect(recv.Spec.Template.Spec.Containers[0].Args).NotTo(ContainElement(ContainSubstring("insights")))
		cm := &corev1.ConfigMap{}
		Expect(k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: "pushing-config"}, cm)).To(Succeed())
		cfg, err := source.DecodeConfig([]byte(cm.Data[source.ConfigFileName]))
		Expect(err).NotTo(HaveOccurred())
		Expect(cfg.Insights).To(Equal(&source.InsightsConfig{Endpoint: "https://api.segment.io", Interval: time.Hour}), "the CRD's defaults")
		Expect(cm.Data[source.ConfigFileName]).NotTo(ContainSubstring("key-one"))

		By("rolling the workers when the key changes")
		before := worker.Spec.Template.Annotations[resources.AnnotationInsightsWriteKeyHash]
		Expect(before).NotTo(BeEmpty())
		secret.Data["writeKey"] = []byte("key-two\n")
		Expect(k8s.Update(ctx, secret)).To(Succeed())
		Eventually(func() string {
			return deployment(ns, "pushing-worker").Spec.Template.Annotations[resources.AnnotationInsightsWriteKeyHash]
		}).ShouldNot(Equal(before))

		By("reporting no push yet, without holding Ready back")
		makeAllAvailable(s)
		Eventually(readyReason(key)).Should(Equal("True/" + controllers.ReasonSucceeded))
		Eventually(insightsCondition(key)).Should(Equal("Unknown/" + controllers.ReasonInsightsPending))
		expectStatusCompliant(getSource(key))

		By("reporting a push that delivered, read from the rows the pusher wrote")
		var answer atomic.Int32
		answer.Store(http.StatusOK)
		fake := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(int(answer.Load()))
		}))
		DeferCleanup(fake.Close)
		db, err := pgx.Connect(ctx, databaseURL)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(db.Close, context.Background())
		_, err = db.Exec(ctx, `INSERT INTO tally.accounts (tenant, account_id, name, traits, created_at, updated_at)
			VALUES ($1, 'a1', 'Acme', '{}', now(), now())`, s.Spec.Tenant)
		Expect(err).NotTo(HaveOccurred())
		Expect(pushOnce(s, fake.URL)).To(Succeed())
		Eventually(insightsCondition(key)).Should(Equal("True/" + controllers.ReasonInsightsDelivered))
		got := getSource(key)
		Expect(got.Status.Insights).NotTo(BeNil())
		Expect(got.Status.Insights.EntitiesPushed).To(Equal(int64(1)))
		Expect(got.Status.Insights.LastPushAt).NotTo(BeNil())
		Expect(got.Status.Insights.LastError).To(BeEmpty())
		expectStatusCompliant(got)

		By("reporting a refused push with its error, still without touching Ready")
		_, err = db.Exec(ctx, `UPDATE tally.accounts SET name = 'Acme Corp', last_seen_at = now() WHERE tenant = $1`, s.Spec.Tenant)
		Expect(err).NotTo(HaveOccurred())
		answer.Store(http.StatusUnauthorized)
		Expect(pushOnce(s, fake.URL)).To(HaveOccurred())
		Eventually(insightsCondition(key)).Should(Equal("False/" + controllers.ReasonInsightsFailed))
		got = getSource(key)
		Expect(condition(got, tallyv1.ConditionInsightsDelivered).Message).To(ContainSubstring("401"))
		Expect(got.Status.Insights.LastError).To(ContainSubstring("401"))
		Expect(got.Status.Insights.EntitiesPushed).To(Equal(int64(1)), "the last complete push's count stays")
		Expect(readyReason(key)()).To(Equal("True/" + controllers.ReasonSucceeded))
		Expect(kstatusOf(got)).To(Equal(kstatus.CurrentStatus))
		expectStatusCompliant(got)

		By("suspending the insights: nothing mounted, no Secret needed")
		Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
			cur := getSource(key)
			cur.Spec.Insights.Suspend = true
			return k8s.Update(ctx, cur)
		})).To(Succeed())
		Eventually(insightsCondition(key)).Should(Equal("False/" + controllers.ReasonSuspended))
		Eventually(func() []corev1.Volume { return deployment(ns, "pushing-worker").Spec.Template.Spec.Volumes }).
			ShouldNot(ContainElement(HaveField("Name", "insights-write-key")))
		Expect(k8s.Delete(ctx, secret)).To(Succeed())
		makeAllAvailable(s)
		Eventually(readyReason(key)).Should(Equal("True/" + controllers.ReasonSucceeded))

		By("turning insights off: condition and status go")
		Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
			cur := getSource(key)
			cur.Spec.Insights = nil
			return k8s.Update(ctx, cur)
		})).To(Succeed())
		Eventually(insightsCondition(key)).Should(BeEmpty())
		Eventually(func() *tallyv1.InsightsStatus { return getSource(key).Status.Insights }).Should(BeNil())
	})

	DescribeTable("insights: refuses invalid settings",
		func(mutate func(*tallyv1.InsightsSpec), want string) {
			s := newSource(ns, "invalid")
			s.Spec.Insights = &tallyv1.InsightsSpec{WriteKeySecretRef: tallyv1.InsightsWriteKeyRef{Name: "segment-insights"}}
			mutate(s.Spec.Insights)
			err := k8s.Create(ctx, s)
			Expect(err).To(HaveOccurred())
			Expect(err.Error()).To(ContainSubstring(want))
		},
		Entry("interval below 5s", func(i *tallyv1.InsightsSpec) { i.Interval = &metav1.Duration{Duration: time.Second} }, "interval must be at least 5s"),
		Entry("endpoint that is no URL", func(i *tallyv1.InsightsSpec) { i.Endpoint = "api.segment.io" }, "spec.insights.endpoint"),
		Entry("no Secret name", func(i *tallyv1.InsightsSpec) { i.WriteKeySecretRef.Name = "" }, "spec.insights.writeKeySecretRef.name"),
	)
})
