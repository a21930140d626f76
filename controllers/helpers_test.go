package controllers_test

import (
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	gomegatypes "github.com/onsi/gomega/types"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/resources"
	"github.com/tallyhq/tally/workers/stream"
)

// newNamespace creates a namespace for one spec.
func newNamespace() string {
	name := fmt.Sprintf("t-%06d", rand.IntN(1000000))
	Expect(k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})).To(Succeed())
	return name
}

// sourceSecretLabels opt a Secret in to being named by a SegmentSource.
var sourceSecretLabels = map[string]string{resources.LabelSourceSecret: "true"}

func writeKeySecret(ns, name, value string) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: sourceSecretLabels},
		Data:       map[string][]byte{"writeKey": []byte(value)},
	}
}

func newSource(ns, name string) *tallyv1.SegmentSource {
	return &tallyv1.SegmentSource{
		TypeMeta:   metav1.TypeMeta{APIVersion: tallyv1.GroupVersion.String(), Kind: "SegmentSource"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: tallyv1.SegmentSourceSpec{
			// A tenant of the namespace's own: a tenant belongs to the first namespace that uses it.
			Tenant:            ns,
			WriteKeySecretRef: tallyv1.SecretKeyRef{Name: name + "-segment", Key: "writeKey"},
			AccountProperty:   "accountId",
			IgnoredEvents:     []string{"Heartbeat"},
		},
	}
}

// createSource creates a source (and, unless withoutSecret, its write key Secret) and deletes the
// source when the spec ends, so its stream does not outlive the spec.
func createSource(s *tallyv1.SegmentSource, withSecret bool) *tallyv1.SegmentSource {
	GinkgoHelper()
	if withSecret {
		Expect(k8s.Create(ctx, writeKeySecret(s.Namespace, s.Spec.WriteKeySecretRef.Name, "key-one"))).To(Succeed())
	}
	Expect(k8s.Create(ctx, s)).To(Succeed())
	DeferCleanup(func() {
		_ = k8s.Delete(ctx, s)
		Eventually(func() bool { return notFound(k8s.Get(ctx, client.ObjectKeyFromObject(s), &tallyv1.SegmentSource{})) }).Should(BeTrue())
	})
	return s
}

func notFound(err error) bool { return client.IgnoreNotFound(err) == nil && err != nil }

func getSource(key client.ObjectKey) *tallyv1.SegmentSource {
	GinkgoHelper()
	s := &tallyv1.SegmentSource{}
	Expect(k8s.Get(ctx, key, s)).To(Succeed())
	return s
}

func condition(s *tallyv1.SegmentSource, t string) *metav1.Condition {
	return meta.FindStatusCondition(s.Status.Conditions, t)
}

// readyReason is "<status>/<reason>" of Ready, or "" when absent, for Eventually.
func readyReason(key client.ObjectKey) func() string {
	return func() string {
		s := &tallyv1.SegmentSource{}
		if err := k8s.Get(ctx, key, s); err != nil {
			return err.Error()
		}
		c := condition(s, tallyv1.ConditionReady)
		if c == nil {
			return ""
		}
		return string(c.Status) + "/" + c.Reason
	}
}

// kstatusOf computes the object's status the way kstatus consumers (Flux, Helm 4 --wait,
// cli-utils) do.
func kstatusOf(s *tallyv1.SegmentSource) status.Status {
	GinkgoHelper()
	s = s.DeepCopy()
	s.TypeMeta = metav1.TypeMeta{APIVersion: tallyv1.GroupVersion.String(), Kind: "SegmentSource"}
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(s)
	Expect(err).NotTo(HaveOccurred())
	res, err := status.Compute(&unstructured.Unstructured{Object: m})
	Expect(err).NotTo(HaveOccurred())
	return res.Status
}

// negativePolarity are the conditions that are bad news when True.
var negativePolarity = []string{tallyv1.ConditionReconciling, tallyv1.ConditionStalled}

// fluxViolations checks the status rules Flux's conditions checker enforces (fluxcd/pkg
// runtime/conditions/check, FAIL0001-FAIL0010); an empty result means the status complies.
func fluxViolations(s *tallyv1.SegmentSource) []string {
	var v []string
	ready := condition(s, tallyv1.ConditionReady)
	isTrue := func(t string) bool { c := condition(s, t); return c != nil && c.Status == metav1.ConditionTrue }
	readyTrue := ready != nil && ready.Status == metav1.ConditionTrue
	og, gen := s.Status.ObservedGeneration, s.Generation
	if readyTrue {
		for _, t := range negativePolarity {
			if isTrue(t) {
				v = append(v, "FAIL0001: "+t+" is True while Ready is True")
			}
		}
	}
	if ready == nil {
		v = append(v, "FAIL0002: Ready is missing")
	}
	if isTrue(tallyv1.ConditionReconciling) && ready != nil && ready.Status != metav1.ConditionFalse {
		v = append(v, "FAIL0003: Reconciling=True but Ready is not False")
	}
	if isTrue(tallyv1.ConditionStalled) && ready != nil && ready.Status != metav1.ConditionFalse {
		v = append(v, "FAIL0004: Stalled=True but Ready is not False")
	}
	if condition(s, tallyv1.ConditionReconciling) != nil && condition(s, tallyv1.ConditionStalled) != nil {
		v = append(v, "FAIL0005: Reconciling and Stalled are both present")
	}
	if og > gen {
		v = append(v, "FAIL0006: observedGeneration > generation")
	}
	if og < gen && readyTrue {
		v = append(v, "FAIL0007: Ready=True with observedGeneration < generation")
	}
	if readyTrue {
		for _, c := range s.Status.Conditions {
			if c.ObservedGeneration < gen {
				v = append(v, "FAIL0008: "+c.Type+" observedGeneration < generation while Ready")
			}
			if c.ObservedGeneration != og {
				v = append(v, "FAIL0009: "+c.Type+" observedGeneration != status.observedGeneration while Ready")
			}
		}
	}
	if rec := condition(s, tallyv1.ConditionReconciling); rec != nil && rec.Status == metav1.ConditionTrue && og >= rec.ObservedGeneration {
		v = append(v, "FAIL0010: Reconciling=True but status.observedGeneration is not below its observedGeneration")
	}
	return v
}

// expectStatusCompliant asserts the Flux rules and that every condition carries a generation.
func expectStatusCompliant(s *tallyv1.SegmentSource) {
	GinkgoHelper()
	Expect(fluxViolations(s)).To(BeEmpty())
	for _, c := range s.Status.Conditions {
		Expect(c.ObservedGeneration).To(BeNumerically(">", 0), "condition %s has no observedGeneration", c.Type)
	}
}

// makeAvailable stands in for the Deployment controller and kubelet, which envtest lacks: it
// reports every replica of the current generation as updated, ready and available.
func makeAvailable(ns, name string) {
	GinkgoHelper()
	Eventually(func() error {
		d := &appsv1.Deployment{}
		if err := k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, d); err != nil {
			return err
		}
		want := int32(1)
		if d.Spec.Replicas != nil {
			want = *d.Spec.Replicas
		}
		d.Status = appsv1.DeploymentStatus{
			ObservedGeneration: d.Generation, Replicas: want, UpdatedReplicas: want,
			ReadyReplicas: want, AvailableReplicas: want,
		}
		return k8s.Status().Update(ctx, d)
	}).Should(Succeed())
}

