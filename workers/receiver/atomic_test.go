package receiver_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/workers/natsserver"
	"github.com/tallyhq/tally/workers/receiver"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
)

// trackBatch is a /v1/batch body of n track calls with messageIds prefix-0 … prefix-(n-1).
func trackBatch(prefix string, n int) []byte {
	indices := make([]int, n)
	for i := range indices {
		indices[i] = i
	}
	return trackBatchOf(prefix, indices)
}

// trackBatchOf is the part of trackBatch(prefix, …) with the given messages.
func trackBatchOf(prefix string, indices []int) []byte {
	var b strings.Builder
	b.WriteString(`{"batch":[`)
	for k, i := range indices {
		if k > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"type":"track","userId":"u%d","event":"E","messageId":"%s-%d"}`, i%7, prefix, i)
	}
	b.WriteString(`]}`)
	return []byte(b.String())
}

func msgIDs(msgs []stored) []string {
	ids := make([]string, len(msgs))
	for i, m := range msgs {
		ids[i] = m.MsgID
	}
	return ids
}

func expectedIDs(prefix string, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-%d", prefix, i)
	}
	return ids
}

// batchIDs counts the messages of each atomic batch they were stored in ("" for messages stored
// one by one).
func batchIDs(msgs []stored) map[string]int {
	ids := map[string]int{}
	for _, m := range msgs {
		ids[m.Header.Get("Nats-Batch-Id")]++
	}
	return ids
}

var _ = Describe("Atomic batch publishing", func() {
	// The shared receiver publishes message by message, the default; these specs talk to one
	// that publishes atomic batches, serving the same sources.
	BeforeEach(func() {
		atomicRcv, err := receiver.New(receiver.Options{JetStream: js, Conn: nc, PublishTimeout: 2 * time.Second,
			AtomicBatches: true, Logger: slog.New(slog.NewTextHandler(GinkgoWriter, nil))}, []*source.Config{acme, beta})
		Expect(err).NotTo(HaveOccurred())
		shared := srv
		srv = httptest.NewServer(atomicRcv.Handler())
		DeferCleanup(func() { srv.Close(); srv = shared })
	})

	It("stores a 100-message request as one atomic batch, each message under its Nats-Msg-Id", func() {
		from := mark(acme)
		Expect(post("/v1/batch", trackBatch("atomic100", 100), basic(acmeKey)).Status).To(Equal(http.StatusOK))
		msgs := since(acme, from)
		Expect(msgIDs(msgs)).To(Equal(expectedIDs("atomic100", 100)))
		batches := batchIDs(msgs)
		Expect(batches).To(HaveLen(1))
		Expect(batches).NotTo(HaveKey(""))
	})

	It("stores a single call as a plain message, not a batch of one", func() {
		from := mark(acme)
		Expect(post("/v1/track", []byte(`{"userId":"u1","event":"E","messageId":"single-1"}`), basic(acmeKey)).Status).To(Equal(http.StatusOK))
		msgs := since(acme, from)
		Expect(msgIDs(msgs)).To(Equal([]string{"single-1"}))
		Expect(batchIDs(msgs)).To(Equal(map[string]int{"": 1}))
	})

	It("answers 200 to a retry of a partly stored request and stores nothing twice", func() {
		from := mark(acme)
		// An earlier attempt stored 40 of the 100 messages (say one of its batches) before it
		// failed.
		var earlier []int
		for i := 0; i < 100; i += 5 {
			earlier = append(earlier, i, i+1)
		}
		Expect(post("/v1/batch", trackBatchOf("retry", earlier), basic(acmeKey)).Status).To(Equal(http.StatusOK))
		Expect(since(acme, from)).To(HaveLen(40))

		Expect(post("/v1/batch", trackBatch("retry", 100), basic(acmeKey)).Status).To(Equal(http.StatusOK))
		Expect(msgIDs(since(acme, from))).To(ConsistOf(expectedIDs("retry", 100)))

		// And once more, now that everything is stored.
		Expect(post("/v1/batch", trackBatch("retry", 100), basic(acmeKey)).Status).To(Equal(http.StatusOK))
		Expect(msgIDs(since(acme, from))).To(ConsistOf(expectedIDs("retry", 100)))
	})

	It("answers 200 to a repeated request that was stored atomically the first time", func() {
		from := mark(acme)
		Expect(post("/v1/batch", trackBatch("again", 50), basic(acmeKey)).Status).To(Equal(http.StatusOK))
		Expect(post("/v1/batch", trackBatch("again", 50), basic(acmeKey)).Status).To(Equal(http.StatusOK))
		Expect(msgIDs(since(acme, from))).To(Equal(expectedIDs("again", 50)))
	})

	It("stores a request with the same messageId twice once", func() {
		from := mark(acme)
		Expect(post("/v1/batch", []byte(`{"batch":[
			{"type":"track","userId":"u1","event":"E","messageId":"twice"},
			{"type":"track","userId":"u1","event":"E","messageId":"twice"}]}`), basic(acmeKey)).Status).To(Equal(http.StatusOK))
		Expect(msgIDs(since(acme, from))).To(Equal([]string{"twice"}))
	})

	It("splits a request above the server's batch limit into several batches and stores all of it", func() {
		from := mark(acme)
		Expect(post("/v1/batch", trackBatch("big", 2500), basic(acmeKey)).Status).To(Equal(http.StatusOK))
		msgs := since(acme, from)
		Expect(sorted(msgIDs(msgs))).To(Equal(sorted(expectedIDs("big", 2500))), "each message once (ConsistOf takes minutes on 2,500 under -race)")
		Expect(batchIDs(msgs)).To(SatisfyAll(HaveLen(3), Not(HaveKey(""))))
	})

	It("puts the messages of each source in that source's stream", func() {
		fromA, fromB := mark(acme), mark(beta)
		Expect(post("/v1/batch", []byte(`{"batch":[
			{"type":"track","userId":"u1","event":"E","messageId":"two-1","writeKey":"`+acmeKey+`"},
			{"type":"track","userId":"u1","event":"E","messageId":"two-2","writeKey":"`+betaKey+`"},
			{"type":"track","userId":"u1","event":"E","messageId":"two-3","writeKey":"`+acmeKey+`"}]}`)).Status).To(Equal(http.StatusOK))
		Expect(msgIDs(since(acme, fromA))).To(Equal([]string{"two-1", "two-3"}))
		Expect(msgIDs(since(beta, fromB))).To(Equal([]string{"two-2"}))
	})

	It("sends each source's part of a request as that source's atomic batch when the part is large enough", func() {
		fromA, fromB := mark(acme), mark(beta)
		var b strings.Builder
		b.WriteString(`{"batch":[`)
		for i := range 40 {
			if i > 0 {
				b.WriteByte(',')
			}
			key := map[bool]string{true: acmeKey, false: betaKey}[i%2 == 0]
			fmt.Fprintf(&b, `{"type":"track","userId":"u1","event":"E","messageId":"mixed-%d","writeKey":"%s"}`, i, key)
		}
		b.WriteString(`]}`)
		Expect(post("/v1/batch", []byte(b.String())).Status).To(Equal(http.StatusOK))
		a, bb := since(acme, fromA), since(beta, fromB)
		Expect(a).To(HaveLen(20))
		Expect(bb).To(HaveLen(20))
		for _, msgs := range [][]stored{a, bb} {
			Expect(batchIDs(msgs)).To(SatisfyAll(HaveLen(1), Not(HaveKey(""))))
		}
		Expect(a[0].MsgID).To(Equal("mixed-0"))
		Expect(bb[0].MsgID).To(Equal("mixed-1"))
	})
})

var _ = Describe("Default publishing", func() {
	It("publishes a batch request message by message unless atomic batches are switched on", func() {
		from := mark(acme)
		Expect(post("/v1/batch", trackBatch("plain100", 100), basic(acmeKey)).Status).To(Equal(http.StatusOK))
		msgs := since(acme, from)
		Expect(msgIDs(msgs)).To(Equal(expectedIDs("plain100", 100)))
		Expect(batchIDs(msgs)).To(Equal(map[string]int{"": 100}))
	})
})

// ownServer is a receiver for acme on an embedded server of its own, for settings the shared one
// does not have.
type ownServer struct {
	js  jetstream.JetStream
	src *source.Config
	url string
}

func startOwn(ns *server.Server, streamCfg func(*jetstream.StreamConfig)) ownServer {
	GinkgoHelper()
	DeferCleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	conn, err := nats.Connect(ns.ClientURL())
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(conn.Close)
	ownJS, err := jetstream.New(conn)
	Expect(err).NotTo(HaveOccurred())
	src := newAcme()
	cfg := stream.StreamConfig(src.Stream(), src.StreamSettings())
	streamCfg(&cfg)
	_, err = ownJS.CreateStream(context.Background(), cfg)
	Expect(err).NotTo(HaveOccurred())
	r, err := receiver.New(receiver.Options{JetStream: ownJS, AtomicBatches: true, Logger: slog.New(slog.NewTextHandler(GinkgoWriter, nil))}, []*source.Config{src})
	Expect(err).NotTo(HaveOccurred())
	s := httptest.NewServer(r.Handler())
	DeferCleanup(s.Close)
	return ownServer{js: ownJS, src: src, url: s.URL}
}

// all reads back every message of the server's acme stream.
func (o ownServer) all() []stored {
	GinkgoHelper()
	s, err := o.js.Stream(context.Background(), o.src.Stream().StreamName())
	Expect(err).NotTo(HaveOccurred())
	info, err := s.Info(context.Background())
	Expect(err).NotTo(HaveOccurred())
	var out []stored
	for seq := uint64(1); seq <= info.State.LastSeq; seq++ {
		raw, err := s.GetMsg(context.Background(), seq)
		Expect(err).NotTo(HaveOccurred())
		out = append(out, stored{Subject: raw.Subject, MsgID: raw.Header.Get(jetstream.MsgIDHeader), Header: raw.Header})
	}
	return out
}

func startServer(opts *server.Options) *server.Server {
	GinkgoHelper()
	opts.Host, opts.Port, opts.JetStream, opts.StoreDir, opts.NoLog, opts.NoSigs = "127.0.0.1", -1, true, GinkgoT().TempDir(), true, true
	ns, err := server.NewServer(opts)
	Expect(err).NotTo(HaveOccurred())
	go ns.Start()
	Expect(ns.ReadyForConnections(10e9)).To(BeTrue())
	return ns
}

func unchanged(*jetstream.StreamConfig) {}

var _ = Describe("Atomic batch publishing against other servers", func() {
	It("works with JetStream syncing every write (sync_interval: always)", func() {
		ns, err := natsserver.Start(natsserver.Options{StoreDir: GinkgoT().TempDir(), SyncAlways: true})
		Expect(err).NotTo(HaveOccurred())
		own := startOwn(ns, unchanged)
		Expect(postTo(own.url, "/v1/batch", trackBatch("fsync", 100), basic(acmeKey)).Status).To(Equal(http.StatusOK))
		msgs := own.all()
		Expect(msgIDs(msgs)).To(Equal(expectedIDs("fsync", 100)))
		Expect(batchIDs(msgs)).To(SatisfyAll(HaveLen(1), Not(HaveKey(""))))
	})

	It("learns a server batch limit below the default and splits by it", func() {
		own := startOwn(startServer(&server.Options{JetStreamLimits: server.JSLimitOpts{MaxBatchSize: 40}}), unchanged)
		Expect(postTo(own.url, "/v1/batch", trackBatch("limit", 100), basic(acmeKey)).Status).To(Equal(http.StatusOK))
		Expect(postTo(own.url, "/v1/batch", trackBatch("limit2", 100), basic(acmeKey)).Status).To(Equal(http.StatusOK))
		msgs := own.all()
		Expect(msgIDs(msgs)).To(ConsistOf(append(expectedIDs("limit", 100), expectedIDs("limit2", 100)...)))
		for id, n := range batchIDs(msgs) {
			Expect(id).NotTo(BeEmpty())
			Expect(n).To(BeNumerically("<=", 40))
		}
	})

	It("waits for a free batch slot when the stream has its maximum in flight", func() {
		own := startOwn(startServer(&server.Options{JetStreamLimits: server.JSLimitOpts{MaxBatchInflightPerStream: 1}}), unchanged)
		var wg sync.WaitGroup
		statuses := make([]int, 8)
		for i := range statuses {
			wg.Go(func() {
				defer GinkgoRecover()
				statuses[i] = postTo(own.url, "/v1/batch", trackBatch(fmt.Sprintf("slot%d", i), 200), basic(acmeKey)).Status
			})
		}
		wg.Wait()
		Expect(statuses).To(HaveEach(http.StatusOK))
		Expect(own.all()).To(HaveLen(8 * 200))
	})

	It("publishes message by message to a stream without atomic publishing", func() {
		own := startOwn(startServer(&server.Options{}), func(c *jetstream.StreamConfig) { c.AllowAtomicPublish = false })
		Expect(postTo(own.url, "/v1/batch", trackBatch("plain", 30), basic(acmeKey)).Status).To(Equal(http.StatusOK))
		Expect(postTo(own.url, "/v1/batch", trackBatch("plain2", 30), basic(acmeKey)).Status).To(Equal(http.StatusOK))
		msgs := own.all()
		Expect(msgIDs(msgs)).To(Equal(append(expectedIDs("plain", 30), expectedIDs("plain2", 30)...)))
		Expect(batchIDs(msgs)).To(Equal(map[string]int{"": 60}))
	})
})
