package mapper

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metrics are package-level and labelled by source ("namespace/name"): tally local runs one worker
// per source in a single process, and a collector may be registered with the default registry only
// once.
var (
	batchesTotal = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: "tally", Subsystem: "worker", Name: "batches_total",
		Help: "Batches committed to Postgres.",
	}, []string{"source"})
	messagesTotal = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: "tally", Subsystem: "worker", Name: "messages_mapped_total",
		Help: "Messages mapped and committed to Postgres, per Segment type.",
	}, []string{"source", "type"})
	eventsInsertedTotal = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: "tally", Subsystem: "worker", Name: "events_inserted_total",
		Help: "Rows inserted into tally.events; fewer than the tracks, pages and screens mapped when duplicates arrive.",
	}, []string{"source"})
	deadLettersTotal = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: "tally", Subsystem: "worker", Name: "dead_letters_total",
		Help: "Messages published to the source's dead-letter subject.",
	}, []string{"source"})
	retriesTotal = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: "tally", Subsystem: "worker", Name: "batch_retries_total",
		Help: "Batch transactions retried, by reason (infrastructure or contention).",
	}, []string{"source", "reason"})
	lagGauge = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "tally", Subsystem: "worker", Name: "consumer_pending_messages",
		Help: "Messages in the stream not yet delivered to a worker (the consumer's NumPending, sampled at each batch).",
	}, []string{"source"})
	batchSeconds = promauto.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "tally", Subsystem: "worker", Name: "batch_duration_seconds",
		Help:    "Time from fetching a batch to acknowledging it.",
		Buckets: prometheus.ExponentialBuckets(0.002, 2, 14),
	}, []string{"source"})
)
