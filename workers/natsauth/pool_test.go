package natsauth_test

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/workers/natsauth"
	"github.com/tallyhq/tally/workers/pool"
	"github.com/tallyhq/tally/workers/stream"
)

// A pool's pods serve many sources; the operator writes the members into the pool's bucket with
// its administrator connection, the pods only read it.
var _ = Describe("a SegmentSourcePool's users", func() {
	ref := pool.Ref{Namespace: "platform", Name: "shared"}
	var kv jetstream.KeyValue

	BeforeEach(func() {
		var err error
		kv, err = pool.EnsureBucket(ctx, adminJS, ref, 1)
		Expect(err).NotTo(HaveOccurred())
		_, err = pool.Put(ctx, kv, pool.Member{Source: *acme, WriteKeyDigests: []string{pool.DigestKey(acme.WriteKeys[0])}})
		Expect(err).NotTo(HaveOccurred())
	})

	poolConn := func(role natsauth.Role) (*conn, jetstream.JetStream) {
		GinkgoHelper()
		creds, err := issuer.IssuePool(ref, role, time.Now().Add(time.Hour))
		Expect(err).NotTo(HaveOccurred())
		Expect(issuer.CurrentPool(creds, ref, role, time.Now())).To(BeTrue())
		Expect(issuer.CurrentPool(creds, pool.Ref{Namespace: "platform", Name: "other"}, role, time.Now())).To(BeFalse())
		c := &conn{}
		c.Conn = connect(creds, c, natsauth.PoolInboxOption(ref, role))
		js, err := jetstream.New(c.Conn, jetstream.WithDefaultTimeout(time.Second))
		Expect(err).NotTo(HaveOccurred())
		return c, js
	}

	// watchMembers runs pool.Watch as the pool's pods do and returns the first member set.
	watchMembers := func(js jetstream.JetStream) map[string]pool.Member {
		GinkgoHelper()
		bucket, err := js.KeyValue(ctx, ref.Bucket())
		Expect(err).NotTo(HaveOccurred())
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		got := make(chan map[string]pool.Member, 1)
		go func() {
			defer GinkgoRecover()
			_ = pool.Watch(wctx, bucket, func(m map[string]pool.Member) {
				select {
				case got <- m:
				default:
				}
			}, nil)
		}()
		var members map[string]pool.Member
		Eventually(got, "5s").Should(Receive(&members))
		return members
	}

	for _, role := range natsauth.Roles {
		It("lets the "+string(role)+" watch its pool's members but not write them or read another pool's", func() {
			c, js := poolConn(role)
			members := watchMembers(js)
			Expect(members).To(HaveKey(pool.Key(*acme)))
			Expect(members[pool.Key(*acme)].WriteKeyDigests).To(Equal([]string{pool.DigestKey(acme.WriteKeys[0])}))

			bucket, err := js.KeyValue(ctx, ref.Bucket())
			Expect(err).NotTo(HaveOccurred())
			_, err = bucket.Put(ctx, "intruder.source", []byte(`{}`))
			Expect(err).To(HaveOccurred())
			haveViolation(c, "publish", "$KV."+ref.Bucket()+".intruder.source")

			other := pool.Ref{Namespace: "platform", Name: "other"}
			_, err = pool.EnsureBucket(ctx, adminJS, other, 1)
			Expect(err).NotTo(HaveOccurred())
			_, err = js.KeyValue(ctx, other.Bucket())
			Expect(err).To(HaveOccurred())
			haveViolation(c, "publish", "$JS.API.STREAM.INFO.KV_"+other.Bucket())
			Expect(js.DeleteKeyValue(ctx, ref.Bucket())).NotTo(Succeed())
			Expect(c.errors()).NotTo(ContainElement(ContainSubstring("subscription")))
		})
	}

	It("lets the receiver publish every source's messages, and nothing of JetStream's API", func() {
		c, js := poolConn(natsauth.Receiver)
		for _, src := range allPeers {
			before := messages(src)
			_, err := js.Publish(ctx, src.Stream().Subject("track"), []byte(`{"type":"track"}`))
			Expect(err).NotTo(HaveOccurred())
			Expect(messages(src)).To(Equal(before + 1))
			Expect(js.DeleteStream(ctx, src.Stream().StreamName())).NotTo(Succeed())
			haveViolation(c, "publish", "$JS.API.STREAM.DELETE."+src.Stream().StreamName())
		}
		Expect(c.Publish(acme.Stream().DeadLetterSubject(), []byte("x"))).To(Succeed())
		haveViolation(c, "publish", acme.Stream().DeadLetterSubject())
	})

	It("lets the receiver store a member's request as one atomic batch (tally manager --receiver-atomic-batches)", func() {
		c, js := poolConn(natsauth.Receiver)
		atomic := publishThroughReceiver(js, c.Conn, true)
		Expect(atomic).To(HaveLen(1), "one atomic batch carried the request")
		Expect(atomic).NotTo(HaveKey(""))
		Expect(c.errors()).To(BeEmpty())
	})

	It("lets the worker consume every source's workers consumer and dead-letter, but not publish messages", func() {
		c, js := poolConn(natsauth.Worker)
		for _, src := range allPeers {
			_, err := adminJS.Publish(ctx, src.Stream().Subject("track"), []byte(`{"type":"track"}`))
			Expect(err).NotTo(HaveOccurred())
			consumer, err := js.Consumer(ctx, src.Stream().StreamName(), stream.WorkerConsumer)
			Expect(err).NotTo(HaveOccurred())
			batch, err := consumer.Fetch(100, jetstream.FetchMaxWait(time.Second))
			Expect(err).NotTo(HaveOccurred())
			n := 0
			for m := range batch.Messages() {
				Expect(m.DoubleAck(ctx)).To(Succeed())
				n++
			}
			Expect(n).To(BeNumerically(">=", 1))
			Eventually(func(g Gomega) {
				_, _, err := stream.PurgeAcknowledged(ctx, js, src.Stream(), consumer)
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(messages(src)).To(BeZero(), "it purges what it acknowledged")
			}).Should(Succeed())
			_, err = js.Publish(ctx, src.Stream().DeadLetterSubject(), []byte(`{}`))
			Expect(err).NotTo(HaveOccurred())
		}
		Expect(c.Publish(acme.Stream().Subject("track"), []byte("x"))).To(Succeed())
		haveViolation(c, "publish", acme.Stream().Subject("track"))

		By("creating a forgotten consumer again, but deleting none")
		name := acme.Stream().StreamName()
		Expect(adminJS.DeleteConsumer(ctx, name, stream.WorkerConsumer)).To(Succeed())
		_, err := js.CreateConsumer(ctx, name, stream.NamedConsumerConfig(acme.Stream(), stream.WorkerConsumer))
		Expect(err).NotTo(HaveOccurred())
		Expect(js.DeleteConsumer(ctx, name, stream.WorkerConsumer)).NotTo(Succeed())
		haveViolation(c, "publish", "$JS.API.CONSUMER.DELETE."+name+"."+stream.WorkerConsumer)

		By("purging no member from its pool's bucket")
		_, err = c.Request("$JS.API.STREAM.PURGE.KV_"+ref.Bucket(), []byte(`{}`), time.Second)
		Expect(err).To(HaveOccurred())
		haveViolation(c, "publish", "$JS.API.STREAM.PURGE.KV_"+ref.Bucket())
		Expect(watchMembers(js)).To(HaveKey(pool.Key(*acme)))
	})
})
