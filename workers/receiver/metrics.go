package receiver

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the receiver's metrics; one Metrics serves every Receiver of a process.
type Metrics struct {
	requests        *prometheus.CounterVec
	requestDuration *prometheus.HistogramVec
	messages        *prometheus.CounterVec
	rejected        *prometheus.CounterVec
	refusals        *prometheus.CounterVec
	shed            *prometheus.CounterVec
	clamped         *prometheus.CounterVec
	rateLimited     *prometheus.CounterVec
	publishDuration prometheus.Histogram
	batchRequests   prometheus.Histogram
	batchMessages   prometheus.Histogram

	// left: the pool members whose series were forgotten (pool_metrics.go).
	leftMu sync.RWMutex
	left   map[string]bool
}

// NewMetrics creates the receiver's metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_receiver_requests_total",
			Help: "Tracking API requests by route and HTTP status code.",
		}, []string{"route", "code"}),
		requestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tally_receiver_request_duration_seconds",
			Help:    "Time to answer a Tracking API request, including waiting for JetStream.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"route"}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_receiver_messages_total",
			Help: "Messages per source (namespace/name) by outcome: accepted (acknowledged by JetStream), invalid (rejected by validation) or ignored (an ignored track event, dropped).",
		}, []string{"source", "outcome"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_receiver_rejected_messages_total",
			Help: "Messages refused on their own inside an accepted request, per source and rejection code (message_too_large, invalid_utf8, id_required...).",
		}, []string{"source", "code"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_receiver_refused_requests_total",
			Help: "Requests answered with an error, by code: invalid_json, request_too_large, invalid_write_key, overloaded (shed), unavailable (JetStream)...",
		}, []string{"code"}),
		shed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_receiver_shed_requests_total",
			Help: "Requests answered 429 because the receiver held its limit of requests or bytes in flight, by the limit reached.",
		}, []string{"limit"}),
		clamped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_receiver_clamped_timestamps_total",
			Help: "Accepted messages dated more than a day after their receipt, whose timestamp was clamped to the receipt time.",
		}, []string{"source"}),
		rateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_receiver_rate_limited_requests_total",
			Help: "Requests answered 429 rate_limited because their source was past its spec.receiver.rateLimit, per source.",
		}, []string{"source"}),
		publishDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tally_receiver_publish_duration_seconds",
			Help:    "Time from a request's first JetStream publish to its last PubAck.",
			Buckets: prometheus.ExponentialBuckets(0.0002, 2, 16),
		}),
		batchRequests: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tally_receiver_atomic_batch_requests",
			Help:    "Requests whose messages one atomic batch carried (group commit: above 1 when concurrent requests shared a commit).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 10),
		}),
		batchMessages: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tally_receiver_atomic_batch_messages",
			Help:    "Messages per atomic batch sent (group commit), up to the server's batch limit.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11),
		}),
	}
	reg.MustRegister(m.requests, m.requestDuration, m.messages, m.rejected, m.refusals, m.shed, m.clamped, m.rateLimited, m.publishDuration,
		m.batchRequests, m.batchMessages)
	return m
}

// Outcomes of the messages_total metric.
const (
	outcomeAccepted = "accepted"
	outcomeInvalid  = "invalid"
	outcomeIgnored  = "ignored"
)
