package worker

import "github.com/prometheus/client_golang/prometheus"

// forgetful is a Registerer that remembers the vectors registered through it, so that a pool
// worker can drop every series of a member that left (and its /metrics does not grow with each
// member that ever came), whatever metrics Metrics holds now or later.
type forgetful struct {
	prometheus.Registerer
	vecs []interface {
		DeletePartialMatch(prometheus.Labels) int
	}
}

func (f *forgetful) Register(c prometheus.Collector) error {
	f.keep(c)
	return f.Registerer.Register(c)
}

func (f *forgetful) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		f.keep(c)
	}
	f.Registerer.MustRegister(cs...)
}

func (f *forgetful) keep(c prometheus.Collector) {
	if vec, ok := c.(interface {
		DeletePartialMatch(prometheus.Labels) int
	}); ok {
		f.vecs = append(f.vecs, vec)
	}
}

// forget drops the series of source.
func (f *forgetful) forget(source string) {
	for _, vec := range f.vecs {
		vec.DeletePartialMatch(prometheus.Labels{"source": source})
	}
}
