package receiver_test

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/nats-io/nats.go"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/workers/receiver"
	"github.com/tallyhq/tally/workers/source"
)

func readyz() int {
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/readyz", nil)
	return do(req).Status
}

var _ = Describe("When JetStream cannot take the messages", Ordered, func() {
	It("answers 503 with Retry-After while NATS is down, and 200 again once it is back", func() {
		stopNATS()
		Eventually(readyz).Should(Equal(http.StatusServiceUnavailable))

		r := post("/v1/batch", []byte(`{"batch":[{"type":"track","userId":"u1","event":"During Outage","messageId":"outage-1"}]}`), basic(acmeKey))
		Expect(r.Status).To(Equal(http.StatusServiceUnavailable))
		Expect(r.Header.Get("Retry-After")).To(Equal("5"))
		Expect(r.Body).To(HaveErrorCode("unavailable"))

		// The same server comes back on the same port with the same store: the stream and what it
		// held survive.
		startNATS()
		Eventually(readyz, 10*time.Second, 50*time.Millisecond).Should(Equal(http.StatusOK))
		from := mark(acme)
		Expect(post("/v1/batch", []byte(`{"batch":[{"type":"track","userId":"u1","event":"During Outage","messageId":"outage-1"}]}`), basic(acmeKey)).Status).To(Equal(http.StatusOK))
		msgs := since(acme, from)
		Expect(msgs).To(HaveLen(1))
		Expect(msgs[0].MsgID).To(Equal("outage-1"))
	})

	It("answers 503 when the PubAcks do not arrive before the publish deadline", func() {
		// Something takes the messages but never acknowledges them, like a stalled stream.
		slow := &source.Config{Namespace: "tenants", Name: "slow", Tenant: "x", WriteKeys: []string{"slow-key-0123456789abcdef0123456"}}
		sink, err := nc.Subscribe(slow.Stream().MessageSubjects(), func(*nats.Msg) {})
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(sink.Unsubscribe)
		r, err := receiver.New(receiver.Options{JetStream: js, PublishTimeout: 300 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(GinkgoWriter, nil))}, []*source.Config{slow})
		Expect(err).NotTo(HaveOccurred())
		s := httptest.NewServer(r.Handler())
		defer s.Close()
		start := time.Now()
		resp := postTo(s.URL, "/v1/batch", []byte(`{"batch":[{"type":"track","userId":"u1","event":"E"},{"type":"identify","userId":"u1"}]}`), basic("slow-key-0123456789abcdef0123456"))
		Expect(resp.Status).To(Equal(http.StatusServiceUnavailable))
		Expect(resp.Header.Get("Retry-After")).To(Equal("5"))
		Expect(resp.Body).To(HaveErrorCode("unavailable"))
		Expect(time.Since(start)).To(BeNumerically(">=", 300*time.Millisecond), "it waited for the acks until the deadline")
	})

	It("answers 503 when the source's stream does not exist yet", func() {
		orphan := &source.Config{Namespace: "tenants", Name: "no-stream", Tenant: "x", WriteKeys: []string{"orphan-key-0123456789abcdef0123"}}
		r, err := receiver.New(receiver.Options{JetStream: js, PublishTimeout: 3 * time.Second, Logger: slog.New(slog.NewTextHandler(GinkgoWriter, nil))}, []*source.Config{orphan})
		Expect(err).NotTo(HaveOccurred())
		s := httptest.NewServer(r.Handler())
		defer s.Close()
		resp := postTo(s.URL, "/v1/track", []byte(`{"userId":"u1","event":"E"}`), basic("orphan-key-0123456789abcdef0123"))
		Expect(resp.Status).To(Equal(http.StatusServiceUnavailable))
		Expect(resp.Header.Get("Retry-After")).NotTo(BeEmpty())
	})
})
