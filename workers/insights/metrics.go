package insights

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Results of a push, the label of tally_insights_pushes_total.
const (
	resultSuccess = "success"
	resultFailure = "failure"
	resultStandby = "standby"
)

// Metrics are the pushers' metrics, labelled by source ("namespace/name"): one Metrics serves
// every pusher of a process (tally local runs one per source).
type Metrics struct {
	pushes   *prometheus.CounterVec
	entities *prometheus.CounterVec
	failures *prometheus.CounterVec
	requests *prometheus.CounterVec
	held     *prometheus.GaugeVec
	lag      *lagCollector
}

// NewMetrics creates the pushers' metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tally", Subsystem: "insights", Name: "pushes_total",
			Help: "Insight pushes by result: success (every change delivered), failure, standby (another replica holds the source's lock).",
		}, []string{"source", "result"}),
		entities: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tally", Subsystem: "insights", Name: "entities_pushed_total",
			Help: "Accounts (group calls) and users (identify calls) whose changed insights the endpoint accepted.",
		}, []string{"source", "kind"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tally", Subsystem: "insights", Name: "delivery_failures_total",
			Help: "Accounts and users whose insights were not delivered, by reason: refused (4xx) or unavailable (unreachable, 5xx, 429 after the retries).",
		}, []string{"source", "reason"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tally", Subsystem: "insights", Name: "failed_requests_total",
			Help: "Requests to the insights endpoint that failed, by reason: unreachable, unavailable (5xx, 429), refused (other 4xx).",
		}, []string{"source", "reason"}),
		held: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "tally", Subsystem: "insights", Name: "lock_held",
			Help: "1 while this process's pusher holds the source's insights lock (it pushes), 0 on standby.",
		}, []string{"source"}),
		lag: &lagCollector{
			desc: prometheus.NewDesc("tally_insights_lag_seconds",
				"Seconds since the last push that delivered every change, reported by the pusher holding the source's lock.",
				[]string{"source"}, nil),
			last: map[string]time.Time{},
		},
	}
	reg.MustRegister(m.pushes, m.entities, m.failures, m.requests, m.held, m.lag)
	return m
}

func (m *Metrics) push(source, result string) { m.pushes.WithLabelValues(source, result).Inc() }

func (m *Metrics) delivered(source string, r Result) {
	if r.Accounts > 0 {
		m.entities.WithLabelValues(source, KindAccount).Add(float64(r.Accounts))
	}
	if r.Users > 0 {
		m.entities.WithLabelValues(source, KindUser).Add(float64(r.Users))
	}
}

func (m *Metrics) failed(source string, e *DeliveryError) {
	reason := "unavailable"
	if e.Permanent {
		reason = "refused"
	}
	m.failures.WithLabelValues(source, reason).Add(float64(e.Failed))
}

func (m *Metrics) requestFailed(source, reason string) {
	m.requests.WithLabelValues(source, reason).Inc()
}

func (m *Metrics) lockHeld(source string, held bool) {
	v := 0.0
	if held {
		v = 1
	}
	m.held.WithLabelValues(source).Set(v)
	if !held {
		m.lag.forget(source)
	}
}

func (m *Metrics) succeeded(source string, at time.Time) { m.lag.set(source, at) }

// lagCollector reports the lag at scrape time, so it grows while pushes fail.
type lagCollector struct {
	desc *prometheus.Desc
	mu   sync.Mutex
	last map[string]time.Time
}

func (c *lagCollector) set(source string, at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.last[source] = at
}

func (c *lagCollector) forget(source string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.last, source)
}

func (c *lagCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *lagCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	for source, at := range c.last {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, now.Sub(at).Seconds(), source)
	}
}
