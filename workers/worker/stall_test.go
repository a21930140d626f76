package worker

import (
	"context"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tallyhq/tally/test/testenv"
	"github.com/tallyhq/tally/workers/stream"
)

// A worker must not stall on one message, nor on one hung transaction, and must not drop what it
// cannot apply yet.
var _ = Describe("A worker that cannot be stalled", func() {
	It("dead-letters a message that keeps failing for no known reason, with that reason, and commits the rest", Serial, func(ctx SpecContext) {
		src := newSource(ctx, "")
		// A trigger that raises for one event name: Postgres refuses that row with an error that is
		// neither bad data nor infrastructure (P0001, raise_exception).
		_, err := testPool.Exec(ctx, `
			CREATE FUNCTION public.tally_test_explode() RETURNS trigger LANGUAGE plpgsql AS $$
			BEGIN
				IF NEW.event = 'Explode' THEN RAISE EXCEPTION 'refusing % on purpose', NEW.message_id; END IF;
				RETURN NEW;
			END $$;
			CREATE TRIGGER tally_test_explode BEFORE INSERT ON tally.events FOR EACH ROW EXECUTE FUNCTION public.tally_test_explode();`)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(func(ctx SpecContext) {
			_, err := testPool.Exec(ctx, `DROP TRIGGER tally_test_explode ON tally.events; DROP FUNCTION public.tally_test_explode();`)
			Expect(err).NotTo(HaveOccurred())
		})

		publish(ctx, src,
			track("before", "u1", "Clicked", 1, nil, nil),
			track("boom", "u1", "Explode", 2, nil, nil),
			track("after", "u1", "Clicked", 3, nil, nil),
		)
		startWorker(src, 100)
		drained(ctx, src)
		Expect(queryRows(ctx, `SELECT message_id FROM tally.events WHERE tenant = $1 ORDER BY message_id`, src.Tenant)).To(Equal([]map[string]any{
			{"message_id": "after"}, {"message_id": "before"},
		}))
		letters, err := stream.ListDeadLetters(ctx, js, src.Stream())
		Expect(err).NotTo(HaveOccurred())
		Expect(letters).To(ConsistOf(And(
			HaveField("OriginalSubject", src.Stream().Subject("track")),
			HaveField("Reason", And(ContainSubstring("refusing boom on purpose"), ContainSubstring("P0001"))),
		)))
		Expect(testutil.ToFloat64(testMetrics.retries.WithLabelValues(src.String(), "unexplained"))).To(BeNumerically(">=", unexplainedAttempts))
	})

	It("gives up a lock wait past lock_timeout, retries, and applies everything once the lock is free", func(ctx SpecContext) {
		src := newSource(ctx, "")
		w, err := New(Options{Pool: testPool, JetStream: js, Source: src, BatchSize: 10, MaxWait: 50 * time.Millisecond,
			Logger: testenv.QuietLogger(), Metrics: testMetrics, LockTimeout: 200 * time.Millisecond})
		Expect(err).NotTo(HaveOccurred())
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- w.Run(runCtx) }()
		DeferCleanup(func() { stop(); Eventually(done).WithTimeout(30 * time.Second).Should(Receive()) })
		publish(ctx, src, track("t0", "u1", "Clicked", 0, nil, nil))
		drained(ctx, src)

		// Someone holds the tenant's lock in a transaction that does not end.
		holder, err := testPool.Begin(ctx)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(func(ctx SpecContext) { _ = holder.Rollback(ctx) })
		_, err = holder.Exec(ctx, "SELECT 1 FROM tally.tenant_locks WHERE tenant = $1 FOR UPDATE", src.Tenant)
		Expect(err).NotTo(HaveOccurred())
		publish(ctx, src, track("t1", "u1", "Clicked", 1, nil, nil), track("t2", "u1", "Clicked", 2, nil, nil))

		By("the worker's lock waits time out and are retried, not dropped")
		Eventually(func() float64 {
			return testutil.ToFloat64(testMetrics.retries.WithLabelValues(src.String(), "contention"))
		}).WithTimeout(20 * time.Second).Should(BeNumerically(">=", 3))
		Expect(queryRows(ctx, `SELECT message_id FROM tally.events WHERE tenant = $1`, src.Tenant)).To(Equal([]map[string]any{{"message_id": "t0"}}))
		Expect(stream.ListDeadLetters(ctx, js, src.Stream())).To(BeEmpty())

		By("once the holder lets go, every message lands")
		Expect(holder.Rollback(ctx)).To(Succeed())
		drained(ctx, src)
		Expect(queryRow(ctx, `SELECT count(*) AS n FROM tally.events WHERE tenant = $1`, src.Tenant)["n"]).To(BeEquivalentTo(3))
	})
})
