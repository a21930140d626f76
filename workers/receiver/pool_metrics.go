package receiver

import "github.com/prometheus/client_golang/prometheus"

// Forget drops every series of a source this receiver no longer serves (a pool member that
// left), so a pool's comings and goings do not grow its /metrics forever. A request authenticated
// before the member left may still be publishing; it counts nothing when it ends, or it would
// bring the series back for good.
func (m *Metrics) Forget(source string) {
	m.leftMu.Lock()
	defer m.leftMu.Unlock()
	if m.left == nil {
		m.left = map[string]bool{}
	}
	m.left[source] = true
	l := prometheus.Labels{"source": source}
	for _, v := range []*prometheus.CounterVec{m.messages, m.rejected, m.clamped, m.rateLimited} {
		v.DeletePartialMatch(l)
	}
}

// Serve counts a source's messages again: a member that left and came back.
func (m *Metrics) Serve(source string) {
	m.leftMu.Lock()
	defer m.leftMu.Unlock()
	delete(m.left, source)
}

// counting calls count unless the source has left (Forget), under the lock Forget takes, so a
// count and a Forget never interleave.
func (m *Metrics) counting(source string, count func()) {
	m.leftMu.RLock()
	defer m.leftMu.RUnlock()
	if !m.left[source] {
		count()
	}
}
