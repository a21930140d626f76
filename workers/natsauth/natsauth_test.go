package natsauth_test

import (
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/workers/natsauth"
	"github.com/tallyhq/tally/workers/stream"
)

// The attacks a tenant with shell access to its own pods could make with the credentials mounted
// there: each must be refused by the server, never merely not attempted by Tally's code.

var _ = Describe("a source's receiver user", func() {
	var c *conn
	var js jetstream.JetStream

	BeforeEach(func() {
		c = podConn(acme, natsauth.Receiver)
		var err error
		// Refused requests wait for their timeout: keep it short.
		js, err = jetstream.New(c.Conn, jetstream.WithPublishAsyncTimeout(2*time.Second), jetstream.WithDefaultTimeout(time.Second))
		Expect(err).NotTo(HaveOccurred())
	})

	It("stores what the real receiver publishes, message by message and as atomic batches", func() {
		Expect(publishThroughReceiver(js, c.Conn, false)).To(Equal(map[string]int{"": 20}))
		// tally manager --receiver-atomic-batches: the whole request in one atomic batch
		atomic := publishThroughReceiver(js, c.Conn, true)
		Expect(atomic).To(HaveLen(1), "one atomic batch carried the request")
		Expect(atomic).NotTo(HaveKey(""))
		Expect(c.errors()).To(BeEmpty())
	})

	It("cannot publish into another source's stream", func() {
		before := messages(globex)
		_, err := js.Publish(ctx, globex.Stream().Subject("track"), []byte(`{"type":"track","event":"forged"}`),
			jetstream.WithRetryAttempts(0))
		Expect(err).To(HaveOccurred())
		haveViolation(c, "publish", globex.Stream().Subject("track"))
		Expect(messages(globex)).To(Equal(before))

		By("nor into its own dead letters, nor any subject but its own messages")
		for _, subject := range []string{acme.Stream().DeadLetterSubject(), "tally.acme-ns.web.other", "anything"} {
			Expect(c.Publish(subject, []byte("x"))).To(Succeed()) // refused asynchronously
			haveViolation(c, "publish", subject)
		}
	})

	It("cannot read another source's stream, nor its own", func() {
		for _, src := range allPeers {
			name := src.Stream().StreamName()
			_, err := js.Consumer(ctx, name, stream.WorkerConsumer)
			Expect(err).To(HaveOccurred())
			haveViolation(c, "publish", "$JS.API.CONSUMER.INFO."+name+"."+stream.WorkerConsumer)

			_, err = js.CreateOrUpdateConsumer(ctx, name, jetstream.ConsumerConfig{Name: "spy", AckPolicy: jetstream.AckNonePolicy})
			Expect(err).To(HaveOccurred())
			haveViolation(c, "publish", "$JS.API.CONSUMER.CREATE."+name+".spy")

			_, err = c.Request("$JS.API.CONSUMER.MSG.NEXT."+name+"."+stream.WorkerConsumer, []byte(`{"batch":1}`), time.Second)
			Expect(err).To(HaveOccurred())
			haveViolation(c, "publish", "$JS.API.CONSUMER.MSG.NEXT."+name+"."+stream.WorkerConsumer)

			_, err = c.Request("$JS.API.STREAM.MSG.GET."+name, []byte(`{"seq":1}`), time.Second)
			Expect(err).To(HaveOccurred())
			haveViolation(c, "publish", "$JS.API.STREAM.MSG.GET."+name)

			_, err = c.Request("$JS.API.DIRECT.GET."+name, []byte(`{"seq":1}`), time.Second)
			Expect(err).To(HaveOccurred())
			haveViolation(c, "publish", "$JS.API.DIRECT.GET."+name)
		}

		By("nor listen to the messages as they are published, nor to other users' replies")
		for _, subject := range []string{"tally.>", globex.Stream().MessageSubjects(), "_INBOX.>",
			natsauth.InboxPrefix(globex.Stream(), natsauth.Worker) + ".>", natsauth.InboxPrefix(acme.Stream(), natsauth.Worker) + ".>"} {
			_, err := c.SubscribeSync(subject)
			Expect(err).NotTo(HaveOccurred()) // refused asynchronously
			haveViolation(c, "subscription", subject)
		}
	})

	It("cannot delete, purge, change or create a stream", func() {
		for _, src := range allPeers {
			name := src.Stream().StreamName()
			Expect(js.DeleteStream(ctx, name)).NotTo(Succeed())
			haveViolation(c, "publish", "$JS.API.STREAM.DELETE."+name)
			_, err := c.Request("$JS.API.STREAM.PURGE."+name, nil, time.Second)
			Expect(err).To(HaveOccurred())
			haveViolation(c, "publish", "$JS.API.STREAM.PURGE."+name)
			Expect(streamExists(name)).To(BeTrue())
		}
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "HIJACK", Subjects: []string{"tally.>"}})
		Expect(err).To(HaveOccurred())
		haveViolation(c, "publish", "$JS.API.STREAM.CREATE.HIJACK")
		Expect(streamExists("HIJACK")).To(BeFalse())
	})
})

