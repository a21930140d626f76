package receiver_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/onsi/gomega/gbytes"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	analytics "github.com/segmentio/analytics-go/v3"

	"github.com/tallyhq/tally/workers/receiver"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
)

// tracks is a batch of n track calls with ids prefix-0..n-1.
func tracks(prefix string, n int) []byte {
	items := make([]string, n)
	for i := range items {
		items[i] = fmt.Sprintf(`{"type":"track","userId":"u%d","event":"E","messageId":"%s-%d"}`, i%7, prefix, i)
	}
	return []byte(`{"batch":[` + strings.Join(items, ",") + `]}`)
}

// limitedReceiver serves sources on a receiver of its own, with metrics a spec can read.
func limitedReceiver(sources ...*source.Config) (*receiver.Receiver, *receiver.Metrics, string) {
	r, metrics, url, _ := limitedReceiverLogging(sources...)
	return r, metrics, url
}

// limitedReceiverLogging is limitedReceiver with its Info-level log lines kept.
func limitedReceiverLogging(sources ...*source.Config) (*receiver.Receiver, *receiver.Metrics, string, *gbytes.Buffer) {
	GinkgoHelper()
	for _, src := range sources {
		Expect(stream.Ensure(context.Background(), js, src.Stream(), src.StreamSettings())).To(Succeed())
		DeferCleanup(func() { _ = stream.Delete(context.Background(), js, src.Stream()) })
	}
	metrics := receiver.NewMetrics(prometheus.NewRegistry())
	logs := gbytes.NewBuffer()
	r, err := receiver.New(receiver.Options{JetStream: js, Conn: nc, PublishTimeout: 2 * time.Second, Metrics: metrics,
		Logger: slog.New(slog.NewTextHandler(io.MultiWriter(GinkgoWriter, logs), nil)), Gatherer: prometheus.NewRegistry()}, sources)
	Expect(err).NotTo(HaveOccurred())
	s := httptest.NewServer(r.Handler())
	DeferCleanup(s.Close)
	return r, metrics, s.URL, logs
}

func retryAfter(r response) int {
	GinkgoHelper()
	n, err := strconv.Atoi(r.Header.Get("Retry-After"))
	Expect(err).NotTo(HaveOccurred(), "Retry-After %q", r.Header.Get("Retry-After"))
	Expect(r.Header.Get("X-RateLimit-Reset")).To(Equal(r.Header.Get("Retry-After")))
	return n
}

