package controllers

import (
	"context"
	"errors"
	"net/http"

	"github.com/nats-io/nats.go/jetstream"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/log"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
)

// reconcileStream makes sure the stream, the dead-letter stream and the workers' consumer exist
// with the configuration the spec asks for. It inspects first and calls stream.Ensure only when
// something is missing or the spec changed, so the periodic re-check costs reads, not writes; a
// stream deleted behind our back or lost in a NATS restart is re-created here.
func (r *SegmentSourceReconciler) reconcileStream(ctx context.Context, st *reconcileState) error {
	obj := st.source
	src := streamSource(obj)
	obj.Status.Stream = src.StreamName()
	if !r.NATS.Connected() {
		return r.streamUnavailable(st, transient(ReasonNATSUnavailable, nil, "NATS at %s is not reachable", r.NATS.URL()))
	}
	nctx, cancel := context.WithTimeout(ctx, r.Config.NATSTimeout)
	defer cancel()
	js := r.NATS.JetStream()

	state, err := stream.Inspect(nctx, js, src)
	missing := errors.Is(err, jetstream.ErrStreamNotFound)
	if err != nil && !missing {
		return r.streamUnavailable(st, r.natsError(err, "inspecting stream "+src.StreamName()))
	}
	specChanged := obj.Status.ObservedGeneration != obj.Generation
	if missing || specChanged || !state.ConsumerExists || !state.DeadLetterStreamExists {
		settings := source.FromSpec(obj).StreamSettings()
		if err := stream.Ensure(nctx, js, src, settings); err != nil {
			if refusedConfig(err) {
				return r.streamUnavailable(st, stalled(ReasonStreamRejected,
					"JetStream refused the stream configuration (fix spec.stream): %v", err))
			}
			return r.streamUnavailable(st, r.natsError(err, "ensuring stream "+src.StreamName()))
		}
		if (missing || !state.ConsumerExists) && !specChanged {
			// The objects existed before (this generation was already reconciled): someone or
			// something removed them. Say so once; the Ready transition shows nothing otherwise.
			r.Recorder.Eventf(obj, nil, "Warning", "StreamRecreated", "Reconcile",
				"stream %s or its consumer was missing on the NATS server and has been re-created", src.StreamName())
			log.FromContext(ctx).Info("re-created missing stream or consumer", "stream", src.StreamName())
		}
		if state, err = stream.Inspect(nctx, js, src); err != nil {
			return r.streamUnavailable(st, r.natsError(err, "inspecting stream "+src.StreamName()))
		}
	}
	st.streamState = state
	setCondition(obj, tallyv1.ConditionStreamReady, metav1.ConditionTrue, ReasonStreamReady,
		"stream "+src.StreamName()+" and consumer "+stream.WorkerConsumer+" exist")
	return nil
}

// streamUnavailable marks the stream condition from the failure before handing the error on, so
// the detail condition never claims a stream that could not be checked.
func (r *SegmentSourceReconciler) streamUnavailable(st *reconcileState, err error) error {
	re := asReconcileError(err)
	setCondition(st.source, tallyv1.ConditionStreamReady, metav1.ConditionFalse, re.reason, re.message)
	return err
}

// natsError classifies a failed JetStream request. An API error is the server answering (and
// refusing); anything else (a timeout, a closed connection, no responders while JetStream
// restarts) means the server could not be reached, which is what the message says.
func (r *SegmentSourceReconciler) natsError(err error, doing string) error {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return transient(ReasonNATSUnavailable, err, "JetStream at %s failed %s", r.NATS.URL(), doing)
	}
	return transient(ReasonNATSUnavailable, err, "NATS at %s is not reachable (%s)", r.NATS.URL(), doing)
}

// errCodeReplicasNotSupported is JetStream's answer to replicas > 1 on a server that is not
// clustered (nats-server JSStreamReplicasNotSupportedErr).
const errCodeReplicasNotSupported jetstream.ErrorCode = 10074

// refusedConfig reports whether JetStream refused the configuration itself, which retrying the
// same spec cannot fix (kstatus Stalled), as opposed to failing to answer.
func refusedConfig(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	return apiErr.Code == http.StatusBadRequest || apiErr.ErrorCode == errCodeReplicasNotSupported
}
