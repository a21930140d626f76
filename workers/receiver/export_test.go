package receiver

import "github.com/prometheus/client_golang/prometheus"

// MessagesCounter is one series of tally_receiver_messages_total, for the tests.
func (m *Metrics) MessagesCounter(source, outcome string) prometheus.Counter {
	return m.messages.WithLabelValues(source, outcome)
}

// RefusalsCounter is one series of tally_receiver_refused_requests_total, for the tests.
func (m *Metrics) RefusalsCounter(code string) prometheus.Counter {
	return m.refusals.WithLabelValues(code)
}

// ShedCounter is one series of tally_receiver_shed_requests_total, for the tests.
func (m *Metrics) ShedCounter(limit string) prometheus.Counter {
	return m.shed.WithLabelValues(limit)
}

// RateLimitedCounter is one series of tally_receiver_rate_limited_requests_total, for the tests.
func (m *Metrics) RateLimitedCounter(source string) prometheus.Counter {
	return m.rateLimited.WithLabelValues(source)
}
