package stream

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

var sourceSeq atomic.Int64

// newSource is a source of its own, so specs never share streams.
func newSource() Source {
	return Source{Namespace: "test", Name: fmt.Sprintf("src%d", sourceSeq.Add(1))}
}

func publish(ctx context.Context, subject, msgID string) *jetstream.PubAck {
	m := nats.NewMsg(subject)
	m.Data = []byte(`{"type":"track"}`)
	if msgID != "" {
		m.Header.Set(nats.MsgIdHdr, msgID)
	}
	ack, err := js.PublishMsg(ctx, m)
	Expect(err).NotTo(HaveOccurred())
	return ack
}

// fetchWorkers pulls up to n messages from the source's worker consumer, waiting up to wait, and
// fails on a pull error.
func fetchWorkers(ctx context.Context, src Source, n int, wait time.Duration) []jetstream.Msg {
	GinkgoHelper()
	c, err := js.Consumer(ctx, src.StreamName(), WorkerConsumer)
	Expect(err).NotTo(HaveOccurred())
	batch, err := c.Fetch(n, jetstream.FetchMaxWait(wait))
	Expect(err).NotTo(HaveOccurred())
	var msgs []jetstream.Msg
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	Expect(batch.Error()).NotTo(HaveOccurred())
	return msgs
}

func streamInfo(ctx context.Context, name string) *jetstream.StreamInfo {
	s, err := js.Stream(ctx, name)
	Expect(err).NotTo(HaveOccurred())
	info, err := s.Info(ctx)
	Expect(err).NotTo(HaveOccurred())
	return info
}

func consumerInfo(ctx context.Context, src Source) *jetstream.ConsumerInfo {
	c, err := js.Consumer(ctx, src.StreamName(), WorkerConsumer)
	Expect(err).NotTo(HaveOccurred())
	info, err := c.Info(ctx)
	Expect(err).NotTo(HaveOccurred())
	return info
}

var _ = Describe("names", func() {
	It("are derived from namespace and name", func() {
		src := Source{Namespace: "shop", Name: "web"}
		Expect(src.String()).To(Equal("shop/web"))
		Expect(src.StreamName()).To(Equal("TALLY_shop_web"))
		Expect(src.DeadLetterStreamName()).To(Equal("TALLY_shop_web_DLQ"))
		Expect(src.Subject("track")).To(Equal("tally.shop.web.msg.track"))
		Expect(src.MessageSubjects()).To(Equal("tally.shop.web.msg.>"))
		Expect(src.PartitionSubject("track", 3, 4)).To(Equal("tally.shop.web.msg.track.3"))
		Expect(src.PartitionSubject("track", 0, 1)).To(Equal("tally.shop.web.msg.track"), "one partition: the layout of earlier versions")
		Expect(PartitionConsumer(3)).To(Equal("workers-3"))
		Expect(src.DeadLetterSubject()).To(Equal("tally.shop.web.dlq"))
	})
})

