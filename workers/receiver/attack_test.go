package receiver_test

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tallyhq/tally/workers/receiver"
	"github.com/tallyhq/tally/workers/segment"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
)

// amplificationBatch is the attack of the issue: a 300 KB batch context and 2,500 tiny messages,
// a few KB once gzipped, which a naive merge turns into 750 MB.
func amplificationBatch() []byte {
	items := strings.TrimSuffix(strings.Repeat(`{"type":"track","userId":"u","event":"E"},`, segment.MaxBatchMessages), ",")
	return []byte(`{"context":{"blob":"` + strings.Repeat("c", 300<<10) + `"},"batch":[` + items + `]}`)
}

// goodStillLands posts one message for each tenant and checks both reach their streams.
func goodStillLands() {
	GinkgoHelper()
	fromAcme, fromBeta := mark(acme), mark(beta)
	Expect(post("/v1/track", []byte(`{"userId":"u1","event":"Still Here"}`), basic(acmeKey)).Status).To(Equal(http.StatusOK))
	Expect(post("/v1/track", []byte(`{"userId":"u1","event":"Still Here"}`), basic(betaKey)).Status).To(Equal(http.StatusOK))
	Expect(since(acme, fromAcme)).To(HaveLen(1))
	Expect(since(beta, fromBeta)).To(HaveLen(1))
}