var _ = Describe("A source's rate limit (spec.receiver.rateLimit)", func() {
	var capped, free *source.Config
	BeforeEach(func() {
		capped = &source.Config{Namespace: "limits", Name: "capped", Tenant: "capped", WriteKeys: []string{"capped-write-key-0123456789"},
			RateLimit: &source.RateLimit{EventsPerSecond: 1, Burst: 100}}
		free = &source.Config{Namespace: "limits", Name: "free", Tenant: "free", WriteKeys: []string{"free-write-key-0123456789"}}
	})

	It("admits a source until its bucket is empty, then answers 429 with Retry-After and stores nothing, while other sources flow", func() {
		_, metrics, url := limitedReceiver(capped, free)
		from, fromFree := mark(capped), mark(free)

		By("a batch larger than the burst is admitted whole and leaves the bucket in debt")
		Expect(postTo(url, "/v1/batch", tracks("first", 300), basic(capped.WriteKeys[0])).Status).To(Equal(http.StatusOK))
		Expect(since(capped, from)).To(HaveLen(300))

		By("the next request waits out the debt: 200 events at 1 event/s")
		r := postTo(url, "/v1/batch", tracks("second", 1), basic(capped.WriteKeys[0]))
		Expect(r.Status).To(Equal(http.StatusTooManyRequests), r.Raw)
		Expect(r.Body).To(HaveErrorCode("rate_limited"))
		Expect(r.Body["message"]).To(ContainSubstring("1 events/s"))
		Expect(retryAfter(r)).To(BeNumerically("~", 201, 5))

		By("refused before its body is read when the key is in the header: a bad body gets no 400")
		Expect(postTo(url, "/v1/batch", []byte(`{not json`), basic(capped.WriteKeys[0])).Status).To(Equal(http.StatusTooManyRequests))

		By("refused with the key in the body, and a batch mixing it with another source is refused whole")
		inBody := `{"writeKey":"` + capped.WriteKeys[0] + `","batch":[{"type":"track","userId":"u","event":"E","messageId":"in-body"}]}`
		Expect(postTo(url, "/v1/batch", []byte(inBody)).Status).To(Equal(http.StatusTooManyRequests))
		mixed := `{"batch":[{"type":"track","userId":"u","event":"E","messageId":"mixed-free","writeKey":"` + free.WriteKeys[0] + `"},` +
			`{"type":"track","userId":"u","event":"E","messageId":"mixed-capped","writeKey":"` + capped.WriteKeys[0] + `"}]}`
		Expect(postTo(url, "/v1/batch", []byte(mixed)).Status).To(Equal(http.StatusTooManyRequests))
		Expect(since(capped, from)).To(HaveLen(300), "nothing of a refused request is stored")
		Expect(since(free, fromFree)).To(BeEmpty(), "nothing of a refused request is stored")

		By("another source is not limited")
		Expect(postTo(url, "/v1/batch", tracks("free", 500), basic(free.WriteKeys[0])).Status).To(Equal(http.StatusOK))
		Expect(since(free, fromFree)).To(HaveLen(500))

		Expect(testutil.ToFloat64(metrics.RateLimitedCounter(capped.String()))).To(BeEquivalentTo(4))
		Expect(testutil.ToFloat64(metrics.RefusalsCounter("rate_limited"))).To(BeEquivalentTo(4))
	})

	It("logs its refusals at debug level only: a sender held to its limit cannot flood the logs", func() {
		_, _, url, logs := limitedReceiverLogging(capped)
		Expect(postTo(url, "/v1/batch", tracks("log", 300), basic(capped.WriteKeys[0])).Status).To(Equal(http.StatusOK))
		for range 50 {
			Expect(postTo(url, "/v1/batch", tracks("log-more", 1), basic(capped.WriteKeys[0])).Status).To(Equal(http.StatusTooManyRequests))
		}
		Expect(string(logs.Contents())).NotTo(ContainSubstring("request refused"))
		Expect(postTo(url, "/v1/batch", tracks("log-bad", 1), basic("not-a-key-0123456789")).Status).To(Equal(http.StatusUnauthorized))
		Expect(string(logs.Contents())).To(ContainSubstring("code=invalid_write_key"), "other refusals are still logged")
	})

	It("takes the source again once Retry-After has passed", func() {
		capped.RateLimit = &source.RateLimit{EventsPerSecond: 10}
		_, _, url := limitedReceiver(capped)
		from := mark(capped)
		Expect(postTo(url, "/v1/batch", tracks("a", 30), basic(capped.WriteKeys[0])).Status).To(Equal(http.StatusOK))
		r := postTo(url, "/v1/batch", tracks("b", 5), basic(capped.WriteKeys[0]))
		Expect(r.Status).To(Equal(http.StatusTooManyRequests))
		wait := retryAfter(r)
		Expect(wait).To(BeNumerically(">=", 2), "20 events of debt at 10 events/s")
		time.Sleep(time.Duration(wait) * time.Second)
		Expect(postTo(url, "/v1/batch", tracks("b", 5), basic(capped.WriteKeys[0])).Status).To(Equal(http.StatusOK))
		Expect(since(capped, from)).To(HaveLen(35))
	})

	It("keeps a source's bucket through a reload (a key rotation, another source joining), and lifts it with the limit", func() {
		r, _, url := limitedReceiver(capped, free)
		Expect(postTo(url, "/v1/batch", tracks("before", 300), basic(capped.WriteKeys[0])).Status).To(Equal(http.StatusOK))

		rotated := *capped
		rotated.WriteKeys = []string{capped.WriteKeys[0], "capped-new-key-0123456789"}
		Expect(r.SetSources([]*source.Config{&rotated, free})).To(Succeed())
		Expect(postTo(url, "/v1/batch", tracks("after", 1), basic("capped-new-key-0123456789")).Status).To(Equal(http.StatusTooManyRequests),
			"the bucket is the source's, whatever key is used, and a reload does not refill it")
		Expect(r.SetMembers([]*source.Config{&rotated}, []*source.Config{free})).To(Succeed(), "as a pool's receiver reloads")
		Expect(postTo(url, "/v1/batch", tracks("after", 1), basic(capped.WriteKeys[0])).Status).To(Equal(http.StatusTooManyRequests))

		unlimited := rotated
		unlimited.RateLimit = nil
		Expect(r.SetSources([]*source.Config{&unlimited, free})).To(Succeed())
		Expect(postTo(url, "/v1/batch", tracks("after", 1), basic("capped-new-key-0123456789")).Status).To(Equal(http.StatusOK))
	})

	It("loses nothing with the real analytics-go client: it retries the 429s until every event is stored", func() {
		capped.RateLimit = &source.RateLimit{EventsPerSecond: 20}
		_, metrics, url := limitedReceiver(capped)
		from := mark(capped)
		cb := &callback{}
		client, err := analytics.NewWithConfig(capped.WriteKeys[0], analytics.Config{Endpoint: url, BatchSize: 10, Interval: 20 * time.Millisecond, Callback: cb})
		Expect(err).NotTo(HaveOccurred())
		for i := range 80 {
			Expect(client.Enqueue(analytics.Track{UserId: "go-user", Event: "Limited", MessageId: fmt.Sprintf("go-limited-%d", i)})).To(Succeed())
		}
		// Close drops what is still being retried (analytics-go), so wait for the deliveries first.
		Eventually(func() int { cb.mu.Lock(); defer cb.mu.Unlock(); return cb.ok + len(cb.failures) }).
			WithTimeout(30 * time.Second).Should(Equal(80))
		Expect(client.Close()).To(Succeed())
		Expect(cb.failures).To(BeEmpty())
		Expect(cb.ok).To(Equal(80))
		ids := map[string]bool{}
		for _, m := range since(capped, from) {
			ids[m.MsgID] = true
		}
		Expect(ids).To(HaveLen(80))
		Expect(testutil.ToFloat64(metrics.RateLimitedCounter(capped.String()))).To(BeNumerically(">", 0), "the client met the limit")
	})
})