var _ = Describe("Ensure", func() {
	It("creates the stream, the dead-letter stream and the worker consumer", func(ctx SpecContext) {
		src := newSource()
		Expect(Ensure(ctx, js, src, Settings{})).To(Succeed())

		info := streamInfo(ctx, src.StreamName())
		Expect(info.Config.Subjects).To(Equal([]string{src.MessageSubjects()}))
		Expect(info.Config.Storage).To(Equal(jetstream.FileStorage))
		Expect(info.Config.Retention).To(Equal(jetstream.LimitsPolicy), "acknowledged messages leave in the workers' purges")
		Expect(info.Config.Discard).To(Equal(jetstream.DiscardNew), "a full stream refuses, it never drops accepted messages")
		Expect(info.Config.MaxAge).To(BeZero(), "accepted messages never age out by default")
		Expect(info.Config.Duplicates).To(Equal(DefaultDuplicateWindow))
		Expect(info.Config.Replicas).To(Equal(1))
		Expect(info.Config.AllowAtomicPublish).To(BeTrue())

		dlq := streamInfo(ctx, src.DeadLetterStreamName())
		Expect(dlq.Config.Subjects).To(Equal([]string{src.DeadLetterSubject()}))
		Expect(dlq.Config.Storage).To(Equal(jetstream.FileStorage))
		Expect(dlq.Config.MaxAge).To(BeZero(), "dead letters never expire")

		ci := consumerInfo(ctx, src)
		Expect(ci.Config.Durable).To(Equal(WorkerConsumer))
		Expect(ci.Config.FilterSubject).To(Equal("tally."+src.Namespace+"."+src.Name+".msg.*"), "the unpartitioned subjects")
		Expect(ci.Config.AckPolicy).To(Equal(jetstream.AckExplicitPolicy))
		Expect(ci.Config.DeliverPolicy).To(Equal(jetstream.DeliverAllPolicy))
		Expect(ci.Config.AckWait).To(Equal(DefaultAckWait))
		Expect(ci.Config.MaxDeliver).To(Equal(-1))
		Expect(ci.Config.MemoryStorage).To(BeTrue(), "the stream keeps what is unacknowledged; no state file per ack")
	})

	It("replaces an earlier version's file-stored consumer, and its messages are all delivered", func(ctx SpecContext) {
		src := newSource()
		Expect(Ensure(ctx, js, src, Settings{})).To(Succeed())
		old := ConsumerConfig(src)
		old.MemoryStorage = false
		Expect(js.DeleteConsumer(ctx, src.StreamName(), WorkerConsumer)).To(Succeed())
		_, err := js.CreateConsumer(ctx, src.StreamName(), old)
		Expect(err).NotTo(HaveOccurred())
		for _, id := range []string{"acked", "held", "waiting"} {
			publish(ctx, src.Subject("track"), id)
		}
		held := fetchWorkers(ctx, src, 2, 5*time.Second)
		Expect(held).To(HaveLen(2))
		Expect(held[0].DoubleAck(ctx)).To(Succeed())
		c, err := js.Consumer(ctx, src.StreamName(), WorkerConsumer)
		Expect(err).NotTo(HaveOccurred())
		_, purged, err := PurgeAcknowledged(ctx, js, src, c) // as the worker does
		Expect(err).NotTo(HaveOccurred())
		Expect(purged).To(Equal(uint64(1)))

		state, err := Inspect(ctx, js, src)
		Expect(err).NotTo(HaveOccurred())
		Expect(InSync(src, Settings{}, state)).To(BeFalse(), "a file-stored consumer is out of date")
		Expect(Ensure(ctx, js, src, Settings{})).To(Succeed())
		Expect(consumerInfo(ctx, src).Config.MemoryStorage).To(BeTrue())

		By("the new consumer delivers the held message and the waiting one at once, not after the ack wait")
		var ids []string
		for _, m := range fetchWorkers(ctx, src, 3, 2*time.Second) {
			ids = append(ids, m.Headers().Get(nats.MsgIdHdr))
		}
		Expect(ids).To(Equal([]string{"held", "waiting"}))
	})

	It("uses the source's max age, and never a duplicate window longer than it", func(ctx SpecContext) {
		src := newSource()
		Expect(Ensure(ctx, js, src, Settings{MaxAge: 5 * time.Minute})).To(Succeed())
		info := streamInfo(ctx, src.StreamName())
		Expect(info.Config.MaxAge).To(Equal(5 * time.Minute))
		Expect(info.Config.Duplicates).To(Equal(5 * time.Minute))
	})

	It("is idempotent and keeps the messages", func(ctx SpecContext) {
		src := newSource()
		Expect(Ensure(ctx, js, src, Settings{})).To(Succeed())
		publish(ctx, src.Subject("track"), "m1")
		created := streamInfo(ctx, src.StreamName()).Created
		Expect(Ensure(ctx, js, src, Settings{})).To(Succeed())
		Expect(Ensure(ctx, js, src, Settings{})).To(Succeed())
		info := streamInfo(ctx, src.StreamName())
		Expect(info.Created).To(Equal(created))
		Expect(info.State.Msgs).To(Equal(uint64(1)))
		Expect(consumerInfo(ctx, src).NumPending).To(Equal(uint64(1)))
	})

	It("updates the max age when the setting changes", func(ctx SpecContext) {
		src := newSource()
		Expect(Ensure(ctx, js, src, Settings{MaxAge: 2 * time.Hour})).To(Succeed())
		publish(ctx, src.Subject("identify"), "m1")
		Expect(Ensure(ctx, js, src, Settings{MaxAge: 48 * time.Hour})).To(Succeed())
		info := streamInfo(ctx, src.StreamName())
		Expect(info.Config.MaxAge).To(Equal(48 * time.Hour))
		Expect(info.State.Msgs).To(Equal(uint64(1)))
	})

	It("turns atomic publishing on for a stream created without it, keeping its messages", func(ctx SpecContext) {
		src := newSource()
		cfg := StreamConfig(src, Settings{})
		cfg.AllowAtomicPublish = false
		_, err := js.CreateStream(ctx, cfg)
		Expect(err).NotTo(HaveOccurred())
		publish(ctx, src.Subject("track"), "m1")

		Expect(Ensure(ctx, js, src, Settings{})).To(Succeed())
		info := streamInfo(ctx, src.StreamName())
		Expect(info.Config.AllowAtomicPublish).To(BeTrue())
		Expect(info.State.Msgs).To(Equal(uint64(1)))
	})

	It("recreates a stream deleted behind its back, with its consumer", func(ctx SpecContext) {
		src := newSource()
		Expect(Ensure(ctx, js, src, Settings{})).To(Succeed())
		Expect(js.DeleteStream(ctx, src.StreamName())).To(Succeed())
		Expect(js.DeleteStream(ctx, src.DeadLetterStreamName())).To(Succeed())
		Expect(Ensure(ctx, js, src, Settings{})).To(Succeed())
		streamInfo(ctx, src.StreamName())
		streamInfo(ctx, src.DeadLetterStreamName())
		Expect(consumerInfo(ctx, src).Config.FilterSubject).To(Equal("tally." + src.Namespace + "." + src.Name + ".msg.*"))
	})

	It("keeps a work queue made by an earlier version one, applies the rest, and purges nothing from it", func(ctx SpecContext) {
		src := newSource()
		old := StreamConfig(src, Settings{})
		old.Retention, old.MaxAge = jetstream.WorkQueuePolicy, 7*24*time.Hour
		_, err := js.CreateStream(ctx, old)
		Expect(err).NotTo(HaveOccurred())
		publish(ctx, src.Subject("track"), "m1")
		publish(ctx, src.Subject("track"), "m2")

		// JetStream refuses to change retention to or from work queue in place.
		Expect(Ensure(ctx, js, src, Settings{})).To(Succeed())
		info := streamInfo(ctx, src.StreamName())
		Expect(info.Config.Retention).To(Equal(jetstream.WorkQueuePolicy))
		Expect(info.Config.MaxAge).To(BeZero(), "accepted messages no longer age out")
		Expect(info.State.Msgs).To(Equal(uint64(2)))
		state, err := Inspect(ctx, js, src)
		Expect(err).NotTo(HaveOccurred())
		Expect(InSync(src, Settings{}, state)).To(BeTrue())

		msgs := fetchWorkers(ctx, src, 2, 5*time.Second)
		Expect(msgs).To(HaveLen(2))
		Expect(msgs[0].DoubleAck(ctx)).To(Succeed())
		c, err := js.Consumer(ctx, src.StreamName(), WorkerConsumer)
		Expect(err).NotTo(HaveOccurred())
		floor, purged, err := PurgeAcknowledged(ctx, js, src, c)
		Expect(err).NotTo(HaveOccurred())
		Expect(floor).To(Equal(uint64(1)))
		Expect(purged).To(BeZero(), "the work queue removed the acknowledged message itself")
		Expect(streamInfo(ctx, src.StreamName()).State.Msgs).To(Equal(uint64(1)), "the held one stays")
	})

	It("recreates a deleted consumer", func(ctx SpecContext) {
		src := newSource()
		Expect(Ensure(ctx, js, src, Settings{})).To(Succeed())
		Expect(js.DeleteConsumer(ctx, src.StreamName(), WorkerConsumer)).To(Succeed())
		Expect(Ensure(ctx, js, src, Settings{})).To(Succeed())
		Expect(consumerInfo(ctx, src).Config.Durable).To(Equal(WorkerConsumer))
	})
})