var _ = Describe("a source's worker user", func() {
	var c *conn
	var js jetstream.JetStream

	BeforeEach(func() {
		c = podConn(acme, natsauth.Worker)
		var err error
		js, err = jetstream.New(c.Conn, jetstream.WithDefaultTimeout(time.Second))
		Expect(err).NotTo(HaveOccurred())
	})

	It("consumes its own consumer, publishes dead letters and purges what it acknowledged, as the worker does", func() {
		By("the admin publishing three messages to the source")
		for _, id := range []string{"w1", "w2", "w3"} {
			_, err := adminJS.Publish(ctx, acme.Stream().Subject("track"), []byte(`{"type":"track"}`), jetstream.WithMsgID("worker-"+id))
			Expect(err).NotTo(HaveOccurred())
		}
		Eventually(func() uint64 { return messages(acme) }).Should(BeNumerically(">=", 3))
		deadBefore := deadLetters(acme)

		consumer, err := js.Consumer(ctx, acme.Stream().StreamName(), stream.WorkerConsumer) // the worker's bind
		Expect(err).NotTo(HaveOccurred())
		var got []jetstream.Msg
		for len(got) < int(messages(acme)) {
			batch, err := consumer.Fetch(100, jetstream.FetchMaxWait(time.Second), jetstream.FetchMaxBytes(8<<20))
			Expect(err).NotTo(HaveOccurred())
			for m := range batch.Messages() {
				got = append(got, m)
			}
			Expect(batch.Error()).To(Or(Not(HaveOccurred()), MatchError(nats.ErrTimeout)))
		}
		Expect(got[0].InProgress()).To(Succeed())
		Expect(got[1].NakWithDelay(time.Nanosecond)).To(Succeed())

		By("dead-lettering one, acknowledging the rest")
		dead := stream.NewDeadLetter(acme.Stream(), acme.Tenant, got[0], errors.New("unmappable"))
		_, err = js.PublishMsg(ctx, dead)
		Expect(err).NotTo(HaveOccurred())
		Expect(got[0].DoubleAck(ctx)).To(Succeed())
		Expect(deadLetters(acme)).To(Equal(deadBefore + 1))
		Eventually(ackWaiting(consumer)).Should(Succeed())
		for _, m := range got[2:] {
			Expect(m.Ack()).To(Succeed())
		}
		var highest uint64
		for _, m := range got {
			meta, err := m.Metadata()
			Expect(err).NotTo(HaveOccurred())
			highest = max(highest, meta.Sequence.Stream)
		}
		Eventually(func(g Gomega) {
			floor, _, err := stream.PurgeAcknowledged(ctx, js, acme.Stream(), consumer)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(floor).To(BeNumerically(">=", highest))
			g.Expect(messages(acme)).To(BeZero(), "the purge leaves nothing acknowledged in the stream")
		}).Should(Succeed())
		Expect(c.errors()).To(BeEmpty())
	})

	It("cannot read another source's consumer or stream", func() {
		name := globex.Stream().StreamName()
		_, err := js.Consumer(ctx, name, stream.WorkerConsumer)
		Expect(err).To(HaveOccurred())
		haveViolation(c, "publish", "$JS.API.CONSUMER.INFO."+name+"."+stream.WorkerConsumer)
		_, err = c.Request("$JS.API.CONSUMER.MSG.NEXT."+name+"."+stream.WorkerConsumer, []byte(`{"batch":1}`), time.Second)
		Expect(err).To(HaveOccurred())
		haveViolation(c, "publish", "$JS.API.CONSUMER.MSG.NEXT."+name+"."+stream.WorkerConsumer)
		theirs := stream.NamedConsumerConfig(globex.Stream(), stream.WorkerConsumer)
		_, err = js.CreateOrUpdateConsumer(ctx, name, theirs)
		Expect(err).To(HaveOccurred())
		haveViolation(c, "publish", "$JS.API.CONSUMER.CREATE."+name+"."+theirs.Durable+"."+theirs.FilterSubject)
		_, err = c.Request("$JS.API.STREAM.MSG.GET."+acme.Stream().DeadLetterStreamName(), []byte(`{"seq":1}`), time.Second)
		Expect(err).To(HaveOccurred())
		haveViolation(c, "publish", "$JS.API.STREAM.MSG.GET."+acme.Stream().DeadLetterStreamName())

		By("purging only its own message stream: not another source's, nor its dead letters")
		for _, other := range []string{name, acme.Stream().DeadLetterStreamName()} {
			_, err = c.Request("$JS.API.STREAM.PURGE."+other, []byte(`{}`), time.Second)
			Expect(err).To(HaveOccurred())
			haveViolation(c, "publish", "$JS.API.STREAM.PURGE."+other)
		}
		_, err = c.SubscribeSync(natsauth.InboxPrefix(globex.Stream(), natsauth.Worker) + ".>")
		Expect(err).NotTo(HaveOccurred())
		haveViolation(c, "subscription", natsauth.InboxPrefix(globex.Stream(), natsauth.Worker)+".>")
	})

	It("creates its own consumer again when the server forgot it, and consumes from it", func() {
		name := acme.Stream().StreamName()
		Expect(adminJS.DeleteConsumer(ctx, name, stream.WorkerConsumer)).To(Succeed())
		_, err := js.CreateConsumer(ctx, name, stream.NamedConsumerConfig(acme.Stream(), stream.WorkerConsumer))
		Expect(err).NotTo(HaveOccurred())
		_, err = adminJS.Publish(ctx, acme.Stream().Subject("track"), []byte(`{"type":"track"}`), jetstream.WithMsgID("recreated"))
		Expect(err).NotTo(HaveOccurred())
		consumer, err := js.Consumer(ctx, name, stream.WorkerConsumer)
		Expect(err).NotTo(HaveOccurred())
		Eventually(ackWaiting(consumer)).Should(Succeed())
		Eventually(func(g Gomega) {
			_, _, err := stream.PurgeAcknowledged(ctx, js, acme.Stream(), consumer)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(messages(acme)).To(BeZero())
		}).Should(Succeed())
		Expect(c.errors()).To(BeEmpty())
	})

	It("cannot publish messages, another source's dead letters, or delete a stream or consumer", func() {
		for _, subject := range []string{acme.Stream().Subject("track"), globex.Stream().DeadLetterSubject()} {
			Expect(c.Publish(subject, []byte("x"))).To(Succeed())
			haveViolation(c, "publish", subject)
		}
		for _, src := range allPeers {
			name := src.Stream().StreamName()
			Expect(js.DeleteStream(ctx, name)).NotTo(Succeed())
			haveViolation(c, "publish", "$JS.API.STREAM.DELETE."+name)
			Expect(js.DeleteConsumer(ctx, name, stream.WorkerConsumer)).NotTo(Succeed())
			haveViolation(c, "publish", "$JS.API.CONSUMER.DELETE."+name+"."+stream.WorkerConsumer)
			Expect(streamExists(name)).To(BeTrue())
		}
	})
})

