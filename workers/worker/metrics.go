package worker

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tallyhq/tally/workers/segment"
)

// Metrics are the workers' metrics, labelled by source ("namespace/name"): one Metrics serves
// every worker of a process (tally local runs one per source).
type Metrics struct {
	batches        *prometheus.CounterVec
	messages       *prometheus.CounterVec
	eventsInserted *prometheus.CounterVec
	unnamed        *prometheus.CounterVec
	usersDeleted   *prometheus.CounterVec
	deadLetters    *prometheus.CounterVec
	retries        *prometheus.CounterVec
	pending        *prometheus.GaugeVec
	batchSeconds   *prometheus.HistogramVec
	endToEnd       *prometheus.HistogramVec
	lockWait       *prometheus.HistogramVec
	consumed       *prometheus.CounterVec
	purged         *prometheus.CounterVec
}

// NewMetrics creates the workers' metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tally", Subsystem: "worker", Name: "batches_total",
			Help: "Batches committed to Postgres.",
		}, []string{"source"}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tally", Subsystem: "worker", Name: "messages_mapped_total",
			Help: "Messages mapped and committed to Postgres, per Segment type.",
		}, []string{"source", "type"}),
		eventsInserted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tally", Subsystem: "worker", Name: "events_inserted_total",
			Help: "Rows inserted into tally.events; fewer than the tracks, pages and screens mapped when duplicates arrive.",
		}, []string{"source"}),
		unnamed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tally", Subsystem: "worker", Name: "unnamed_accounts_created_total",
			Help: "Accounts created without a name (a group call without name for an unknown account); they stay nameless until a named call arrives.",
		}, []string{"source"}),
		usersDeleted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tally", Subsystem: "worker", Name: "users_deleted_total",
			Help: "User-deletion requests applied (a repeated or older request for the same user counts once).",
		}, []string{"source"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tally", Subsystem: "worker", Name: "dead_letters_total",
			Help: "Messages published to the source's dead-letter subject.",
		}, []string{"source"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tally", Subsystem: "worker", Name: "batch_retries_total",
			Help: "Batch transactions retried, by reason (infrastructure, contention, unexplained, or locks: a tie moved and the batch needed more lock slots).",
		}, []string{"source", "reason"}),
		pending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "tally", Subsystem: "worker", Name: "consumer_pending_messages",
			Help: "Messages in the stream not yet delivered to a worker (the consumer's NumPending, sampled at each batch).",
		}, []string{"source"}),
		batchSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "tally", Subsystem: "worker", Name: "batch_duration_seconds",
			Help:    "Time from fetching a batch to acknowledging it.",
			Buckets: prometheus.ExponentialBuckets(0.002, 2, 14),
		}, []string{"source"}),
		endToEnd: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "tally", Subsystem: "worker", Name: "end_to_end_seconds",
			Help:    "Time from a message's receipt by a receiver to the commit of its batch in Postgres.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 16),
		}, []string{"source"}),
		lockWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "tally", Subsystem: "worker", Name: "lock_wait_seconds",
			Help:    "Time a batch transaction waited for the lock slots of its users (other batches of the same users' slots).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"source"}),
		consumed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tally", Subsystem: "worker", Name: "consumer_messages_total",
			Help: "Messages committed, per consumer: workers (unpartitioned) or workers-<partition>.",
		}, []string{"source", "consumer"}),
		purged: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tally", Subsystem: "worker", Name: "messages_purged_total",
			Help: "Acknowledged messages the workers purged from the source's stream (a work queue made by an earlier version removes them itself and counts none).",
		}, []string{"source"}),
	}
	reg.MustRegister(m.batches, m.messages, m.eventsInserted, m.unnamed, m.usersDeleted, m.deadLetters, m.retries, m.pending,
		m.batchSeconds, m.endToEnd, m.lockWait, m.consumed, m.purged)
	return m
}

// observeEndToEnd records, for each message of a committed batch, the time from its receipt by
// a receiver to the commit. A replay's messages carry Segment's old receipt time and are left out
// past a day, so they do not drown the live figure.
func (m *Metrics) observeEndToEnd(source string, msgs []*segment.Message, committed time.Time) {
	h := m.endToEnd.WithLabelValues(source)
	for _, msg := range msgs {
		if lag := committed.Sub(msg.ReceivedAt); lag >= 0 && lag < 24*time.Hour {
			h.Observe(lag.Seconds())
		}
	}
}
