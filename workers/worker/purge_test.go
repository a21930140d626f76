package worker

import (
	"context"
	"fmt"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tallyhq/tally/workers/source"
)

var _ = Describe("Purging acknowledged messages", func() {
	stored := func(ctx context.Context, src *source.Config) uint64 {
		s, err := js.Stream(ctx, src.Stream().StreamName())
		Expect(err).NotTo(HaveOccurred())
		info, err := s.Info(ctx)
		Expect(err).NotTo(HaveOccurred())
		return info.State.Msgs
	}
	events := func(ctx context.Context, src *source.Config) int64 {
		return queryRow(ctx, `SELECT count(*) AS n FROM tally.events WHERE tenant = $1`, src.Tenant)["n"].(int64)
	}
	tracks := func(ctx context.Context, src *source.Config, from, to int) {
		for i := from; i < to; i++ {
			publish(ctx, src, track(fmt.Sprintf("t%d", i), fmt.Sprintf("u%d", i%7), "Clicked", float64(i), nil, nil))
		}
	}

	It("empties the stream of what the worker committed, and keeps what no worker took", func(ctx SpecContext) {
		src := newSource(ctx, "")
		purged := func() float64 { return testutil.ToFloat64(testMetrics.purged.WithLabelValues(src.String())) }
		tracks(ctx, src, 0, 50)
		stop := startWorker(src, 20)
		Eventually(func() int64 { return events(ctx, src) }).Should(BeEquivalentTo(50))
		Eventually(func() uint64 { return stored(ctx, src) }).WithTimeout(10*time.Second).Should(BeZero(), "the last purge follows the last batch within seconds")
		Expect(purged()).To(BeEquivalentTo(50))
		Expect(stop()).To(Succeed())

		By("keeping the messages that arrive while no worker runs")
		tracks(ctx, src, 50, 60)
		Consistently(func() uint64 { return stored(ctx, src) }, 2*purgeEvery).Should(BeEquivalentTo(10))

		By("purging them once a worker committed them, each once")
		startWorker(src, 20)
		Eventually(func() uint64 { return stored(ctx, src) }).WithTimeout(10 * time.Second).Should(BeZero())
		Expect(events(ctx, src)).To(BeEquivalentTo(60))
		Expect(purged()).To(BeEquivalentTo(60))
	})
})