var _ = Describe("InSync", func() {
	It("holds right after Ensure and breaks on a changed setting, a hand edit or a missing object", func(ctx SpecContext) {
		src := newSource()
		Expect(Ensure(ctx, js, src, Settings{})).To(Succeed())
		inspect := func() State {
			state, err := Inspect(ctx, js, src)
			Expect(err).NotTo(HaveOccurred())
			return state
		}
		Expect(InSync(src, Settings{}, inspect())).To(BeTrue())
		Expect(InSync(src, Settings{Replicas: 3}, inspect())).To(BeFalse())
		Expect(InSync(src, Settings{MaxAge: time.Hour}, inspect())).To(BeFalse())

		edited := StreamConfig(src, Settings{})
		edited.MaxAge = time.Hour
		_, err := js.UpdateStream(ctx, edited)
		Expect(err).NotTo(HaveOccurred())
		Expect(InSync(src, Settings{}, inspect())).To(BeFalse(), "hand-edited max age")
		Expect(Ensure(ctx, js, src, Settings{})).To(Succeed())
		Expect(InSync(src, Settings{}, inspect())).To(BeTrue())

		Expect(js.DeleteConsumer(ctx, src.StreamName(), WorkerConsumer)).To(Succeed())
		Expect(InSync(src, Settings{}, inspect())).To(BeFalse(), "missing consumer")
		Expect(Ensure(ctx, js, src, Settings{})).To(Succeed())
		Expect(js.DeleteStream(ctx, src.DeadLetterStreamName())).To(Succeed())
		Expect(InSync(src, Settings{}, inspect())).To(BeFalse(), "missing dead-letter stream")
	})
})

