package receiver_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/workers/receiver"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
)

var _ = Describe("A partitioned source", func() {
	It("publishes each message to the partition of its user: userId, else anonymousId", func(ctx SpecContext) {
		const key = "gamma-write-key-0123456789abcdef"
		gamma := &source.Config{Namespace: "tenants", Name: "gamma", Tenant: "gamma", WriteKeys: []string{key}, Partitions: 4}
		Expect(stream.Ensure(ctx, js, gamma.Stream(), gamma.StreamSettings())).To(Succeed())
		r, err := receiver.New(receiver.Options{JetStream: js, Conn: nc, PublishTimeout: 2 * time.Second,
			Logger: slog.New(slog.NewTextHandler(GinkgoWriter, nil))}, []*source.Config{gamma})
		Expect(err).NotTo(HaveOccurred())
		s := httptest.NewServer(r.Handler())
		DeferCleanup(s.Close)

		from := mark(gamma)
		body := `{"batch":[`
		for i := range 16 {
			body += `{"type":"track","event":"E","userId":"user-` + strconv.Itoa(i) + `","anonymousId":"a` + strconv.Itoa(i) + `"},`
		}
		body += `{"type":"identify","userId":42},{"type":"page","anonymousId":"visitor-7"},{"type":"alias","userId":"user-3","previousId":"visitor-7"}]}`
		resp := postTo(s.URL, "/v1/batch", []byte(body), basic(key))
		Expect(resp.Status).To(Equal(http.StatusOK))

		msgs := since(gamma, from)
		Expect(msgs).To(HaveLen(19))
		used := map[string]bool{}
		for _, m := range msgs {
			user := stream.UserKey(m.Message.UserID, m.Message.AnonymousID)
			want := gamma.Stream().PartitionSubject(m.Message.Type, stream.Partition(user, 4), 4)
			Expect(m.Subject).To(Equal(want), "message of %q", user)
			used[m.Subject[len(m.Subject)-1:]] = true
		}
		Expect(len(used)).To(BeNumerically(">", 1), "16 users spread over more than one partition")

		By("each partition's consumer sees exactly its partition's messages")
		total := 0
		for p := range 4 {
			c, err := js.Consumer(context.Background(), gamma.Stream().StreamName(), stream.PartitionConsumer(p))
			Expect(err).NotTo(HaveOccurred())
			info, err := c.Info(ctx)
			Expect(err).NotTo(HaveOccurred())
			total += int(info.NumPending)
		}
		Expect(total).To(Equal(19))
		legacy, err := js.Consumer(context.Background(), gamma.Stream().StreamName(), stream.WorkerConsumer)
		Expect(err).NotTo(HaveOccurred())
		info, err := legacy.Info(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(info.NumPending).To(BeZero())
	})
})