func makeAllAvailable(s *tallyv1.SegmentSource) {
	GinkgoHelper()
	makeAvailable(s.Namespace, resources.ReceiverName(s))
	makeAvailable(s.Namespace, resources.WorkerName(s))
}

func deployment(ns, name string) *appsv1.Deployment {
	GinkgoHelper()
	d := &appsv1.Deployment{}
	Expect(k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, d)).To(Succeed())
	return d
}

// eventReasons lists the reasons of the events.k8s.io Events about an object.
func eventReasons(ns, name string) []string {
	var list eventsv1.EventList
	Expect(k8s.List(ctx, &list, client.InNamespace(ns))).To(Succeed())
	var reasons []string
	for _, e := range list.Items {
		if e.Regarding.Name == name {
			reasons = append(reasons, e.Reason)
		}
	}
	return reasons
}

// streamExists reports whether the source's stream and worker consumer exist on the NATS server.
func streamExists(ns, name string) (streamOK, consumerOK bool) {
	src := stream.Source{Namespace: ns, Name: name}
	st, err := stream.Inspect(ctx, testJS, src)
	if err != nil {
		return false, false
	}
	return true, st.ConsumerExists
}

// counterSum adds up every series of a counter in the manager's metrics registry.
func counterSum(name string) float64 {
	GinkgoHelper()
	families, err := metrics.Registry.Gather()
	Expect(err).NotTo(HaveOccurred())
	var sum float64
	for _, f := range families {
		if f.GetName() == name {
			for _, m := range f.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// updateSource changes a source's spec, retrying on conflicts with the operator's status writes.
func updateSource(key client.ObjectKey, mutate func(*tallyv1.SegmentSource)) *tallyv1.SegmentSource {
	GinkgoHelper()
	s := &tallyv1.SegmentSource{}
	Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := k8s.Get(ctx, key, s); err != nil {
			return err
		}
		mutate(s)
		return k8s.Update(ctx, s)
	})).To(Succeed())
	return s
}

// EqualSemantically matches what equality.Semantic.DeepEqual calls equal: quantities by value, so
// "1Gi" read back from the API server equals resource.MustParse("1Gi").
func EqualSemantically(want any) gomegatypes.GomegaMatcher {
	return WithTransform(func(got any) bool { return equality.Semantic.DeepEqual(got, want) }, BeTrue())
}

// touch changes an annotation of the source, which triggers a reconcile without a new generation.
func touch(key client.ObjectKey) {
	GinkgoHelper()
	updateSource(key, func(s *tallyv1.SegmentSource) {
		if s.Annotations == nil {
			s.Annotations = map[string]string{}
		}
		s.Annotations["test.tally.dev/touched"] = fmt.Sprint(rand.Int())
	})
}

// ackAll takes every message of the source's stream through the workers' consumer and
// acknowledges it, as a worker does once the rows are committed, then purges it, as a worker
// does every second.
func ackAll(ns, name string, want int) {
	GinkgoHelper()
	c, err := testJS.Consumer(ctx, stream.Source{Namespace: ns, Name: name}.StreamName(), stream.WorkerConsumer)
	Expect(err).NotTo(HaveOccurred())
	batch, err := c.Fetch(want, jetstream.FetchMaxWait(5*time.Second))
	Expect(err).NotTo(HaveOccurred())
	got := 0
	for m := range batch.Messages() {
		Expect(m.DoubleAck(ctx)).To(Succeed())
		got++
	}
	Expect(got).To(Equal(want))
	_, _, err = stream.PurgeAcknowledged(ctx, testJS, stream.Source{Namespace: ns, Name: name}, c)
	Expect(err).NotTo(HaveOccurred())
}

// conditionOf is "<status>/<reason>" of a condition, or "" when absent, for Eventually.
func conditionOf(key client.ObjectKey, t string) func() string {
	return func() string {
		s := &tallyv1.SegmentSource{}
		if err := k8s.Get(ctx, key, s); err != nil {
			return err.Error()
		}
		c := condition(s, t)
		if c == nil {
			return ""
		}
		return string(c.Status) + "/" + c.Reason
	}
}
