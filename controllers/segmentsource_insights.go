package controllers

import (
	"context"
	"fmt"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/log"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/resources"
	"github.com/tallyhq/tally/workers/source"
)

// Reasons of the InsightsDelivered condition.
const (
	ReasonInsightsDelivered   = "Delivered"
	ReasonInsightsFailed      = "DeliveryFailed"
	ReasonInsightsPending     = "NoPushYet"
	ReasonInsightsOverdue     = "PushOverdue"
	ReasonInsightsStatusUnset = "StatusUnavailable"
)

// InsightsRecord is how a source's insight pushes went, as the workers record it in Postgres.
type InsightsRecord struct {
	LastAttemptAt  time.Time
	LastPushAt     *time.Time
	EntitiesPushed int64
	LastError      string
}

// insightsActive reports whether the source's workers push insights.
func insightsActive(obj *tallyv1.SegmentSource) bool {
	return obj.Spec.Insights != nil && !obj.Spec.Insights.Suspend
}

// reconcileInsightsSecret checks the insights write key Secret of a source that pushes insights,
// under the rules of every Secret a source names (label, key present), and hashes the key so a
// new one rolls the workers. A problem with it blocks the source like a missing write key does:
// the worker pods mount it. InsightsDelivered says so too.
func (r *SegmentSourceReconciler) reconcileInsightsSecret(ctx context.Context, st *reconcileState) error {
	obj := st.source
	st.insightsWriteKey, st.insightsKey = nil, ""
	if obj.Spec.Insights == nil {
		meta.RemoveStatusCondition(&obj.Status.Conditions, tallyv1.ConditionInsightsDelivered)
		obj.Status.Insights = nil
		return nil
	}
	if !insightsActive(obj) {
		return nil
	}
	ref := obj.Spec.Insights.WriteKeySecretRef
	value, err := r.readSourceSecretKey(ctx, obj.Namespace, ref.Name, ref.WriteKeyKey(), "insights write key")
	if err == nil && len(source.ParseWriteKeys(string(value))) == 0 {
		err = waiting(ReasonSecretKeyNotFound, waitForSecretRequeue,
			"key %q of insights write key Secret %q holds no write key", ref.WriteKeyKey(), ref.Name)
	}
	if err != nil {
		re := asReconcileError(err)
		setCondition(obj, tallyv1.ConditionInsightsDelivered, metav1.ConditionFalse, re.reason, re.message)
		return err
	}
	key := source.ParseWriteKeys(string(value))[0]
	st.insightsKey = key
	st.insightsWriteKey = &resources.SecretKey{Name: ref.Name, Key: ref.WriteKeyKey(),
		Hash: resources.Hash(map[string][]byte{"key": []byte(key)})}
	return nil
}

// observeInsights reports the pushes in status.insights and InsightsDelivered, from the rows the
// workers record. The condition is not part of Ready: Ready says whether Tally ingests, and a
// Segment outage or a revoked insights key must not make GitOps tools roll back or wait on a
// source that takes its traffic fine. When the database does not answer, the last report stays.
func (r *SegmentSourceReconciler) observeInsights(ctx context.Context, obj *tallyv1.SegmentSource) {
	spec := obj.Spec.Insights
	if spec == nil {
		return
	}
	switch {
	case spec.Suspend:
		setCondition(obj, tallyv1.ConditionInsightsDelivered, metav1.ConditionFalse, ReasonSuspended,
			"spec.insights.suspend is true: no insights are pushed; resuming sends what changed meanwhile")
		return
	case obj.Spec.Suspend:
		setCondition(obj, tallyv1.ConditionInsightsDelivered, metav1.ConditionFalse, ReasonSuspended,
			"the source is suspended: its workers, which push the insights, are scaled to zero")
		return
	case r.Rows == nil:
		setCondition(obj, tallyv1.ConditionInsightsDelivered, metav1.ConditionUnknown, ReasonInsightsStatusUnset,
			"the manager has no database to read the pushes from")
		return
	}
	ctx, cancel := context.WithTimeout(ctx, rowsTimeout)
	defer cancel()
	rec, found, err := r.Rows.Insights(ctx, obj.Spec.Tenant, obj.Namespace+"/"+obj.Name)
	if err != nil {
		log.FromContext(ctx).V(1).Info("insights status not read", "error", err)
		// The last report stays, stamped with this generation: it is still the best knowledge.
		if c := meta.FindStatusCondition(obj.Status.Conditions, tallyv1.ConditionInsightsDelivered); c != nil {
			setCondition(obj, c.Type, c.Status, c.Reason, c.Message)
		}
		return
	}
	if !found {
		setCondition(obj, tallyv1.ConditionInsightsDelivered, metav1.ConditionUnknown, ReasonInsightsPending,
			"no insights pushed yet: a worker pushes them to "+spec.EndpointOrDefault()+" when it starts, then every "+spec.IntervalOrDefault().String())
		return
	}
	obj.Status.Insights = &tallyv1.InsightsStatus{
		LastAttemptAt:  timeOrNil(rec.LastAttemptAt),
		EntitiesPushed: rec.EntitiesPushed,
		LastError:      truncate(rec.LastError, 1024),
	}
	if rec.LastPushAt != nil {
		obj.Status.Insights.LastPushAt = timeOrNil(*rec.LastPushAt)
	}
	// A push ends at least every interval (failures retry sooner): long silence means no worker
	// pushes, or one is stuck.
	overdue := 2*spec.IntervalOrDefault() + 2*time.Minute
	switch {
	case time.Since(rec.LastAttemptAt) > overdue:
		setCondition(obj, tallyv1.ConditionInsightsDelivered, metav1.ConditionUnknown, ReasonInsightsOverdue,
			fmt.Sprintf("no push ended since %s (interval %s); is a worker running?", rec.LastAttemptAt.UTC().Format(time.RFC3339), spec.IntervalOrDefault()))
	case rec.LastError != "":
		setCondition(obj, tallyv1.ConditionInsightsDelivered, metav1.ConditionFalse, ReasonInsightsFailed, rec.LastError)
	default:
		setCondition(obj, tallyv1.ConditionInsightsDelivered, metav1.ConditionTrue, ReasonInsightsDelivered,
			fmt.Sprintf("the push at %s delivered %d changed account(s) and user(s) to %s",
				rec.LastAttemptAt.UTC().Format(time.RFC3339), rec.EntitiesPushed, strings.TrimSuffix(spec.EndpointOrDefault(), "/")))
	}
}
