package controllers

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/workers/stream"
)

// conditionTypes are exported by the per-object condition gauge.
var conditionTypes = []string{
	tallyv1.ConditionReady, tallyv1.ConditionReconciling, tallyv1.ConditionStalled, tallyv1.ConditionReceiving,
	tallyv1.ConditionStreamReady, tallyv1.ConditionReceiverAvailable, tallyv1.ConditionWorkerAvailable,
	tallyv1.ConditionInsightsDelivered, tallyv1.ConditionNATSIsolated,
}

var conditionStatuses = []metav1.ConditionStatus{metav1.ConditionTrue, metav1.ConditionFalse, metav1.ConditionUnknown}

// Metrics are the operator's own metrics, on top of controller-runtime's reconcile counters and
// durations: a per-object condition gauge (what Flux's gotk_reconcile_condition and users asking
// for per-CR state want), the backlog per source, and counters of the writes the operator makes,
// which show whether periodic reconciles stay write-free.
type Metrics struct {
	condition *prometheus.GaugeVec
	backlog   *prometheus.GaugeVec
	// stream: what the source's streams hold, for dashboards and alerts (bytes against the limit,
	// dead letters waiting for a person).
	streamBytes, streamMaxBytes, deadLetters *prometheus.GaugeVec
	// lastMessage: status.lastMessageAt, absent until a first message arrived (TallyNotReceiving).
	lastMessage *prometheus.GaugeVec
	applies     *prometheus.CounterVec
	status      prometheus.Counter
	duration    prometheus.Histogram
}

// NewMetrics creates the metrics and registers them with reg (controller-runtime's
// metrics.Registry in the manager, a fresh registry in tests).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		condition: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tally_segmentsource_condition",
			Help: "Status conditions of each SegmentSource: 1 for the condition's current status, 0 for the others.",
		}, []string{"namespace", "name", "type", "status"}),
		backlog: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tally_segmentsource_backlog_messages",
			Help: "Messages accepted into a SegmentSource's stream but not yet committed by a worker.",
		}, []string{"namespace", "name"}),
		streamBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tally_segmentsource_stream_bytes",
			Help: "Bytes a SegmentSource's stream holds (messages accepted and not yet committed).",
		}, []string{"namespace", "name"}),
		streamMaxBytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tally_segmentsource_stream_max_bytes",
			Help: "The byte limit of a SegmentSource's stream: once full, its senders get 503.",
		}, []string{"namespace", "name"}),
		deadLetters: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tally_segmentsource_dead_letters",
			Help: "Messages in a SegmentSource's dead-letter stream, waiting to be re-driven or removed (tally dlq).",
		}, []string{"namespace", "name"}),
		lastMessage: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tally_segmentsource_last_message_timestamp_seconds",
			Help: "When the newest message reached a SegmentSource's stream (status.lastMessageAt, Unix seconds); absent before the first.",
		}, []string{"namespace", "name"}),
		applies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_operator_applies_total",
			Help: "Server-side applies the operator made, by kind; periodic reconciles of an unchanged source make none.",
		}, []string{"kind"}),
		status: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tally_operator_status_writes_total",
			Help: "SegmentSource status patches the operator made.",
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tally_segmentsource_reconcile_duration_seconds",
			Help:    "Duration of SegmentSource reconciles, including NATS and API requests.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
	}
	reg.MustRegister(m.condition, m.backlog, m.streamBytes, m.streamMaxBytes, m.deadLetters, m.lastMessage, m.applies, m.status, m.duration)
	return m
}

// ObserveReconcile records the state one reconcile left the object in.
func (m *Metrics) ObserveReconcile(obj *tallyv1.SegmentSource, finalized bool, took time.Duration) {
	if m == nil {
		return
	}
	m.duration.Observe(took.Seconds())
	if finalized {
		m.Forget(obj.Namespace, obj.Name)
		return
	}
	for _, t := range conditionTypes {
		var current metav1.ConditionStatus
		for _, c := range obj.Status.Conditions {
			if c.Type == t {
				current = c.Status
			}
		}
		for _, s := range conditionStatuses {
			if current == "" {
				m.condition.DeleteLabelValues(obj.Namespace, obj.Name, t, string(s))
				continue
			}
			v := 0.0
			if s == current {
				v = 1
			}
			m.condition.WithLabelValues(obj.Namespace, obj.Name, t, string(s)).Set(v)
		}
	}
	m.backlog.WithLabelValues(obj.Namespace, obj.Name).Set(float64(obj.Status.Backlog))
	if t := obj.Status.LastMessageAt; t != nil {
		m.lastMessage.WithLabelValues(obj.Namespace, obj.Name).Set(float64(t.Unix()))
	}
}

// ObserveStream records what a source's streams hold, as the reconcile just inspected them.
func (m *Metrics) ObserveStream(obj *tallyv1.SegmentSource, s stream.State) {
	if m == nil {
		return
	}
	m.streamBytes.WithLabelValues(obj.Namespace, obj.Name).Set(float64(s.Bytes))
	m.streamMaxBytes.WithLabelValues(obj.Namespace, obj.Name).Set(float64(s.MaxBytes))
	m.deadLetters.WithLabelValues(obj.Namespace, obj.Name).Set(float64(s.DeadLetters))
}

// Forget drops the series of a deleted source.
func (m *Metrics) Forget(namespace, name string) {
	if m == nil {
		return
	}
	m.condition.DeletePartialMatch(prometheus.Labels{"namespace": namespace, "name": name})
	m.backlog.DeleteLabelValues(namespace, name)
	for _, g := range []*prometheus.GaugeVec{m.streamBytes, m.streamMaxBytes, m.deadLetters, m.lastMessage} {
		g.DeleteLabelValues(namespace, name)
	}
}

// Applied counts one server-side apply.
func (m *Metrics) Applied(kind string) {
	if m != nil {
		m.applies.WithLabelValues(kind).Inc()
	}
}

// StatusWritten counts one status patch.
func (m *Metrics) StatusWritten() {
	if m != nil {
		m.status.Inc()
	}
}
