package controllers

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	kerrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
)

// observe records what is really running: whether the Deployments are available, the message
// times and backlog from JetStream, and whether any message has arrived (Receiving).
func (r *SegmentSourceReconciler) observe(ctx context.Context, st *reconcileState) error {
	obj := st.source
	r.observeRows(ctx, obj)
	r.observeInsights(ctx, obj)
	setDeploymentCondition(obj, tallyv1.ConditionReceiverAvailable, "receiver", st.receiver)
	setDeploymentCondition(obj, tallyv1.ConditionWorkerAvailable, "worker", st.worker)

	s := st.streamState
	obj.Status.Backlog = int64(s.Backlog)
	// The stream forgets: the workers purge what they acknowledged, and a re-created
	// stream starts over. So the status keeps the earliest first and the latest last message
	// time it ever saw, and Receiving, once true, stays true for the life of the object.
	if s.LastSequence > 0 {
		first := s.FirstMessageAt
		if first.IsZero() {
			first = s.LastMessageAt // the oldest message time the stream still knows
		}
		if t := timeOrNil(first); t != nil && (obj.Status.FirstMessageAt == nil || t.Before(obj.Status.FirstMessageAt)) {
			obj.Status.FirstMessageAt = t
		}
		if t := timeOrNil(s.LastMessageAt); t != nil && (obj.Status.LastMessageAt == nil || obj.Status.LastMessageAt.Before(t)) {
			obj.Status.LastMessageAt = t
		}
	}
	if obj.Status.FirstMessageAt != nil {
		setCondition(obj, tallyv1.ConditionReceiving, metav1.ConditionTrue, ReasonFirstMessage,
			fmt.Sprintf("first message reached stream %s at %s", obj.Status.Stream, obj.Status.FirstMessageAt.UTC().Format(time.RFC3339)))
	} else {
		setCondition(obj, tallyv1.ConditionReceiving, metav1.ConditionFalse, ReasonNoMessages,
			"no message has reached the stream yet; point Segment at "+obj.Status.Endpoint)
	}
	return nil
}

// observeRows reports the tenant's unnamed accounts and a summary of its event catalog. The
// database is a nice-to-have here: when it does not answer, the last figures stay and nothing
// else waits for it.
func (r *SegmentSourceReconciler) observeRows(ctx context.Context, obj *tallyv1.SegmentSource) {
	if r.Rows == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, rowsTimeout)
	defer cancel()
	n, err := r.Rows.UnnamedAccounts(ctx, obj.Spec.Tenant)
	if err != nil {
		log.FromContext(ctx).V(1).Info("tenant rows not read", "error", err)
		return
	}
	obj.Status.UnnamedAccounts = &n
	catalog, err := r.Rows.Catalog(ctx, obj.Spec.Tenant)
	if err != nil {
		log.FromContext(ctx).V(1).Info("tenant catalog not read", "error", err)
		return
	}
	obj.Status.Catalog = &catalog
}

// rowsTimeout bounds the status's look at the tenant's rows.
const rowsTimeout = 2 * time.Second

// setDeploymentCondition reports a Deployment as available only when it has observed its latest
// spec, every replica runs that spec, and all of them are available: a rollout in progress is not
// "available", which is what a user waiting for a settings change needs to know.
func setDeploymentCondition(obj *tallyv1.SegmentSource, condType, what string, d *appsv1.Deployment) {
	status, reason, msg := deploymentAvailability(what, d)
	setCondition(obj, condType, status, reason, msg)
}

func deploymentAvailability(what string, d *appsv1.Deployment) (metav1.ConditionStatus, string, string) {
	if d == nil {
		return metav1.ConditionFalse, ReasonRollingOut, what + " Deployment not created yet"
	}
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	s := d.Status
	switch {
	case s.ObservedGeneration < d.Generation:
		return metav1.ConditionFalse, ReasonRollingOut, fmt.Sprintf("%s Deployment %s: rollout of generation %d not started yet", what, d.Name, d.Generation)
	case s.UpdatedReplicas < want || s.Replicas > s.UpdatedReplicas:
		return metav1.ConditionFalse, ReasonRollingOut, fmt.Sprintf("%s Deployment %s: %d of %d replicas updated", what, d.Name, s.UpdatedReplicas, want)
	case s.AvailableReplicas < want:
		return metav1.ConditionFalse, ReasonUnavailable, fmt.Sprintf("%s Deployment %s: %d of %d replicas available", what, d.Name, s.AvailableReplicas, want)
	case want == 0:
		return metav1.ConditionTrue, ReasonScaledToZero, what + " Deployment " + d.Name + " scaled to zero"
	default:
		return metav1.ConditionTrue, ReasonAvailable, fmt.Sprintf("%s Deployment %s: %d of %d replicas available", what, d.Name, s.AvailableReplicas, want)
	}
}

