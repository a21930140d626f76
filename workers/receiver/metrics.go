package receiver

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// The metrics live at package level and are registered once with the default registry, so any
// number of Receivers in one process (tally local, tests) share them.
var (
	requestsTotal = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "tally_receiver_requests_total",
		Help: "Tracking API requests by route and HTTP status code.",
	}, []string{"route", "code"})

	requestDuration = promauto.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "tally_receiver_request_duration_seconds",
		Help:    "Time to answer a Tracking API request, including waiting for JetStream.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
	}, []string{"route"})

	messagesTotal = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "tally_receiver_messages_total",
		Help: "Messages per source (namespace/name) by outcome: accepted (acknowledged by JetStream), invalid (rejected by validation) or ignored (an ignored track event, dropped).",
	}, []string{"source", "outcome"})

	publishDuration = promauto.NewHistogram(prometheus.HistogramOpts{
		Name:    "tally_receiver_publish_duration_seconds",
		Help:    "Time from a request's first JetStream publish to its last PubAck.",
		Buckets: prometheus.ExponentialBuckets(0.0002, 2, 16),
	})
)

// Outcomes of the messages_total metric.
const (
	outcomeAccepted = "accepted"
	outcomeInvalid  = "invalid"
	outcomeIgnored  = "ignored"
)
