package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
)

var _ = Describe("The end of a pull", func() {
	DescribeTable("keeps the consumer when the pull merely ended, and binds again when it failed",
		func(err error, normal bool) {
			Expect(pullEndedNormally(err)).To(Equal(normal))
		},
		Entry("no error", nil, true),
		Entry("a context deadline ended it", context.DeadlineExceeded, true),
		Entry("the worker stopped during a long idle pull", context.Canceled, true),
		Entry("the server counted the batch delivered, some messages did not arrive (a busy cluster)", jetstream.ErrBatchCompleted, true),
		Entry("the same, wrapped", fmt.Errorf("pull: %w", jetstream.ErrBatchCompleted), true),
		Entry("the consumer was deleted", jetstream.ErrConsumerDeleted, false),
		Entry("the server lost a long idle pull (no heartbeats): the next pull finds out whether the consumer is there", jetstream.ErrNoHeartbeat, true),
		Entry("the next pull found no consumer to answer it", nats.ErrNoResponders, false),
		Entry("a server shut down under the pull", jetstream.ErrServerShutdown, false),
		Entry("the consumer's leader changed", jetstream.ErrConsumerLeadershipChanged, false),
	)
})

var _ = Describe("An idle lane", func() {
	// pullRequest is what a worker asks its consumer for ($JS.API.CONSUMER.MSG.NEXT).
	type pullRequest struct {
		Batch     int           `json:"batch"`
		Expires   time.Duration `json:"expires"`
		Heartbeat time.Duration `json:"idle_heartbeat"`
	}
	// spyOnPulls records the pull requests sent to src's consumer, as the server receives them.
	spyOnPulls := func(nc *nats.Conn, src *source.Config) *nats.Subscription {
		sub, err := nc.SubscribeSync("$JS.API.CONSUMER.MSG.NEXT." + src.Stream().StreamName() + "." + stream.WorkerConsumer)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(sub.Unsubscribe)
		return sub
	}
	// untilLongPull reads the pulls until one is long (JetStream's default expiry, with the
	// server's heartbeat), and returns those before it.
	untilLongPull := func(sub *nats.Subscription) []pullRequest {
		var before []pullRequest
		for {
			msg, err := sub.NextMsg(10 * time.Second)
			Expect(err).NotTo(HaveOccurred(), "a lane left idle pulls for long, after a few short pulls")
			var req pullRequest
			Expect(json.Unmarshal(msg.Data, &req)).To(Succeed())
			if req.Expires == jetstream.DefaultExpires {
				Expect(req).To(Equal(pullRequest{Batch: 1, Expires: 30 * time.Second, Heartbeat: 5 * time.Second}))
				return before
			}
			before = append(before, req)
			Expect(len(before)).To(BeNumerically("<", 10), "pulls of MaxWait, five times MaxWait, then a long one")
		}
	}

	It("waits in one long pull, takes a message at once, and stops without waiting the pull out", func(ctx SpecContext) {
		src := newSource(ctx, "")
		pulls := spyOnPulls(nc, src)
		stop := startWorker(src, 20) // MaxWait 50 ms
		publish(ctx, src, track("t1", "u1", "Clicked", 1, nil, nil))
		Eventually(func() int64 { return eventCount(ctx, src) }).Should(BeEquivalentTo(1))

		By("a short pull after the first empty one, then a long one, and no more pulls meanwhile")
		before := untilLongPull(pulls)
		Expect(before).NotTo(BeEmpty())
		Expect(before[len(before)-1]).To(Equal(pullRequest{Batch: 1, Expires: 250 * time.Millisecond}), "five times MaxWait")
		Consistently(func() int { n, _, _ := pulls.Pending(); return n }, 2*time.Second).Should(BeZero(),
			"with pulls of five times MaxWait, eight more would have gone")

		By("a message arriving during the long pull is mapped at once")
		publish(ctx, src, track("t2", "u1", "Clicked", 2, nil, nil))
		Eventually(func() int64 { return eventCount(ctx, src) }).WithTimeout(5 * time.Second).Should(BeEquivalentTo(2))

		By("stopping in a long pull does not wait it out")
		untilLongPull(pulls)
		stopping := time.Now()
		Expect(stop()).To(Succeed())
		Expect(time.Since(stopping)).To(BeNumerically("<", 5*time.Second), "the pull had 30 s to go")

		By("the server dropped the abandoned pull: what arrives next waits for the next worker, which maps it at once, not after the ack wait")
		consumer, err := js.Consumer(ctx, src.Stream().StreamName(), stream.WorkerConsumer)
		Expect(err).NotTo(HaveOccurred())
		Eventually(func(g Gomega) int {
			info, err := consumer.Info(ctx)
			g.Expect(err).NotTo(HaveOccurred())
			return info.NumWaiting
		}).Should(BeZero())
		publish(ctx, src, track("t3", "u1", "Clicked", 3, nil, nil))
		startWorker(src, 20)
		Eventually(func() int64 { return eventCount(ctx, src) }).WithTimeout(10 * time.Second).Should(BeEquivalentTo(3))
		Expect(stream.DefaultAckWait).To(BeNumerically(">", 10*time.Second))
	})

	It("purges what it acknowledged while it waits in the long pull", func(ctx SpecContext) {
		src := newSource(ctx, "")
		pulls := spyOnPulls(nc, src)
		// A quiet lane purges 3-6 s after its start: well after its long pull began.
		startWorker(src, 20, func(w *Worker) { w.purgeQuiet = 6 * time.Second })
		for i := range 5 {
			publish(ctx, src, track(fmt.Sprintf("t%d", i), "u1", "Clicked", float64(i), nil, nil))
		}
		Eventually(func() int64 { return eventCount(ctx, src) }).Should(BeEquivalentTo(5))
		untilLongPull(pulls)
		Expect(storedMessages(ctx, src)).To(BeEquivalentTo(5), "not purged before the long pull")
		Eventually(func() uint64 { return storedMessages(ctx, src) }).WithTimeout(10 * time.Second).Should(BeZero())
		n, _, err := pulls.Pending()
		Expect(err).NotTo(HaveOccurred())
		Expect(n).To(BeZero(), "purged during the same long pull")
	})

	It("keeps its long pull across a reconnect, and binds again when the server restarts", Serial, func(ctx SpecContext) {
		// Restarted on its store: the stream is back, the memory-stored consumer and the pull
		// waiting on it are not.
		own := startOwnNATS(ctx)
		src := own.src
		send := func(id string) {
			data, err := json.Marshal(track(id, "u1", "Clicked", 1, nil, nil))
			Expect(err).NotTo(HaveOccurred())
			_, err = own.js.Publish(ctx, src.Stream().Subject("track"), data, jetstream.WithMsgID(id))
			Expect(err).NotTo(HaveOccurred())
		}
		pulls := spyOnPulls(own.conn, src)
		own.runWorker()
		send("before")
		Eventually(func() int64 { return eventCount(ctx, src) }).WithTimeout(10 * time.Second).Should(BeEquivalentTo(1))
		untilLongPull(pulls)

		By("a reconnect: the client subscribes the pull's inbox again and the server's pull stands, so a message is mapped at once, not after the heartbeats' 10 s")
		Expect(own.conn.ForceReconnect()).To(Succeed())
		Eventually(own.conn.IsConnected).WithTimeout(10 * time.Second).Should(BeTrue())
		send("reconnected")
		// The pull began just now, so its first heartbeat is 5 s away and a missing one would end
		// it only 10 s after it began: within 6 s, only the standing pull can have delivered.
		Eventually(func() int64 { return eventCount(ctx, src) }).WithTimeout(6 * time.Second).Should(BeEquivalentTo(2))
		untilLongPull(pulls)

		own.restart()
		Eventually(own.conn.IsConnected).WithTimeout(10 * time.Second).Should(BeTrue())
		send("after")
		By("the long pull ended with the server (a single server tells its pulls as it shuts down; one that crashes sends nothing, and the heartbeats end the pull within 10 s): the lane bound again and created its consumer")
		// The bound leaves room for the heartbeats' path and a loaded machine (8 s was too
		// tight for CI); the resilience spec's restart allows 90 s.
		Eventually(func() int64 { return eventCount(ctx, src) }).WithTimeout(30 * time.Second).Should(BeEquivalentTo(3))
	})
})