// finish runs in Reconcile's defer: it turns the outcome into kstatus-correct conditions, writes
// status once if it changed, emits an Event when Ready changes, records metrics and picks the
// result.
//
//   - success: observedGeneration catches up; Reconciling and Stalled go; Ready summarises the
//     detail conditions (True only when the stream exists and both Deployments are available).
//   - stalled (retry cannot help): Stalled=True, Ready=False, observedGeneration catches up (the
//     generation was looked at), no requeue until the spec changes.
//   - waiting/transient: Ready=False with the precise reason. Reconciling=True only while this
//     generation has not been observed yet (kstatus: Reconciling means "working towards the new
//     spec"; Flux FAIL0010 forbids it once observedGeneration caught up).
func (r *SegmentSourceReconciler) finish(ctx context.Context, st *reconcileState, result ctrl.Result, recErr error, start time.Time) (ctrl.Result, error) {
	obj := st.source
	defer func() { r.Metrics.ObserveReconcile(obj, st.finalized, time.Since(start)) }()
	if st.finalized {
		return result, recErr
	}
	summarize(obj, recErr)
	if err := r.patchStatus(ctx, st); err != nil {
		if recErr == nil {
			recErr = err
		}
		log.FromContext(ctx).Error(err, "writing status")
	}
	r.recordTransition(st)

	if recErr == nil {
		return result, nil
	}
	re := asReconcileError(recErr)
	switch re.kind {
	case kindWaiting:
		log.FromContext(ctx).Info("waiting", "reason", re.reason, "message", re.message)
		return ctrl.Result{RequeueAfter: re.requeueAfter}, nil
	case kindStalled:
		return ctrl.Result{}, reconcile.TerminalError(re)
	default:
		return ctrl.Result{}, re
	}
}

// summarize sets Ready, Reconciling and Stalled from the outcome and the detail conditions.
func summarize(obj *tallyv1.SegmentSource, recErr error) {
	if recErr == nil {
		obj.Status.ObservedGeneration = obj.Generation
		meta.RemoveStatusCondition(&obj.Status.Conditions, tallyv1.ConditionReconciling)
		meta.RemoveStatusCondition(&obj.Status.Conditions, tallyv1.ConditionStalled)
		for _, t := range []string{tallyv1.ConditionStreamReady, tallyv1.ConditionReceiverAvailable, tallyv1.ConditionWorkerAvailable} {
			if c := meta.FindStatusCondition(obj.Status.Conditions, t); c == nil || c.Status != metav1.ConditionTrue {
				reason, msg := ReasonProgressing, t+" not yet known"
				if c != nil {
					reason, msg = c.Reason, c.Message
				}
				setCondition(obj, tallyv1.ConditionReady, metav1.ConditionFalse, reason, msg)
				return
			}
		}
		if obj.Spec.Suspend && obj.Spec.Pool != nil {
			setCondition(obj, tallyv1.ConditionReady, metav1.ConditionTrue, ReasonSuspended,
				"suspended: the pool's receivers refuse its messages and its workers leave its stream; stream "+obj.Status.Stream+" and data kept")
			return
		}
		if obj.Spec.Suspend {
			setCondition(obj, tallyv1.ConditionReady, metav1.ConditionTrue, ReasonSuspended,
				"suspended: receiver and workers scaled to zero; stream "+obj.Status.Stream+" and data kept")
			return
		}
		setCondition(obj, tallyv1.ConditionReady, metav1.ConditionTrue, ReasonSucceeded,
			"receiver available at "+obj.Status.Endpoint)
		return
	}
	sourceConditions(obj).failed(recErr)
}

// patchStatus writes status with one merge patch when it changed. The patch base differs from the
// object only in status, so no resourceVersion precondition is sent: the operator is the only
// writer of this status, and a stale write is corrected by the reconcile the next event triggers.
func (r *SegmentSourceReconciler) patchStatus(ctx context.Context, st *reconcileState) error {
	obj := st.source
	if equality.Semantic.DeepEqual(obj.Status, st.original.Status) {
		return nil
	}
	base := obj.DeepCopy()
	base.Status = *st.original.Status.DeepCopy()
	if err := r.Status().Patch(ctx, obj, client.MergeFrom(base)); err != nil {
		if kerrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("patching status: %w", err)
	}
	r.Metrics.StatusWritten()
	return nil
}

// recordTransition emits one Event when Ready changes status or reason, so a user reading
// `kubectl describe` sees each state change once, not every periodic reconcile.
func (r *SegmentSourceReconciler) recordTransition(st *reconcileState) {
	before := meta.FindStatusCondition(st.original.Status.Conditions, tallyv1.ConditionReady)
	after := meta.FindStatusCondition(st.source.Status.Conditions, tallyv1.ConditionReady)
	if after == nil || (before != nil && before.Status == after.Status && before.Reason == after.Reason) {
		return
	}
	eventType := corev1.EventTypeNormal
	if after.Status != metav1.ConditionTrue {
		eventType = corev1.EventTypeWarning
	}
	if after.Reason == ReasonRollingOut || after.Reason == ReasonProgressing {
		eventType = corev1.EventTypeNormal
	}
	r.Recorder.Eventf(st.source, nil, eventType, after.Reason, "Reconcile", "%s", after.Message)
}

// setCondition sets a condition stamped with the object's generation. The transition time only
// moves when the status flips (meta.SetStatusCondition keeps it otherwise).
func setCondition(obj *tallyv1.SegmentSource, condType string, status metav1.ConditionStatus, reason, message string) {
	sourceConditions(obj).set(condType, status, reason, message)
}

func sourceConditions(obj *tallyv1.SegmentSource) statusConditions {
	return statusConditions{&obj.Status.Conditions, &obj.Status.ObservedGeneration, obj.Generation}
}

func timeOrNil(t time.Time) *metav1.Time {
	if t.IsZero() {
		return nil
	}
	mt := metav1.NewTime(t.UTC().Truncate(time.Second))
	return &mt
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}
