package worker

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/test/testenv"
	"github.com/tallyhq/tally/workers/stream"
)

// The worker fetches the next batch while the current one commits; a batch it fetched but did not
// map when it stopped must reach another worker, once.
var _ = Describe("Fetching ahead", func() {
	It("maps a message that arrives while a pull is open without waiting for the pull to end", func(ctx SpecContext) {
		src := newSource(ctx, "")
		// Pulls stay open 15 s for a full batch of 2,000; each message must not wait for that.
		// (Stopping the worker waits for its open pull to end.)
		stop := startWorker(src, 2000, func(w *Worker) { w.maxWait = 15 * time.Second })
		DeferCleanup(stop)
		visible := func(id string) func() int64 {
			return func() int64 {
				return queryRow(ctx, `SELECT count(*) AS n FROM tally.events WHERE tenant = $1 AND message_id = $2`, src.Tenant, id)["n"].(int64)
			}
		}
		for _, id := range []string{"m1", "m2", "m3"} {
			publish(ctx, src, track(id, "u1", "Clicked", 1, nil, nil))
			Eventually(visible(id)).WithContext(ctx).WithTimeout(7 * time.Second).Should(BeEquivalentTo(1))
		}
	})

	It("hands back the batch fetched ahead when a worker stops, and another worker maps everything once", func(ctx SpecContext) {
		src := newSource(ctx, "")
		var calls []msg
		for i := range 60 {
			calls = append(calls, track(fmt.Sprintf("t%02d", i), "u1", "Clicked", float64(i), nil, nil))
		}
		publish(ctx, src, calls...)

		stop := startWorker(src, 5)
		Eventually(func() int64 { return eventCount(ctx, src) }).WithContext(ctx).Should(BeNumerically(">", 0))
		Expect(stop()).To(Succeed())

		startWorker(src, 7)
		drained(ctx, src)
		Expect(queryRow(ctx, `SELECT count(*) AS n FROM tally.events WHERE tenant = $1`, src.Tenant)["n"]).To(BeEquivalentTo(60))
		Expect(queryRow(ctx, `SELECT count FROM tally.event_catalog WHERE tenant = $1 AND event = 'Clicked'`, src.Tenant)["count"]).To(BeEquivalentTo(60))
	})

	It("folds a batch fetched ahead again when the source's settings changed meanwhile", func(ctx SpecContext) {
		src := newSource(ctx, "")
		publish(ctx, src, track("t1", "u1", "Clicked", 1, map[string]any{"accountId": "acme"}, nil))
		// A batch of one: the pull ends with its message, whose part is folded ahead.
		w, err := New(Options{Pool: testPool, JetStream: js, Source: src, BatchSize: 1, Logger: testenv.QuietLogger()})
		Expect(err).NotTo(HaveOccurred())
		consumer, err := js.Consumer(ctx, src.Stream().StreamName(), stream.WorkerConsumer)
		Expect(err).NotTo(HaveOccurred())
		f := fetchPart(ctx, w, consumer) // folded without an account property
		Expect(f.items).To(HaveLen(1))
		Expect(f.prepared).NotTo(BeNil())

		changed := *src
		changed.AccountProperty = "accountId"
		Expect(w.UpdateSource(context.WithoutCancel(ctx), &changed)).To(Succeed())
		Expect(w.handle(ctx, f)).To(Succeed())
		Expect(queryRow(ctx, `SELECT account_id FROM tally.events WHERE tenant = $1 AND message_id = 't1'`, src.Tenant)["account_id"]).To(Equal("acme"))
	})
})

// fetchPart runs w's fetch loop on consumer until it hands over its first part.
func fetchPart(ctx context.Context, w *Worker, consumer jetstream.Consumer) fetched {
	fctx, stop := context.WithCancel(ctx)
	parts := make(chan fetched)
	go w.fetchLoop(fctx, consumer, parts)
	f := <-parts
	stop()
	for range parts { // wait for the loop to end
	}
	return f
}
