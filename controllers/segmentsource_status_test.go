package controllers

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/resources"
)

func kstatus(t *testing.T, s *tallyv1.SegmentSource) status.Status {
	t.Helper()
	s = s.DeepCopy()
	s.TypeMeta = metav1.TypeMeta{APIVersion: tallyv1.GroupVersion.String(), Kind: "SegmentSource"}
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(s)
	if err != nil {
		t.Fatal(err)
	}
	res, err := status.Compute(&unstructured.Unstructured{Object: m})
	if err != nil {
		t.Fatal(err)
	}
	return res.Status
}

// TestSummarize covers the outcome → conditions mapping for every error kind, on a fresh
// generation and on one already observed.
func TestSummarize(t *testing.T) {
	available := func(s *tallyv1.SegmentSource) {
		for _, c := range []string{tallyv1.ConditionStreamReady, tallyv1.ConditionReceiverAvailable, tallyv1.ConditionWorkerAvailable} {
			setCondition(s, c, metav1.ConditionTrue, ReasonAvailable, "ok")
		}
	}
	for _, tc := range []struct {
		name        string
		observed    int64
		prepare     func(*tallyv1.SegmentSource)
		err         error
		ready       metav1.ConditionStatus
		reason      string
		reconciling bool
		stalled     bool
		kstatus     status.Status
		observedOut int64
	}{
		{name: "success", observed: -1, prepare: available, ready: metav1.ConditionTrue, reason: ReasonSucceeded,
			kstatus: status.CurrentStatus, observedOut: 2},
		{name: "success but receiver rolling out", observed: 1, prepare: func(s *tallyv1.SegmentSource) {
			available(s)
			setCondition(s, tallyv1.ConditionReceiverAvailable, metav1.ConditionFalse, ReasonRollingOut, "1 of 2 updated")
		}, ready: metav1.ConditionFalse, reason: ReasonRollingOut, kstatus: status.InProgressStatus, observedOut: 2},
		{name: "waiting on a new generation", observed: 1, prepare: available,
			err:   waiting(ReasonSecretNotFound, time.Minute, "Secret %q not found", "x"),
			ready: metav1.ConditionFalse, reason: ReasonSecretNotFound, reconciling: true, kstatus: status.InProgressStatus, observedOut: 1},
		{name: "transient on an observed generation", observed: 2, prepare: available,
			err:   transient(ReasonNATSUnavailable, errors.New("timeout"), "NATS down"),
			ready: metav1.ConditionFalse, reason: ReasonNATSUnavailable, kstatus: status.InProgressStatus, observedOut: 2},
		{name: "stalled", observed: 1, prepare: available,
			err:   stalled(ReasonStreamRejected, "refused"),
			ready: metav1.ConditionFalse, reason: ReasonStreamRejected, stalled: true, kstatus: status.FailedStatus, observedOut: 2},
		{name: "suspended", observed: 1, prepare: func(s *tallyv1.SegmentSource) { s.Spec.Suspend = true; available(s) },
			ready: metav1.ConditionTrue, reason: ReasonSuspended, kstatus: status.CurrentStatus, observedOut: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &tallyv1.SegmentSource{ObjectMeta: metav1.ObjectMeta{Name: "a", Namespace: "n", Generation: 2}}
			s.Status.ObservedGeneration = tc.observed
			// A leftover Stalled from an earlier generation must go away on any other outcome.
			setCondition(s, tallyv1.ConditionStalled, metav1.ConditionTrue, "Old", "old")
			tc.prepare(s)
			summarize(s, tc.err)
			ready := meta.FindStatusCondition(s.Status.Conditions, tallyv1.ConditionReady)
			if ready == nil || ready.Status != tc.ready || ready.Reason != tc.reason || ready.ObservedGeneration != 2 {
				t.Fatalf("Ready = %+v, want %s/%s", ready, tc.ready, tc.reason)
			}
			if got := meta.IsStatusConditionTrue(s.Status.Conditions, tallyv1.ConditionReconciling); got != tc.reconciling {
				t.Errorf("Reconciling = %v, want %v", got, tc.reconciling)
			}
			if got := meta.FindStatusCondition(s.Status.Conditions, tallyv1.ConditionStalled) != nil; got != tc.stalled {
				t.Errorf("Stalled present = %v, want %v", got, tc.stalled)
			}
			if s.Status.ObservedGeneration != tc.observedOut {
				t.Errorf("observedGeneration = %d, want %d", s.Status.ObservedGeneration, tc.observedOut)
			}
			if got := kstatus(t, s); got != tc.kstatus {
				t.Errorf("kstatus = %s, want %s", got, tc.kstatus)
			}
		})
	}
}

type downNATS struct{}

func (downNATS) JetStream() jetstream.JetStream { return nil }
func (downNATS) Connected() bool                { return false }
func (downNATS) URL() string                    { return "nats://nowhere:4222" }

