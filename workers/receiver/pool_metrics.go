package receiver

import "github.com/prometheus/client_golang/prometheus"

// Forget drops every series of a source this receiver no longer serves (a pool member that
// left), so a pool's comings and goings do not grow its /metrics forever.
func (m *Metrics) Forget(source string) {
	l := prometheus.Labels{"source": source}
	for _, v := range []*prometheus.CounterVec{m.messages, m.rejected, m.clamped} {
		v.DeletePartialMatch(l)
	}
}
