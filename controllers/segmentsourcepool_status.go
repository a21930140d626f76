package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
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

// observe counts the members (sources whose entry is in the bucket) and reports the Deployments.
func (p *SegmentSourcePoolReconciler) observe(ctx context.Context, st *poolState) error {
	obj := st.pool
	n, err := p.countMembers(ctx, obj)
	if err != nil {
		return transient(ReasonReconcileError, err, "listing the pool's members")
	}
	obj.Status.Members = n
	status, reason, msg := deploymentAvailability("receiver", st.receiver)
	setPoolCondition(obj, tallyv1.ConditionReceiverAvailable, status, reason, msg)
	status, reason, msg = deploymentAvailability("worker", st.worker)
	setPoolCondition(obj, tallyv1.ConditionWorkerAvailable, status, reason, msg)
	return nil
}

// countMembers counts the sources naming the pool whose entry is written (status.pool).
func (p *SegmentSourcePoolReconciler) countMembers(ctx context.Context, obj *tallyv1.SegmentSourcePool) (int32, error) {
	var list tallyv1.SegmentSourceList
	key := obj.Namespace + "/" + obj.Name
	if err := p.Sources.List(ctx, &list, client.MatchingFields{poolIndex: key}); err != nil {
		return 0, err
	}
	var n int32
	for i := range list.Items {
		if list.Items[i].Status.Pool == key {
			n++
		}
	}
	return n, nil
}

// finish summarises the pool's conditions as the source controller does (kstatus), writes status
// only when it changed and emits an Event when Ready changes.
func (p *SegmentSourcePoolReconciler) finish(ctx context.Context, st *poolState, result ctrl.Result, recErr error) (ctrl.Result, error) {
	if st.finalized {
		return result, recErr
	}
	obj := st.pool
	summarizePool(obj, recErr)
	if !equality.Semantic.DeepEqual(obj.Status, st.original.Status) {
		base := obj.DeepCopy()
		base.Status = *st.original.Status.DeepCopy()
		if err := p.Sources.Status().Patch(ctx, obj, client.MergeFrom(base)); err != nil && !kerrors.IsNotFound(err) {
			log.FromContext(ctx).Error(err, "writing status")
			if recErr == nil {
				recErr = err
			}
		} else if err == nil {
			p.Sources.Metrics.StatusWritten()
		}
	}
	before := meta.FindStatusCondition(st.original.Status.Conditions, tallyv1.ConditionReady)
	after := meta.FindStatusCondition(obj.Status.Conditions, tallyv1.ConditionReady)
	if after != nil && (before == nil || before.Status != after.Status || before.Reason != after.Reason) {
		eventType := corev1.EventTypeNormal
		if after.Status != metav1.ConditionTrue && after.Reason != ReasonRollingOut && after.Reason != ReasonProgressing {
			eventType = corev1.EventTypeWarning
		}
		p.Sources.Recorder.Eventf(obj, nil, eventType, after.Reason, "Reconcile", "%s", after.Message)
	}
	if recErr == nil {
		return result, nil
	}
	re := asReconcileError(recErr)
	switch re.kind {
	case kindWaiting:
		return ctrl.Result{RequeueAfter: re.requeueAfter}, nil
	case kindStalled:
		return ctrl.Result{}, reconcile.TerminalError(re)
	default:
		return ctrl.Result{}, re
	}
}

// summarizePool: Ready when both Deployments are available; Reconciling and Stalled as kstatus
// wants them (see summarize).
func summarizePool(obj *tallyv1.SegmentSourcePool, recErr error) {
	if recErr == nil {
		obj.Status.ObservedGeneration = obj.Generation
		meta.RemoveStatusCondition(&obj.Status.Conditions, tallyv1.ConditionReconciling)
		meta.RemoveStatusCondition(&obj.Status.Conditions, tallyv1.ConditionStalled)
		for _, t := range []string{tallyv1.ConditionReceiverAvailable, tallyv1.ConditionWorkerAvailable} {
			if c := meta.FindStatusCondition(obj.Status.Conditions, t); c == nil || c.Status != metav1.ConditionTrue {
				reason, msg := ReasonProgressing, t+" not yet known"
				if c != nil {
					reason, msg = c.Reason, c.Message
				}
				setPoolCondition(obj, tallyv1.ConditionReady, metav1.ConditionFalse, reason, msg)
				return
			}
		}
		setPoolCondition(obj, tallyv1.ConditionReady, metav1.ConditionTrue, ReasonSucceeded,
			fmt.Sprintf("receivers available at %s for %d member(s)", obj.Status.Endpoint, obj.Status.Members))
		return
	}
	poolConditions(obj).failed(recErr)
}

func setPoolCondition(obj *tallyv1.SegmentSourcePool, condType string, status metav1.ConditionStatus, reason, message string) {
	poolConditions(obj).set(condType, status, reason, message)
}

func poolConditions(obj *tallyv1.SegmentSourcePool) statusConditions {
	return statusConditions{&obj.Status.Conditions, &obj.Status.ObservedGeneration, obj.Generation}
}