var _ = Describe("acknowledged messages", func() {
	It("stay until purged; the purge keeps unacknowledged messages, and Nats-Msg-Id still dedupes", func(ctx SpecContext) {
		src := newSource()
		Expect(Ensure(ctx, js, src, Settings{})).To(Succeed())
		publish(ctx, src.Subject("track"), "a")
		publish(ctx, src.Subject("identify"), "b")
		Expect(publish(ctx, src.Subject("track"), "a").Duplicate).To(BeTrue())

		msgs := fetchWorkers(ctx, src, 2, 5*time.Second)
		Expect(msgs).To(HaveLen(2))
		Expect(msgs[0].DoubleAck(ctx)).To(Succeed())
		Expect(msgs[1].Nak()).To(Succeed())
		state, err := Inspect(ctx, js, src)
		Expect(err).NotTo(HaveOccurred())
		Expect(state.Messages).To(Equal(uint64(2)), "acknowledged, not yet purged")
		// Fetched again before the purge: a purge empties the consumer's redelivery queue, and what
		// was queued there is redelivered only after the ack wait (see PurgeBelowFloor).
		redelivered := fetchWorkers(ctx, src, 1, 5*time.Second)
		Expect(redelivered).To(HaveLen(1))

		c, err := js.Consumer(ctx, src.StreamName(), WorkerConsumer)
		Expect(err).NotTo(HaveOccurred())
		floor, purged, err := PurgeAcknowledged(ctx, js, src, c)
		Expect(err).NotTo(HaveOccurred())
		Expect(floor).To(Equal(uint64(1)))
		Expect(purged).To(Equal(uint64(1)))
		Eventually(func(g Gomega) {
			state, err := Inspect(ctx, js, src)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(state.Messages).To(Equal(uint64(1)), "the unacknowledged message stays")
			g.Expect(state.Backlog).To(Equal(uint64(1)))
		}).WithContext(ctx).Should(Succeed())
		// Within the duplicate window a purged message is still a duplicate.
		Expect(publish(ctx, src.Subject("track"), "a").Duplicate).To(BeTrue())

		By("purging again once the rest is acknowledged")
		Expect(redelivered[0].DoubleAck(ctx)).To(Succeed())
		floor, purged, err = PurgeAcknowledged(ctx, js, src, c)
		Expect(err).NotTo(HaveOccurred())
		Expect(floor).To(Equal(uint64(2)))
		Expect(purged).To(Equal(uint64(1)))
		Expect(streamInfo(ctx, src.StreamName()).State.Msgs).To(BeZero())
	})

	It("are purged per consumer: one partition's purge leaves the other partitions' messages", func(ctx SpecContext) {
		src := newSource()
		Expect(Ensure(ctx, js, src, Settings{Partitions: 2})).To(Succeed())
		publish(ctx, src.Subject("track"), "unpartitioned") // from before the source was partitioned
		publish(ctx, src.PartitionSubject("track", 1, 2), "p1-a")
		publish(ctx, src.PartitionSubject("track", 0, 2), "p0-a")
		publish(ctx, src.PartitionSubject("track", 1, 2), "p1-b")
		publish(ctx, src.PartitionSubject("track", 0, 2), "p0-b")

		p0, err := js.Consumer(ctx, src.StreamName(), PartitionConsumer(0))
		Expect(err).NotTo(HaveOccurred())
		batch, err := p0.Fetch(10, jetstream.FetchMaxWait(time.Second))
		Expect(err).NotTo(HaveOccurred())
		n := 0
		for m := range batch.Messages() {
			Expect(m.DoubleAck(ctx)).To(Succeed())
			n++
		}
		Expect(n).To(Equal(2))
		floor, purged, err := PurgeAcknowledged(ctx, js, src, p0)
		Expect(err).NotTo(HaveOccurred())
		Expect(floor).To(BeNumerically(">=", 5), "partition 0's last message is the stream's fifth")
		Expect(purged).To(Equal(uint64(2)))

		info := streamInfo(ctx, src.StreamName())
		Expect(info.State.Msgs).To(Equal(uint64(3)), "the unpartitioned message and partition 1's stay")
		for _, seq := range []uint64{1, 2, 4} {
			s, err := js.Stream(ctx, src.StreamName())
			Expect(err).NotTo(HaveOccurred())
			_, err = s.GetMsg(ctx, seq)
			Expect(err).NotTo(HaveOccurred(), "message %d", seq)
		}
		state, err := Inspect(ctx, js, src)
		Expect(err).NotTo(HaveOccurred())
		Expect(state.Backlog).To(Equal(uint64(3)))
	})

	It("gives up on a purge no one answers (a stream without a leader) after the API's timeout", func(ctx SpecContext) {
		// A JetStream API under a prefix no server serves, whose purge requests a subscriber takes
		// and never answers, as a stream in an election does.
		silent, err := nc.SubscribeSync("$SILENT.API.STREAM.PURGE.>")
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(silent.Unsubscribe)
		sjs, err := jetstream.NewWithAPIPrefix(nc, "$SILENT.API", jetstream.WithDefaultTimeout(300*time.Millisecond))
		Expect(err).NotTo(HaveOccurred())
		src := newSource()
		info := &jetstream.ConsumerInfo{Name: WorkerConsumer, Config: ConsumerConfig(src), AckFloor: jetstream.SequenceInfo{Stream: 7}}

		_, err = PurgeBelowFloor(context.Background(), sjs, src, info) // no deadline of its own
		Expect(err).To(MatchError(context.DeadlineExceeded))
		req, err := silent.NextMsg(time.Second)
		Expect(err).NotTo(HaveOccurred())
		Expect(req.Subject).To(Equal("$SILENT.API.STREAM.PURGE." + src.StreamName()))
		Expect(string(req.Data)).To(MatchJSON(`{"filter":"` + info.Config.FilterSubject + `","seq":8}`))
	}, SpecTimeout(20*time.Second))

	It("are not purged through a consumer without a filter of its own", func(ctx SpecContext) {
		src := newSource()
		Expect(Ensure(ctx, js, src, Settings{})).To(Succeed())
		publish(ctx, src.Subject("track"), "a")
		c, err := js.CreateConsumer(ctx, src.StreamName(), jetstream.ConsumerConfig{Durable: "everything", AckPolicy: jetstream.AckExplicitPolicy})
		Expect(err).NotTo(HaveOccurred())
		batch, err := c.Fetch(1, jetstream.FetchMaxWait(time.Second))
		Expect(err).NotTo(HaveOccurred())
		for m := range batch.Messages() {
			Expect(m.DoubleAck(ctx)).To(Succeed())
		}
		_, _, err = PurgeAcknowledged(ctx, js, src, c)
		Expect(err).To(MatchError(ContainSubstring("no single filter subject")))
		Expect(streamInfo(ctx, src.StreamName()).State.Msgs).To(Equal(uint64(1)), "the workers have not taken it yet")
	})
})

