package receiver_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tallyhq/tally/workers/natsserver"
	"github.com/tallyhq/tally/workers/receiver"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
)

// groupServer is an atomic-batch receiver for acme on an embedded server of its own that fsyncs
// every write (sync_interval: always), the setting group commit is for.
type groupServer struct {
	opts     natsserver.Options
	ns       *server.Server
	js       jetstream.JetStream
	src      *source.Config
	url      string
	registry *prometheus.Registry
}

func startGroup(streamCfg func(*jetstream.StreamConfig)) *groupServer {
	GinkgoHelper()
	g := &groupServer{opts: natsserver.Options{StoreDir: GinkgoT().TempDir(), SyncAlways: true}}
	g.start()
	g.opts.Port = g.ns.Addr().(*net.TCPAddr).Port // a restart comes back on the same port
	DeferCleanup(func() { g.stop() })
	conn, err := nats.Connect(g.ns.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond), nats.ReconnectBufSize(-1))
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(conn.Close)
	g.js, err = jetstream.New(conn, jetstream.WithPublishAsyncTimeout(2*time.Second))
	Expect(err).NotTo(HaveOccurred())
	g.src = newAcme()
	cfg := stream.StreamConfig(g.src.Stream(), g.src.StreamSettings())
	streamCfg(&cfg)
	_, err = g.js.CreateStream(context.Background(), cfg)
	Expect(err).NotTo(HaveOccurred())
	g.registry = prometheus.NewRegistry()
	r, err := receiver.New(receiver.Options{JetStream: g.js, AtomicBatches: true, PublishTimeout: 2 * time.Second,
		Metrics: receiver.NewMetrics(g.registry), Logger: slog.New(slog.NewTextHandler(GinkgoWriter, nil))}, []*source.Config{g.src})
	Expect(err).NotTo(HaveOccurred())
	s := httptest.NewServer(r.Handler())
	DeferCleanup(s.Close)
	g.url = s.URL
	return g
}

func (g *groupServer) start() {
	GinkgoHelper()
	var err error
	g.ns, err = natsserver.Start(g.opts)
	Expect(err).NotTo(HaveOccurred())
}

func (g *groupServer) stop() {
	if g.ns != nil {
		g.ns.Shutdown()
		g.ns.WaitForShutdown()
	}
}

// all reads back every message the stream holds (nothing consumes it).
func (g *groupServer) all() []stored {
	GinkgoHelper()
	return ownServer{js: g.js, src: g.src}.all()
}

// histogram is the sample count and sum of one of the receiver's histograms.
func (g *groupServer) histogram(name string) (count uint64, sum float64) {
	GinkgoHelper()
	families, err := g.registry.Gather()
	Expect(err).NotTo(HaveOccurred())
	for _, f := range families {
		if f.GetName() == name {
			h := f.GetMetric()[0].GetHistogram()
			return h.GetSampleCount(), h.GetSampleSum()
		}
	}
	Fail("no metric " + name)
	return 0, 0
}

// sendAll posts the bodies at once and returns each answer.
func (g *groupServer) sendAll(bodies [][]byte) []response {
	GinkgoHelper()
	answers := make([]response, len(bodies))
	var wg sync.WaitGroup
	for i, body := range bodies {
		wg.Go(func() {
			defer GinkgoRecover()
			answers[i] = postTo(g.url, "/v1/batch", body, basic(acmeKey))
		})
	}
	wg.Wait()
	return answers
}

// requests are n /v1/batch bodies of size messages each, messageIds <prefix><i>-<k>.
func requests(prefix string, n, size int) (bodies [][]byte, ids [][]string) {
	for i := range n {
		p := fmt.Sprintf("%s%d", prefix, i)
		bodies = append(bodies, trackBatch(p, size))
		ids = append(ids, expectedIDs(p, size))
	}
	return bodies, ids
}

func flat(ids [][]string) []string {
	var out []string
	for _, l := range ids {
		out = append(out, l...)
	}
	return out
}