// TestReconcileStallsWithoutDatabase runs the whole Reconcile on a fake client: a source that
// names no database Secret, on a manager started without --database-secret, cannot be fixed by
// retrying, so it is Stalled (kstatus Failed) and not requeued.
func TestReconcileStallsWithoutDatabase(t *testing.T) {
	scheme := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	_ = tallyv1.AddToScheme(scheme)
	src := &tallyv1.SegmentSource{
		ObjectMeta: metav1.ObjectMeta{Name: "a", Namespace: "n", Generation: 1},
		Spec:       tallyv1.SegmentSourceSpec{Tenant: "t", WriteKeySecretRef: tallyv1.SecretKeyRef{Name: "keys"}},
	}
	src.Status.ObservedGeneration = -1
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "keys", Namespace: "n", Labels: map[string]string{resources.LabelSourceSecret: "true"}},
		Data: map[string][]byte{"writeKey": []byte("k")}}
	c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(src, secret).WithStatusSubresource(src).
		WithIndex(&tallyv1.SegmentSource{}, tenantIndex, tenantOf).Build()
	rec := events.NewFakeRecorder(10)
	r := &SegmentSourceReconciler{Client: c, APIReader: c, Recorder: rec, NATS: downNATS{},
		Config: Config{Interval: time.Minute, NATSTimeout: time.Second}}

	res, err := r.Reconcile(context.Background(), ctrl.Request{NamespacedName: client.ObjectKeyFromObject(src)})
	if !errors.Is(err, reconcile.TerminalError(nil)) {
		t.Fatalf("err = %v, want a terminal error", err)
	}
	if res.RequeueAfter != 0 {
		t.Errorf("requeue after %s, want none", res.RequeueAfter)
	}
	got := &tallyv1.SegmentSource{}
	if err := c.Get(context.Background(), client.ObjectKeyFromObject(src), got); err != nil {
		t.Fatal(err)
	}
	stalledCond := meta.FindStatusCondition(got.Status.Conditions, tallyv1.ConditionStalled)
	if stalledCond == nil || stalledCond.Reason != ReasonNoDatabaseSecret {
		t.Fatalf("Stalled = %+v", stalledCond)
	}
	if got := kstatus(t, got); got != status.FailedStatus {
		t.Errorf("kstatus = %s, want Failed", got)
	}
	select {
	case e := <-rec.Events:
		if e == "" {
			t.Error("empty event")
		}
	default:
		t.Error("no Event for the transition to Stalled")
	}
}

// secretNATS is a NATS server whose URL list carries passwords, down at the moment.
type secretNATS struct{}

func (secretNATS) JetStream() jetstream.JetStream { return nil }
func (secretNATS) Connected() bool                { return false }
func (secretNATS) URL() string {
	return "nats://tally:hunter2@nats-0:4222,nats://tally:hunter2@nats-1:4222"
}

// TestStreamConditionRedactsNATSPassword: condition messages (and the Events and logs made from
// them) name the NATS servers, never their passwords.
func TestStreamConditionRedactsNATSPassword(t *testing.T) {
	src := &tallyv1.SegmentSource{ObjectMeta: metav1.ObjectMeta{Name: "a", Namespace: "n", Generation: 1}}
	r := &SegmentSourceReconciler{NATS: secretNATS{}, Config: Config{NATSTimeout: time.Second}}
	st := &reconcileState{source: src, original: src.DeepCopy()}
	err := r.reconcileStream(context.Background(), st)
	if err == nil {
		t.Fatal("reconcileStream succeeded with NATS down")
	}
	c := meta.FindStatusCondition(src.Status.Conditions, tallyv1.ConditionStreamReady)
	if c == nil {
		t.Fatal("no StreamReady condition")
	}
	for _, text := range []string{c.Message, err.Error(), asReconcileError(err).message} {
		if strings.Contains(text, "hunter2") {
			t.Errorf("password in %q", text)
		}
	}
	if want := "nats://tally:xxxxx@nats-0:4222,nats://tally:xxxxx@nats-1:4222"; !strings.Contains(c.Message, want) {
		t.Errorf("condition message %q does not name the servers as %q", c.Message, want)
	}
	// An error text from a library that quotes the URL is redacted too.
	wrapped := redacted(errors.New(`dial nats://tally:hunter2@nats-0:4222: connection refused`))
	if strings.Contains(wrapped.Error(), "hunter2") || !strings.Contains(wrapped.Error(), "nats://tally:xxxxx@nats-0:4222") {
		t.Errorf("redacted error = %q", wrapped.Error())
	}
}

// TestClaimedBefore: the earliest source owns its tenant; a same-second tie goes to the
// namespace, then the name, that sorts first, so exactly one namespace wins.
func TestClaimedBefore(t *testing.T) {
	at := func(ns, name string, sec int64) *tallyv1.SegmentSource {
		return &tallyv1.SegmentSource{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
			CreationTimestamp: metav1.NewTime(time.Unix(sec, 0))}}
	}
	for _, tc := range []struct {
		a, b *tallyv1.SegmentSource
		want bool
	}{
		{at("z", "x", 1), at("a", "x", 2), true},
		{at("a", "x", 2), at("z", "x", 1), false},
		{at("a", "x", 1), at("b", "x", 1), true},
		{at("b", "x", 1), at("a", "x", 1), false},
		{at("a", "x", 1), at("a", "y", 1), true},
	} {
		if got := claimedBefore(tc.a, tc.b); got != tc.want {
			t.Errorf("claimedBefore(%s/%s@%v, %s/%s@%v) = %t, want %t", tc.a.Namespace, tc.a.Name, tc.a.CreationTimestamp,
				tc.b.Namespace, tc.b.Name, tc.b.CreationTimestamp, got, tc.want)
		}
	}
}
