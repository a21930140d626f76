package receiver

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tallyhq/tally/workers/source"
)

// A request authenticated just before its pool member left ends after the member's series were
// forgotten: its counts must not bring them back (they would stay forever). Once the member is
// served again, it is counted again.
func TestForgottenMemberStaysForgotten(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	src := &source.Config{Namespace: "team", Name: "left"}
	inFlight := sortedMessages{perSource: map[*source.Config]*sourceCounts{
		src: {accepted: 3, ignored: 1, clamped: 1, invalid: map[string]int{"message_too_large": 1}},
	}}
	count := func() { inFlight.countDecisions(m); inFlight.countAccepted(m) }

	count()
	if got := testutil.ToFloat64(m.MessagesCounter("team/left", outcomeAccepted)); got != 3 {
		t.Fatalf("accepted before leaving = %v, want 3", got)
	}
	m.Forget("team/left")
	count()
	for _, v := range []*prometheus.CounterVec{m.messages, m.rejected, m.clamped} {
		if n := testutil.CollectAndCount(v); n != 0 {
			t.Fatalf("%d series after the member left and a request of its ended", n)
		}
	}
	m.Serve("team/left")
	count()
	if got := testutil.ToFloat64(m.MessagesCounter("team/left", outcomeAccepted)); got != 3 {
		t.Fatalf("accepted after coming back = %v, want 3 (counted afresh)", got)
	}
}