// requestOf names the request a stored message came from: its messageId without "-<k>".
func requestOf(msgID string) string { return msgID[:strings.LastIndexByte(msgID, '-')] }

var _ = Describe("Group commit (atomic batches shared by concurrent requests, sync_interval: always)", func() {
	It("stores every message of many concurrent requests exactly once, in batches that several requests share", func() {
		g := startGroup(unchanged)
		bodies, ids := requests("group", 64, 50)
		for _, a := range g.sendAll(bodies) {
			Expect(a.Status).To(Equal(http.StatusOK))
		}
		msgs := g.all()
		Expect(sorted(msgIDs(msgs))).To(Equal(sorted(flat(ids))))

		// On the server: the messages of one batch id come from several requests.
		requestsOf := map[string]map[string]bool{}
		for _, m := range msgs {
			batch := m.Header.Get("Nats-Batch-Id")
			Expect(batch).NotTo(BeEmpty())
			if requestsOf[batch] == nil {
				requestsOf[batch] = map[string]bool{}
			}
			requestsOf[batch][requestOf(m.MsgID)] = true
		}
		shared := 0
		for _, reqs := range requestsOf {
			if len(reqs) > 1 {
				shared++
			}
		}
		Expect(shared).To(BeNumerically(">", 0), "batches: %v", requestsOf)
		Expect(len(requestsOf)).To(BeNumerically("<", 64))

		// And in the receiver's metrics: fewer batches than requests.
		batches, reqs := g.histogram("tally_receiver_atomic_batch_requests")
		Expect(batches).To(BeEquivalentTo(len(requestsOf)))
		Expect(reqs).To(BeEquivalentTo(64))
		_, messages := g.histogram("tally_receiver_atomic_batch_messages")
		Expect(messages).To(BeEquivalentTo(64 * 50))
		fmt.Fprintf(GinkgoWriter, "64 requests of 50 messages went in %d atomic batches\n", batches)
	})

	It("answers 200 to retries that share a batch with new requests and stores nothing twice", func() {
		g := startGroup(unchanged)
		bodies, ids := requests("again", 40, 30)
		// The first ten were stored before (their clients did not hear the answer).
		for _, b := range bodies[:10] {
			Expect(postTo(g.url, "/v1/batch", b, basic(acmeKey)).Status).To(Equal(http.StatusOK))
		}
		// Now all forty at once, and each of the last ten twice (a client retrying while its first
		// attempt is still in flight).
		for _, a := range g.sendAll(append(bodies, bodies[30:]...)) {
			Expect(a.Status).To(Equal(http.StatusOK))
		}
		Expect(sorted(msgIDs(g.all()))).To(Equal(sorted(flat(ids))))
	})

	It("answers 503 with Retry-After to every request of a batch the full stream refuses, and stores each message once when they are retried", func() {
		g := startGroup(func(c *jetstream.StreamConfig) { c.MaxBytes = 64 << 10 })
		bodies, ids := requests("full", 48, 50)
		// One request alone fits; the rest at once do not.
		Expect(postTo(g.url, "/v1/batch", bodies[0], basic(acmeKey)).Status).To(Equal(http.StatusOK))
		answers := g.sendAll(bodies[1:])
		var refused [][]byte
		for i, a := range answers {
			if a.Status == http.StatusOK {
				continue
			}
			Expect(a.Status).To(Equal(http.StatusServiceUnavailable))
			Expect(a.Header.Get("Retry-After")).NotTo(BeEmpty())
			Expect(a.Body).To(HaveErrorCode("unavailable"))
			refused = append(refused, bodies[1+i])
		}
		Expect(refused).NotTo(BeEmpty())
		// Whatever was answered 200 is stored, once.
		stored := msgIDs(g.all())
		Expect(stored).To(HaveLen(len(uniq(stored))), "stored once")
		acked := map[string]bool{}
		for _, id := range ids[0] {
			acked[id] = true
		}
		for i, a := range answers {
			if a.Status == http.StatusOK {
				for _, id := range ids[1+i] {
					acked[id] = true
				}
			}
		}
		Expect(missing(acked, stored)).To(BeEmpty())

		// Room again: the clients' retries store the rest, and nothing twice.
		cfg := stream.StreamConfig(g.src.Stream(), g.src.StreamSettings())
		_, err := g.js.UpdateStream(context.Background(), cfg)
		Expect(err).NotTo(HaveOccurred())
		for _, a := range g.sendAll(refused) {
			Expect(a.Status).To(Equal(http.StatusOK))
		}
		Expect(sorted(msgIDs(g.all()))).To(Equal(sorted(flat(ids))))
	})

	It("answers 503 with Retry-After to the requests in flight when the server stops, and loses nothing it acknowledged", func() {
		g := startGroup(unchanged)
		bodies, ids := requests("stop", 96, 100)
		answers := make([]response, len(bodies))
		answered := make(chan struct{})
		var once sync.Once
		var wg sync.WaitGroup
		send := func(i int) {
			wg.Go(func() {
				defer GinkgoRecover()
				answers[i] = postTo(g.url, "/v1/batch", bodies[i], basic(acmeKey))
				once.Do(func() { close(answered) })
			})
		}
		for i := range 64 {
			send(i)
		}
		// Once the first request has its answer, the server goes down under the others; those
		// sent afterwards find it down.
		<-answered
		g.stop()
		for i := 64; i < len(bodies); i++ {
			send(i)
		}
		wg.Wait()
		var refused [][]byte
		acked := map[string]bool{}
		for i, a := range answers {
			switch a.Status {
			case http.StatusOK:
				for _, id := range ids[i] {
					acked[id] = true
				}
			default:
				Expect(a.Status).To(Equal(http.StatusServiceUnavailable))
				Expect(a.Header.Get("Retry-After")).NotTo(BeEmpty())
				refused = append(refused, bodies[i])
			}
		}
		Expect(refused).NotTo(BeEmpty())
		fmt.Fprintf(GinkgoWriter, "%d requests answered 200, %d answered 503\n", len(bodies)-len(refused), len(refused))

		// Back on the same store: every acknowledged message survived, stored once.
		g.start()
		Eventually(func() error {
			_, err := g.js.Stream(context.Background(), g.src.Stream().StreamName())
			return err
		}, 10*time.Second, 50*time.Millisecond).Should(Succeed())
		stored := msgIDs(g.all())
		Expect(stored).To(HaveLen(len(uniq(stored))), "stored once")
		Expect(missing(acked, stored)).To(BeEmpty())
		// The refused requests' retries store the rest, nothing twice. Each request is retried
		// until it gets its 200, as its client would (under load a retry may time out again).
		Eventually(func(g2 Gomega) int {
			var still [][]byte
			for i, a := range g.sendAll(refused) {
				if a.Status != http.StatusOK {
					g2.Expect(a.Status).To(Equal(http.StatusServiceUnavailable))
					still = append(still, refused[i])
				}
			}
			refused = still
			return len(refused)
		}, 30*time.Second, 100*time.Millisecond).Should(BeZero(), "requests still refused")
		Expect(sorted(msgIDs(g.all()))).To(Equal(sorted(flat(ids))))
	})
})

// sorted is a sorted copy of ids: comparing sorted lists checks that each id is there exactly
// once, and is fast for thousands of them.
func sorted(ids []string) []string { return slices.Sorted(slices.Values(ids)) }

// uniq is ids without repetitions, in their order.
func uniq(ids []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, id := range ids {
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out
}

// missing are the acknowledged ids that are not stored.
func missing(acked map[string]bool, stored []string) []string {
	have := map[string]bool{}
	for _, id := range stored {
		have[id] = true
	}
	var out []string
	for id := range acked {
		if !have[id] {
			out = append(out, id)
		}
	}
	return out
}
