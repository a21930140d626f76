package worker

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tallyhq/tally/test/testenv"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
)

var _ = Describe("Purging acknowledged messages", func() {
	tracks := func(ctx context.Context, src *source.Config, from, to int) {
		for i := from; i < to; i++ {
			publish(ctx, src, track(fmt.Sprintf("t%d", i), fmt.Sprintf("u%d", i%7), "Clicked", float64(i), nil, nil))
		}
	}

	It("empties the stream of what the worker committed, and keeps what no worker took", func(ctx SpecContext) {
		src := newSource(ctx, "")
		purged := func() float64 { return testutil.ToFloat64(testMetrics.purged.WithLabelValues(src.String())) }
		// A lane this quiet would wait purgeQuiet; the spec looks at the rest of the schedule.
		notQuiet := func(w *Worker) { w.purgeQuiet = 0 }
		tracks(ctx, src, 0, 50)
		stop := startWorker(src, 20, notQuiet)
		Eventually(func() int64 { return eventCount(ctx, src) }).Should(BeEquivalentTo(50))
		// Within purgeAnyway: an idle lane purges after its next empty pull or while its long pull waits, not on the backlog's schedule.
		Eventually(func() uint64 { return storedMessages(ctx, src) }).WithTimeout(purgeAnyway/2).Should(BeZero(), "the last purge follows the last batch within seconds")
		Eventually(purged).Should(BeEquivalentTo(50), "counted once the purge's answer is back")
		Expect(stop()).To(Succeed())

		By("keeping the messages that arrive while no worker runs")
		tracks(ctx, src, 50, 60)
		Consistently(func() uint64 { return storedMessages(ctx, src) }, 2*purgeEvery).Should(BeEquivalentTo(10))

		By("purging them once a worker committed them, each once")
		startWorker(src, 20, notQuiet)
		Eventually(func() uint64 { return storedMessages(ctx, src) }).WithTimeout(purgeAnyway / 2).Should(BeZero())
		Expect(eventCount(ctx, src)).To(BeEquivalentTo(60))
		Eventually(purged).Should(BeEquivalentTo(60))
	})

	It("purges only when a message handed back cannot be stranded in the redelivery queue, and a quiet lane only now and then", func(ctx SpecContext) {
		src := newSource(ctx, "")
		tracks(ctx, src, 0, 10)
		w, err := New(Options{Pool: testPool, JetStream: js, Source: src, Logger: testenv.QuietLogger(), Metrics: testMetrics})
		Expect(err).NotTo(HaveOccurred())
		w.purgeQuiet = 0 // until the last step, which is about quiet lanes
		consumer, err := js.Consumer(ctx, src.Stream().StreamName(), stream.WorkerConsumer)
		Expect(err).NotTo(HaveOccurred())
		fetch := func(n int, wait time.Duration) []jetstream.Msg {
			batch, err := consumer.Fetch(n, jetstream.FetchMaxWait(wait))
			Expect(err).NotTo(HaveOccurred())
			var got []jetstream.Msg
			for m := range batch.Messages() {
				got = append(got, m)
			}
			return got
		}
		ackAll := func(msgs []jetstream.Msg) {
			for _, m := range msgs {
				Expect(m.DoubleAck(ctx)).To(Succeed())
			}
		}
		// commitNew publishes tracks from..to and acknowledges them, as a lane that committed them.
		commitNew := func(from, to int) {
			tracks(ctx, src, from, to)
			got := fetch(to-from, time.Second)
			Expect(got).To(HaveLen(to - from))
			ackAll(got)
		}
		held := fetch(10, time.Second)
		Expect(held).To(HaveLen(10))
		ackAll(held[:5])
		for _, m := range held[5:] { // a stopping worker hands these back (nakAll)
			Expect(m.NakWithDelay(time.Nanosecond)).To(Succeed())
		}
		p := newPurger(w, consumer, stream.WorkerConsumer)
		p.acknowledged(5, 5)
		p.maybePurge(ctx, false)
		Expect(storedMessages(ctx, src)).To(BeEquivalentTo(10), "no pull waits: the handed-back messages may sit in the redelivery queue")

		redelivered := fetch(10, time.Second) // far less than the ack wait
		Expect(redelivered).To(HaveLen(5))
		ackAll(redelivered)
		p.acknowledged(10, 5)

		By("purging once a pull waits")
		waiting := make(chan []jetstream.Msg)
		go func() { defer GinkgoRecover(); waiting <- fetch(1, 3*time.Second) }()
		Eventually(func() int {
			info, err := consumer.Info(ctx)
			Expect(err).NotTo(HaveOccurred())
			return info.NumWaiting
		}).Should(Equal(1))
		p.tried = time.Time{} // the spec does not wait out purgeEvery
		p.maybePurge(ctx, false)
		Expect(storedMessages(ctx, src)).To(BeZero())
		Expect(<-waiting).To(BeEmpty())

		By("purging after the lane's own pull came back empty, with no pull waiting")
		commitNew(10, 12)
		Expect(fetch(1, 100*time.Millisecond)).To(BeEmpty())
		p.acknowledged(12, 2)
		p.tried = time.Time{}
		p.maybePurge(ctx, true)
		Expect(storedMessages(ctx, src)).To(BeZero())

		By("purging anyway after purgeAnyway without a waiting pull")
		commitNew(12, 14)
		p.acknowledged(14, 2)
		p.tried, p.since = time.Time{}, time.Now().Add(-purgeAnyway)
		p.maybePurge(ctx, false)
		Expect(storedMessages(ctx, src)).To(BeZero())

		By("keeping a quiet lane's few acknowledged messages until purgeQuiet has passed since its last purge")
		w.purgeQuiet = purgeQuiet
		p.drawQuiet()
		commitNew(14, 16)
		Expect(fetch(1, 100*time.Millisecond)).To(BeEmpty())
		p.acknowledged(16, 2)
		p.tried = time.Time{}
		p.maybePurge(ctx, true)
		Expect(storedMessages(ctx, src)).To(BeEquivalentTo(2), "two messages since the last purge, a moment ago")
		p.tried, p.since = time.Time{}, time.Now().Add(-purgeQuiet)
		p.maybePurge(ctx, true)
		Expect(storedMessages(ctx, src)).To(BeZero(), "purgeQuiet since the last purge")

		By("purging a lane that acknowledged purgeBatch messages without waiting")
		commitNew(16, 18)
		Expect(fetch(1, 100*time.Millisecond)).To(BeEmpty())
		p.acknowledged(18, purgeBatch) // as if the two were a thousand: the count is what matters
		p.tried = time.Time{}
		p.maybePurge(ctx, true)
		Expect(storedMessages(ctx, src)).To(BeZero())
	})
})