var _ = Describe("Attacks with nothing but a write key", func() {
	It("refuses every message of the amplification batch on its own, publishes none and stays up", func() {
		from := mark(acme)
		body := gzipped(amplificationBatch())
		Expect(len(body)).To(BeNumerically("<", 10<<10), "the attack is small on the wire")
		r := post("/v1/batch", body, basic(acmeKey), header("Content-Encoding", "gzip"))
		Expect(r.Status).To(Equal(http.StatusOK))
		Expect(r.Body).To(HaveKeyWithValue("accepted", BeEquivalentTo(0)))
		Expect(r.Body["rejected"]).To(HaveLen(segment.MaxBatchMessages))
		Expect(r.Body["rejected"]).To(HaveEach(HaveKeyWithValue("code", segment.CodeMessageTooLarge)))
		Expect(since(acme, from)).To(BeEmpty())
		goodStillLands()
	})

	It("refuses a gzip bomb after reading no more than the request limit", func() {
		bomb := gzipped(make([]byte, 50<<20)) // 50 MB of zeros
		Expect(len(bomb)).To(BeNumerically("<", 100<<10))
		r := post("/v1/batch", bomb, basic(acmeKey), header("Content-Encoding", "gzip"))
		Expect(r.Status).To(Equal(http.StatusBadRequest))
		Expect(r.Body).To(HaveErrorCode(segment.CodeRequestTooLarge))
		goodStillLands()
	})

	It("refuses nesting a million levels deep as malformed, without recursing into it", func() {
		deep := `{"batch":[` + strings.Repeat("[", 1_000_000) + strings.Repeat("]", 1_000_000) + `]}`
		r := post("/v1/batch", gzipped([]byte(deep)), basic(acmeKey), header("Content-Encoding", "gzip"))
		Expect(r.Status).To(Equal(http.StatusBadRequest))
		Expect(r.Body).To(HaveErrorCode(segment.CodeRequestTooLarge), "2 MB of brackets pass the request limit")
		within := `{"batch":[` + strings.Repeat("[", 200_000) + strings.Repeat("]", 200_000) + `]}`
		r = post("/v1/batch", []byte(within), basic(acmeKey))
		Expect(r.Status).To(Equal(http.StatusBadRequest))
		Expect(r.Body).To(HaveErrorCode(segment.CodeInvalidJSON), "deeper than encoding/json allows")
		goodStillLands()
	})

	It("stores the good messages beside deep, NUL, invalid UTF-8 and oversized ones", func() {
		from := mark(acme)
		body := "{\"batch\":[" +
			`{"type":"track","userId":"u1","event":"Good","messageId":"good-1"},` +
			`{"type":"track","userId":"u1","event":"E","properties":{"p":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}},` +
			`{"type":"identify","userId":"u1","traits":{"bio":"a\u0000b"}},` +
			"{\"type\":\"track\",\"userId\":\"u1\",\"event\":\"\xc3\x28\"}," +
			`{"type":"track","userId":"u1","event":"E","properties":{"p":"` + strings.Repeat("x", 33<<10) + `"}},` +
			`{"type":"track","userId":"u1","event":"Good","messageId":"good-2"}]}`
		r := post("/v1/batch", []byte(body), basic(acmeKey))
		Expect(r.Status).To(Equal(http.StatusOK))
		Expect(r.Body).To(HaveKeyWithValue("accepted", BeEquivalentTo(2)))
		var codes []any
		for _, rej := range r.Body["rejected"].([]any) {
			codes = append(codes, rej.(map[string]any)["code"])
		}
		Expect(codes).To(Equal([]any{segment.CodeNestingTooDeep, segment.CodeUnstorableString, segment.CodeInvalidUTF8, segment.CodeMessageTooLarge}))
		var ids []string
		for _, m := range since(acme, from) {
			ids = append(ids, m.MsgID)
		}
		Expect(ids).To(Equal([]string{"good-1", "good-2"}))
	})

	It("answers a burst of wrong keys with 401s, counts them, and keeps serving the right ones", func() {
		before := testutil.ToFloat64(metrics.RefusalsCounter(segment.CodeInvalidWriteKey))
		var wg sync.WaitGroup
		statuses := make(chan int, 400)
		for i := range 400 {
			wg.Go(func() {
				req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/track", strings.NewReader(`{"userId":"u1","event":"E"}`))
				req.SetBasicAuth(fmt.Sprintf("guess-%04d-0123456789abcdef0123", i), "")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					statuses <- 0
					return
				}
				resp.Body.Close()
				statuses <- resp.StatusCode
			})
		}
		wg.Wait()
		close(statuses)
		for s := range statuses {
			Expect(s).To(Equal(http.StatusUnauthorized))
		}
		Expect(testutil.ToFloat64(metrics.RefusalsCounter(segment.CodeInvalidWriteKey)) - before).To(BeEquivalentTo(400))
		goodStillLands()
	})

	Describe("floods past the receiver's bounds", func() {
		// A source whose stream never acknowledges (a subscriber takes the messages, nothing stores
		// them), so every admitted request holds its place until the publish deadline.
		var stalled *source.Config
		BeforeEach(func() {
			stalled = &source.Config{Namespace: "tenants", Name: "stalled", Tenant: "stalled", WriteKeys: []string{"stalled-key-0123456789abcdef012"}}
			sink, err := nc.Subscribe(stalled.Stream().MessageSubjects(), func(*nats.Msg) {})
			Expect(err).NotTo(HaveOccurred())
			DeferCleanup(sink.Unsubscribe)
		})
		bounded := func(o receiver.Options) (*httptest.Server, *receiver.Metrics) {
			GinkgoHelper()
			o.JetStream, o.Conn, o.PublishTimeout = js, nc, time.Second
			o.Logger = slog.New(slog.NewTextHandler(GinkgoWriter, nil))
			o.Metrics = receiver.NewMetrics(prometheus.NewRegistry())
			r, err := receiver.New(o, []*source.Config{stalled, acme})
			Expect(err).NotTo(HaveOccurred())
			s := httptest.NewServer(r.Handler())
			DeferCleanup(s.Close)
			return s, o.Metrics
		}
		flood := func(url string, n int, body []byte, key string) []response {
			var mu sync.Mutex
			var out []response
			var wg sync.WaitGroup
			for range n {
				wg.Go(func() {
					defer GinkgoRecover()
					r := postTo(url, "/v1/batch", body, basic(key))
					mu.Lock()
					out = append(out, r)
					mu.Unlock()
				})
			}
			wg.Wait()
			return out
		}

		It("sheds requests past its limit of requests in flight with 429 and Retry-After", func() {
			s, m := bounded(receiver.Options{MaxRequestsInFlight: 4})
			answers := flood(s.URL, 40, []byte(`{"batch":[{"type":"track","userId":"u1","event":"E"}]}`), stalled.WriteKeys[0])
			shed := 0
			for _, r := range answers {
				switch r.Status {
				case http.StatusTooManyRequests:
					shed++
					Expect(r.Header.Get("Retry-After")).To(Equal("2"))
					Expect(r.Body).To(HaveErrorCode("overloaded"))
				default:
					Expect(r.Status).To(Equal(http.StatusServiceUnavailable), "admitted, then the stalled stream timed out")
				}
			}
			Expect(shed).To(BeNumerically(">=", 30))
			Expect(testutil.ToFloat64(m.ShedCounter("requests"))).To(BeEquivalentTo(shed))
			Expect(postTo(s.URL, "/v1/track", []byte(`{"userId":"u1","event":"After"}`), basic(acmeKey)).Status).To(Equal(http.StatusOK))
		})

		It("sheds requests past its limit of bytes in flight", func() {
			// Room for one large request (its body and its messages), not two.
			s, m := bounded(receiver.Options{MaxBytesInFlight: 2*segment.MaxRequestBytes + 200<<10})
			item := `{"type":"track","userId":"u1","event":"E","properties":{"p":"` + strings.Repeat("x", 30<<10) + `"}}`
			large := []byte(`{"batch":[` + strings.TrimSuffix(strings.Repeat(item+",", 14), ",") + `]}`)
			answers := flood(s.URL, 8, large, stalled.WriteKeys[0])
			statuses := map[int]int{}
			for _, r := range answers {
				statuses[r.Status]++
			}
			Expect(statuses[http.StatusTooManyRequests]).To(BeNumerically(">=", 6), "%v", statuses)
			Expect(testutil.ToFloat64(m.ShedCounter("bytes"))).To(BeNumerically(">=", 6))
			Expect(postTo(s.URL, "/v1/track", []byte(`{"userId":"u1","event":"After"}`), basic(acmeKey)).Status).To(Equal(http.StatusOK))
		})
	})

	It("refuses a tenant whose stream is full with 503 and Retry-After, while the other tenants flow", func(ctx SpecContext) {
		full := &source.Config{Namespace: "tenants", Name: "full", Tenant: "full", WriteKeys: []string{"full-key-0123456789abcdef0123456"}, StreamMaxBytes: 64 << 10}
		Expect(stream.Ensure(ctx, js, full.Stream(), full.StreamSettings())).To(Succeed())
		r, err := receiver.New(receiver.Options{JetStream: js, Conn: nc, PublishTimeout: 2 * time.Second,
			Logger: slog.New(slog.NewTextHandler(GinkgoWriter, nil))}, []*source.Config{full, acme})
		Expect(err).NotTo(HaveOccurred())
		s := httptest.NewServer(r.Handler())
		DeferCleanup(s.Close)

		item := `{"type":"track","userId":"u1","event":"E","properties":{"p":"` + strings.Repeat("x", 4<<10) + `"}}`
		body := []byte(`{"batch":[` + strings.TrimSuffix(strings.Repeat(item+",", 4), ",") + `]}`)
		var last response
		for range 40 {
			if last = postTo(s.URL, "/v1/batch", body, basic(full.WriteKeys[0])); last.Status != http.StatusOK {
				break
			}
		}
		Expect(last.Status).To(Equal(http.StatusServiceUnavailable))
		Expect(last.Header.Get("Retry-After")).NotTo(BeEmpty())
		Expect(postTo(s.URL, "/v1/track", []byte(`{"userId":"u1","event":"Other tenant"}`), basic(acmeKey)).Status).To(Equal(http.StatusOK))
	})

	Describe("connections that never finish a request", func() {
		It("cuts off slowloris senders and idle connections and keeps answering", func() {
			rc := startCommand("--read-header-timeout", "500ms", "--max-connections", "1100")
			By("a thousand idle connections and one sender trickling its headers")
			var idle []net.Conn
			for range 1000 {
				c, err := net.Dial("tcp", rc.addr)
				Expect(err).NotTo(HaveOccurred())
				idle = append(idle, c)
			}
			DeferCleanup(func() {
				for _, c := range idle {
					c.Close()
				}
			})
			slow, err := net.Dial("tcp", rc.addr)
			Expect(err).NotTo(HaveOccurred())
			DeferCleanup(slow.Close)
			closed := make(chan time.Duration, 1)
			go func() {
				start := time.Now()
				for _, b := range []byte("POST /v1/track HTTP/1.1\r\nHost: x\r\nX-Slow: " + strings.Repeat("a", 100)) {
					if _, err := slow.Write([]byte{b}); err != nil {
						break
					}
					time.Sleep(50 * time.Millisecond)
				}
				_, _ = io.Copy(io.Discard, slow) // returns once the server hangs up
				closed <- time.Since(start)
			}()

			By("the receiver still answers")
			resp, err := http.Post(rc.base+"/v1/track", "application/json", strings.NewReader(`{"userId":"u1","event":"E"}`))
			Expect(err).NotTo(HaveOccurred())
			resp.Body.Close()
			Expect(resp.StatusCode).To(Equal(http.StatusUnauthorized), "answered, without a key")

			By("the slow sender is cut off at the header deadline, not when it finishes")
			Eventually(closed).WithTimeout(5 * time.Second).Should(Receive(BeNumerically("<", 3*time.Second)))
			By("the idle connections are closed too")
			buf := make([]byte, 1)
			for _, c := range idle[:20] {
				Expect(c.SetReadDeadline(time.Now().Add(5 * time.Second))).To(Succeed())
				_, err := c.Read(buf)
				Expect(err).To(MatchError(io.EOF))
			}
		})
	})
})