var _ = Describe("Delete", func() {
	It("removes the consumer and both streams", func(ctx SpecContext) {
		src := newSource()
		Expect(Ensure(ctx, js, src, Settings{})).To(Succeed())
		Expect(Delete(ctx, js, src)).To(Succeed())
		_, err := js.Stream(ctx, src.StreamName())
		Expect(err).To(MatchError(jetstream.ErrStreamNotFound))
		_, err = js.Stream(ctx, src.DeadLetterStreamName())
		Expect(err).To(MatchError(jetstream.ErrStreamNotFound))
		_, err = Inspect(ctx, js, src)
		Expect(err).To(MatchError(jetstream.ErrStreamNotFound))
	})

	It("is fine when everything, or only part, is already gone", func(ctx SpecContext) {
		src := newSource()
		Expect(Delete(ctx, js, src)).To(Succeed())

		Expect(Ensure(ctx, js, src, Settings{})).To(Succeed())
		Expect(js.DeleteConsumer(ctx, src.StreamName(), WorkerConsumer)).To(Succeed())
		Expect(js.DeleteStream(ctx, src.DeadLetterStreamName())).To(Succeed())
		Expect(Delete(ctx, js, src)).To(Succeed())
		_, err := js.Stream(ctx, src.StreamName())
		Expect(err).To(MatchError(jetstream.ErrStreamNotFound))
		Expect(Delete(ctx, js, src)).To(Succeed())
	})

	It("leaves other sources alone", func(ctx SpecContext) {
		a, b := newSource(), newSource()
		Expect(Ensure(ctx, js, a, Settings{})).To(Succeed())
		Expect(Ensure(ctx, js, b, Settings{})).To(Succeed())
		Expect(Delete(ctx, js, a)).To(Succeed())
		state, err := Inspect(ctx, js, b)
		Expect(err).NotTo(HaveOccurred())
		Expect(state.ConsumerExists).To(BeTrue())
		Expect(state.DeadLetterStreamExists).To(BeTrue())
	})
})

