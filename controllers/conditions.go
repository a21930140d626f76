package controllers

import (
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
)

// statusConditions is the part of a SegmentSource's or a SegmentSourcePool's status the
// kstatus conditions live in, so both kinds report a reconcile the same way.
type statusConditions struct {
	conditions         *[]metav1.Condition
	observedGeneration *int64
	generation         int64
}

func (s statusConditions) set(condType string, status metav1.ConditionStatus, reason, message string) {
	meta.SetStatusCondition(s.conditions, metav1.Condition{
		Type:               condType,
		Status:             status,
		Reason:             reason,
		Message:            truncate(message, 1024),
		ObservedGeneration: s.generation,
	})
}

// failed reports a reconcile that ended in recErr: Ready False; Stalled (the generation observed,
// nothing to retry) or Reconciling while the generation is not observed yet.
func (s statusConditions) failed(recErr error) {
	re := asReconcileError(recErr)
	s.set(tallyv1.ConditionReady, metav1.ConditionFalse, re.reason, re.message)
	if re.kind == kindStalled {
		*s.observedGeneration = s.generation
		meta.RemoveStatusCondition(s.conditions, tallyv1.ConditionReconciling)
		s.set(tallyv1.ConditionStalled, metav1.ConditionTrue, re.reason, re.message)
		return
	}
	meta.RemoveStatusCondition(s.conditions, tallyv1.ConditionStalled)
	if *s.observedGeneration < s.generation {
		reason := re.reason
		if re.kind == kindTransient {
			reason = ReasonProgressingRetry
		}
		s.set(tallyv1.ConditionReconciling, metav1.ConditionTrue, reason, re.message)
	} else {
		meta.RemoveStatusCondition(s.conditions, tallyv1.ConditionReconciling)
	}
}
