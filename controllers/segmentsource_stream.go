package controllers

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"

	corev1 "k8s.io/api/core/v1"

	"github.com/nats-io/nats.go/jetstream"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/log"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/resources"
	"github.com/tallyhq/tally/workers/stream"
)

// reconcileStream makes sure the stream, the dead-letter stream and the workers' consumer exist
// with the configuration the spec asks for. It inspects first and calls stream.Ensure only when
// what the server has differs from the desired configuration, so the periodic re-check costs
// reads, not writes. Comparing with the server (not with observedGeneration) means a stream
// deleted behind our back, lost in a NATS restart or edited by hand is corrected here, and a
// change JetStream refused keeps being refused (Stalled) on every reconcile until the spec is
// fixed, instead of a later reconcile reporting Ready over a stream that does not match the spec.
func (r *SegmentSourceReconciler) reconcileStream(ctx context.Context, st *reconcileState) error {
	obj := st.source
	src := streamSource(obj)
	obj.Status.Stream = src.StreamName()
	if !r.NATS.Connected() {
		return r.streamUnavailable(st, transient(ReasonNATSUnavailable, nil, "NATS at %s is not reachable", r.natsURL()))
	}
	nctx, cancel := context.WithTimeout(ctx, r.Config.NATSTimeout)
	defer cancel()
	js := r.NATS.JetStream()

	settings := resources.SourceConfig(obj).StreamSettings()
	settings.SourceUID = string(obj.UID)
	if settings.MaxBytes == 0 {
		settings.MaxBytes = r.Config.StreamMaxBytes
	}
	state, err := stream.Inspect(nctx, js, src)
	missing := errors.Is(err, jetstream.ErrStreamNotFound)
	if err != nil && !missing {
		return r.streamUnavailable(st, r.natsError(err, "inspecting stream "+src.StreamName()))
	}
	if missing || !stream.InSync(src, settings, state) {
		specChanged := obj.Status.ObservedGeneration != obj.Generation
		if err := stream.Ensure(nctx, js, src, settings); err != nil {
			if errors.Is(err, stream.ErrOtherTenant) {
				// Never name the other tenant: the stream is retained from a source of another team.
				return r.streamUnavailable(st, stalled(ReasonStreamOfOtherTenant,
					"a stream named %s exists and belongs to another tenant; it is not adopted (rename this SegmentSource or ask the platform team)", src.StreamName()))
			}
			if refusedConfig(err) {
				return r.streamUnavailable(st, stalled(ReasonStreamRejected,
					"JetStream refused the stream configuration (fix spec.stream): %s", redactError(err)))
			}
			return r.streamUnavailable(st, r.natsError(err, "ensuring stream "+src.StreamName()))
		}
		switch {
		case specChanged:
		case missing || !state.ConsumerExists:
			// The objects existed before (this generation was already reconciled): someone or
			// something removed them. Say so once; the Ready transition shows nothing otherwise.
			r.Recorder.Eventf(obj, nil, corev1.EventTypeWarning, "StreamRecreated", "Reconcile",
				"stream %s or its consumer was missing on the NATS server and has been re-created", src.StreamName())
			log.FromContext(ctx).Info("re-created missing stream or consumer", "stream", src.StreamName())
		default:
			r.Recorder.Eventf(obj, nil, corev1.EventTypeWarning, "StreamConfigRestored", "Reconcile",
				"the configuration of stream %s or its consumer differed from spec.stream and has been restored", src.StreamName())
			log.FromContext(ctx).Info("restored drifted stream configuration", "stream", src.StreamName())
		}
		if state, err = stream.Inspect(nctx, js, src); err != nil {
			return r.streamUnavailable(st, r.natsError(err, "inspecting stream "+src.StreamName()))
		}
	}
	st.streamState = state
	obj.Status.ConsumerPartitions = 0
	if state.Partitions > int(obj.Spec.Stream.Partitions) {
		obj.Status.ConsumerPartitions = int32(state.Partitions)
	}
	r.Metrics.ObserveStream(obj, state)
	if full := nearlyFull(state); full > 0 {
		setCondition(obj, tallyv1.ConditionStreamReady, metav1.ConditionTrue, ReasonStreamNearlyFull, fmt.Sprintf(
			"stream %s is %d%% full (%d of %d bytes): once full, this source's senders get 503 until its workers catch up or spec.stream.maxBytes grows",
			src.StreamName(), full, state.Bytes, state.MaxBytes))
		return nil
	}
	setCondition(obj, tallyv1.ConditionStreamReady, metav1.ConditionTrue, ReasonStreamReady,
		"stream "+src.StreamName()+" and consumer "+stream.WorkerConsumer+" exist")
	return nil
}

// nearlyFullPercent is the share of its byte limit at which a stream is reported nearly full.
const nearlyFullPercent = 80

// nearlyFull is how full the stream is, in percent, when past nearlyFullPercent; 0 otherwise.
func nearlyFull(s stream.State) int {
	if s.MaxBytes <= 0 {
		return 0
	}
	if pct := int(s.Bytes * 100 / uint64(s.MaxBytes)); pct >= nearlyFullPercent {
		return pct
	}
	return 0
}

// natsURL is the NATS server list for messages a person reads (status, Events, logs), with any
// password redacted.
func (r *SegmentSourceReconciler) natsURL() string { return stream.RedactURL(r.NATS.URL()) }

// redactError is err's text with any NATS URL in it redacted.
func redactError(err error) string {
	return urlInText.ReplaceAllStringFunc(err.Error(), stream.RedactURL)
}

// urlInText finds URLs with credentials in free text (an error from a library).
var urlInText = regexp.MustCompile(`[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/@]+@[^\s,/]+`)

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
		return transient(ReasonNATSUnavailable, redacted(err), "JetStream at %s failed %s", r.natsURL(), doing)
	}
	return transient(ReasonNATSUnavailable, redacted(err), "NATS at %s is not reachable (%s)", r.natsURL(), doing)
}

// redacted keeps err for errors.Is/As but shows its text with NATS URLs redacted: transient puts
// the text into the condition message, and the workqueue logs it.
func redacted(err error) error { return &redactedError{err} }

type redactedError struct{ err error }

func (e *redactedError) Error() string { return redactError(e.err) }
func (e *redactedError) Unwrap() error { return e.err }

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