var _ = Describe("issued users", func() {
	It("are current for the issuer until a third of their life is left, and never for another key or role", func() {
		creds, err := issuer.Issue(acme.Stream(), natsauth.Worker, time.Now().Add(90*time.Minute))
		Expect(err).NotTo(HaveOccurred())
		Expect(issuer.Current(creds, acme.Stream(), natsauth.Worker, time.Now().Add(30*time.Minute))).To(BeTrue())
		Expect(issuer.Current(creds, acme.Stream(), natsauth.Worker, time.Now().Add(2*time.Hour))).To(BeFalse(), "renewal due")
		Expect(issuer.Current(creds, acme.Stream(), natsauth.Receiver, time.Time{})).To(BeFalse(), "another role")
		Expect(issuer.Current(creds, globex.Stream(), natsauth.Worker, time.Time{})).To(BeFalse(), "another source")
		Expect(issuer.Current([]byte("garbage"), acme.Stream(), natsauth.Worker, time.Time{})).To(BeFalse())
		Expect(issuer.Current(creds, acme.Stream(), natsauth.Worker, time.Time{})).To(BeFalse(), "users are to live forever now")
		forever, err := issuer.Issue(acme.Stream(), natsauth.Worker, time.Time{})
		Expect(err).NotTo(HaveOccurred())
		Expect(issuer.Current(forever, acme.Stream(), natsauth.Worker, time.Time{})).To(BeTrue())
		Expect(issuer.Current(forever, acme.Stream(), natsauth.Worker, time.Now())).To(BeFalse(), "users are to expire now")

		other, err := natsauth.NewIssuer([]byte(auth.AccountSeed), "")
		Expect(err).NotTo(HaveOccurred())
		Expect(other.Account()).To(Equal(issuer.Account()))
		Expect(other.Current(creds, acme.Stream(), natsauth.Worker, time.Time{})).To(BeFalse(), "a rotated signing key re-issues")
	})

	It("are refused by the server once expired", func() {
		creds, err := issuer.Issue(acme.Stream(), natsauth.Receiver, time.Now().Add(-time.Minute))
		Expect(err).NotTo(HaveOccurred())
		opt, err := natsauth.CredsOption(creds)
		Expect(err).NotTo(HaveOccurred())
		_, err = nats.Connect(ns.ClientURL(), opt)
		Expect(err).To(MatchError(ContainSubstring("Authorization Violation")))
	})

	It("need a signing key of an account", func() {
		_, err := natsauth.NewIssuer([]byte(auth.OperatorSeed), "")
		Expect(err).To(MatchError(ContainSubstring("not an account key")))
		_, err = natsauth.NewIssuer([]byte("not a seed"), "")
		Expect(err).To(HaveOccurred())
	})
})

// ackWaiting fetches what the consumer has waiting and acknowledges it.
func ackWaiting(consumer jetstream.Consumer) func() error {
	return func() error {
		batch, err := consumer.Fetch(100, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return err
		}
		for m := range batch.Messages() {
			if err := m.Ack(); err != nil {
				return err
			}
		}
		return nil
	}
}