var _ = Describe("Inspect", func() {
	It("reports an empty stream with zero times and no backlog", func(ctx SpecContext) {
		src := newSource()
		Expect(Ensure(ctx, js, src, Settings{})).To(Succeed())
		state, err := Inspect(ctx, js, src)
		Expect(err).NotTo(HaveOccurred())
		Expect(state.Messages).To(BeZero())
		Expect(state.FirstMessageAt.IsZero()).To(BeTrue())
		Expect(state.LastMessageAt.IsZero()).To(BeTrue())
		Expect(state.Backlog).To(BeZero())
		Expect(state.DeadLetters).To(BeZero())
		Expect(state.ConsumerExists).To(BeTrue())
		Expect(state.DeadLetterStreamExists).To(BeTrue())
	})

	It("reports messages, first and last times, the backlog until acked, and dead letters", func(ctx SpecContext) {
		src := newSource()
		Expect(Ensure(ctx, js, src, Settings{})).To(Succeed())
		before := time.Now().Add(-time.Second)
		publish(ctx, src.Subject("group"), "m1")
		publish(ctx, src.Subject("identify"), "m2")
		publish(ctx, src.Subject("track"), "m3")
		after := time.Now().Add(time.Second)

		// The consumer's pending count may trail the PubAck by a moment.
		Eventually(func(g Gomega) {
			state, err := Inspect(ctx, js, src)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(state.Backlog).To(Equal(uint64(3)))
		}).WithContext(ctx).Should(Succeed())
		state, err := Inspect(ctx, js, src)
		Expect(err).NotTo(HaveOccurred())
		Expect(state.Messages).To(Equal(uint64(3)))
		Expect(state.FirstMessageAt).To(BeTemporally(">=", before))
		Expect(state.LastMessageAt).To(BeTemporally("<=", after))
		Expect(state.LastMessageAt).To(BeTemporally(">=", state.FirstMessageAt))

		got := fetchWorkers(ctx, src, 3, 5*time.Second)
		for _, m := range got {
			Expect(m.DoubleAck(ctx)).To(Succeed())
		}
		Expect(got).To(HaveLen(3))
		c, err := js.Consumer(ctx, src.StreamName(), WorkerConsumer)
		Expect(err).NotTo(HaveOccurred())
		_, _, err = PurgeAcknowledged(ctx, js, src, c)
		Expect(err).NotTo(HaveOccurred())

		Eventually(func(g Gomega) {
			state, err := Inspect(ctx, js, src)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(state.Backlog).To(BeZero())
			g.Expect(state.Messages).To(BeZero(), "acked messages leave in the purge")
		}).WithContext(ctx).Should(Succeed())
		state, err = Inspect(ctx, js, src)
		Expect(err).NotTo(HaveOccurred())
		Expect(state.LastSequence).To(Equal(uint64(3)), "the stream still tells that messages arrived")
		Expect(state.LastMessageAt).To(BeTemporally(">=", before))

		publish(ctx, src.DeadLetterSubject(), "")
		publish(ctx, src.DeadLetterSubject(), "")
		state, err = Inspect(ctx, js, src)
		Expect(err).NotTo(HaveOccurred())
		Expect(state.DeadLetters).To(Equal(uint64(2)))
		Expect(state.Messages).To(BeZero(), "dead letters are not messages of the stream")
	})

	It("still reports a first message time once the first message is gone", func(ctx SpecContext) {
		src := newSource()
		Expect(Ensure(ctx, js, src, Settings{})).To(Succeed())
		publish(ctx, src.Subject("track"), "m1")
		publish(ctx, src.Subject("track"), "m2")
		s, err := js.Stream(ctx, src.StreamName())
		Expect(err).NotTo(HaveOccurred())
		Expect(s.DeleteMsg(ctx, 1)).To(Succeed())
		state, err := Inspect(ctx, js, src)
		Expect(err).NotTo(HaveOccurred())
		Expect(state.Messages).To(Equal(uint64(1)))
		Expect(state.FirstMessageAt.IsZero()).To(BeFalse())
		Expect(state.FirstMessageAt).To(BeTemporally("<=", state.LastMessageAt))
	})

	It("reports a missing consumer and dead-letter stream", func(ctx SpecContext) {
		src := newSource()
		Expect(Ensure(ctx, js, src, Settings{})).To(Succeed())
		Expect(js.DeleteConsumer(ctx, src.StreamName(), WorkerConsumer)).To(Succeed())
		Expect(js.DeleteStream(ctx, src.DeadLetterStreamName())).To(Succeed())
		state, err := Inspect(ctx, js, src)
		Expect(err).NotTo(HaveOccurred())
		Expect(state.ConsumerExists).To(BeFalse())
		Expect(state.DeadLetterStreamExists).To(BeFalse())
	})

	It("reports a missing stream as ErrStreamNotFound", func(ctx SpecContext) {
		_, err := Inspect(ctx, js, newSource())
		Expect(err).To(MatchError(jetstream.ErrStreamNotFound))
	})
})

