package receiver

import "github.com/prometheus/client_golang/prometheus"

// MessagesCounter is one series of tally_receiver_messages_total, for the tests.
func (m *Metrics) MessagesCounter(source, outcome string) prometheus.Counter {
	return m.messages.WithLabelValues(source, outcome)
}