var _ = Describe("isolation and dedupe", func() {
	It("keeps messages of look-alike sources apart", func(ctx SpecContext) {
		// Names that would collide if '.', '_' or a prefix match could join them.
		a := Source{Namespace: "iso", Name: "web"}
		b := Source{Namespace: "iso", Name: "web2"}
		c := Source{Namespace: "iso-web", Name: "x"}
		d := Source{Namespace: "iso", Name: "web-x"}
		for _, s := range []Source{a, b, c, d} {
			Expect(Ensure(ctx, js, s, Settings{})).To(Succeed())
		}
		ack := publish(ctx, b.Subject("track"), "b1")
		Expect(ack.Stream).To(Equal(b.StreamName()))
		ack = publish(ctx, c.Subject("track"), "c1")
		Expect(ack.Stream).To(Equal(c.StreamName()))
		ack = publish(ctx, d.Subject("identify"), "d1")
		Expect(ack.Stream).To(Equal(d.StreamName()))
		publish(ctx, d.DeadLetterSubject(), "d-dlq")

		state, err := Inspect(ctx, js, a)
		Expect(err).NotTo(HaveOccurred())
		Expect(state.Messages).To(BeZero())
		Expect(state.Backlog).To(BeZero())
		Expect(state.DeadLetters).To(BeZero())
		for _, s := range []Source{b, c, d} {
			state, err := Inspect(ctx, js, s)
			Expect(err).NotTo(HaveOccurred())
			Expect(state.Messages).To(Equal(uint64(1)), s.String())
		}
	})

	It("stores a message published twice with the same Nats-Msg-Id once", func(ctx SpecContext) {
		src := newSource()
		Expect(Ensure(ctx, js, src, Settings{})).To(Succeed())
		first := publish(ctx, src.Subject("track"), "same-id")
		Expect(first.Duplicate).To(BeFalse())
		again := publish(ctx, src.Subject("track"), "same-id")
		Expect(again.Duplicate).To(BeTrue())
		Expect(again.Sequence).To(Equal(first.Sequence))
		// The id is what counts, not the subject it came on.
		other := publish(ctx, src.Subject("identify"), "same-id")
		Expect(other.Duplicate).To(BeTrue())
		publish(ctx, src.Subject("track"), "another-id")

		Eventually(func(g Gomega) {
			state, err := Inspect(ctx, js, src)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(state.Messages).To(Equal(uint64(2)))
			g.Expect(state.Backlog).To(Equal(uint64(2)))
		}).WithContext(ctx).Should(Succeed())
	})
})

var _ = Describe("Partitions", func() {
	It("route a user to the same slot and partition under every partition count", func() {
		for i := range 1000 {
			id := fmt.Sprintf("user-%d", i)
			slot := Slot(id)
			Expect(slot).To(BeNumerically("<", Slots))
			for _, n := range []int{1, 2, 4, 8, 16, 32, 64} {
				Expect(ValidPartitions(n)).To(BeTrue())
				Expect(Partition(id, n)).To(Equal(slot%n), "a partition's users are the slots ≡ p (mod n)")
			}
		}
		Expect(ValidPartitions(3)).To(BeFalse())
		Expect(ValidPartitions(128)).To(BeFalse())
		Expect(UserKey("u1", "a1")).To(Equal("u1"))
		Expect(UserKey("", "a1")).To(Equal("a1"))
	})

	It("get a consumer each besides the unpartitioned one, which outlive a lower count and are all counted", func(ctx SpecContext) {
		src := newSource()
		Expect(Ensure(ctx, js, src, Settings{Partitions: 4})).To(Succeed())
		state, err := Inspect(ctx, js, src)
		Expect(err).NotTo(HaveOccurred())
		Expect(state.Partitions).To(Equal(4))
		Expect(state.Consumers).To(HaveLen(5))
		for p := range 4 {
			Expect(state.Consumers[PartitionConsumer(p)].FilterSubject).To(Equal(fmt.Sprintf("tally.%s.%s.msg.*.%d", src.Namespace, src.Name, p)))
		}
		Expect(InSync(src, Settings{Partitions: 4}, state)).To(BeTrue())
		Expect(InSync(src, Settings{Partitions: 8}, state)).To(BeFalse(), "partitions 4-7 have no consumer yet")

		By("messages of every partition and the unpartitioned subjects are the backlog")
		for _, subject := range []string{src.Subject("track"), src.PartitionSubject("track", 1, 4), src.PartitionSubject("identify", 3, 4)} {
			_, err := js.Publish(ctx, subject, []byte(`{}`))
			Expect(err).NotTo(HaveOccurred())
		}
		Eventually(func(g Gomega) {
			state, err := Inspect(ctx, js, src)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(state.Backlog).To(Equal(uint64(3)))
		}).Should(Succeed())

		By("a lower count keeps the higher partitions' consumers")
		Expect(Ensure(ctx, js, src, Settings{Partitions: 2})).To(Succeed())
		state, err = Inspect(ctx, js, src)
		Expect(err).NotTo(HaveOccurred())
		Expect(state.Partitions).To(Equal(4))
		Expect(InSync(src, Settings{Partitions: 2}, state)).To(BeTrue())
	})
})
