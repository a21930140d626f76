package receiver_test

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/workers/segment"
)

var _ = Describe("Request bodies", func() {
	body := []byte(`{"batch":[{"type":"track","userId":"u1","event":"Encoded"}]}`)

	DescribeTable("accepts every encoding real clients use",
		func(payload func() []byte, opts ...reqOpt) {
			from := mark(acme)
			r := post("/v1/batch", payload(), append([]reqOpt{basic(acmeKey)}, opts...)...)
			Expect(r.Status).To(Equal(http.StatusOK), r.Raw)
			msgs := since(acme, from)
			Expect(msgs).To(HaveLen(1))
			Expect(msgs[0].Message.Event).To(Equal("Encoded"))
		},
		Entry("application/json", func() []byte { return body }),
		Entry("application/json with charset (analytics-swift)", func() []byte { return body }, header("Content-Type", "application/json; charset=utf-8")),
		Entry("text/plain (analytics.js, analytics-kotlin)", func() []byte { return body }, header("Content-Type", "text/plain")),
		Entry("no Content-Type", func() []byte { return body }, header("Content-Type", "")),
		Entry("gzip (analytics-android, analytics-kotlin)", func() []byte { return gzipped(body) }, header("Content-Encoding", "gzip")),
		Entry("chunked, without Content-Length", func() []byte { return body }, chunked()),
		Entry("gzip and chunked", func() []byte { return gzipped(body) }, header("Content-Encoding", "gzip"), chunked()),
	)

	It("refuses a content encoding it cannot decode", func() {
		r := post("/v1/batch", body, basic(acmeKey), header("Content-Encoding", "br"))
		Expect(r.Status).To(Equal(http.StatusUnsupportedMediaType))
		Expect(r.Body).To(HaveErrorCode("unsupported_content_encoding"))
	})

	It("refuses a body that claims gzip but is not", func() {
		r := post("/v1/batch", body, basic(acmeKey), header("Content-Encoding", "gzip"))
		Expect(r.Status).To(Equal(http.StatusBadRequest))
		Expect(r.Body).To(HaveErrorCode("invalid_gzip"))
	})

	Describe("limits", func() {
		var from uint64
		BeforeEach(func() { from = mark(acme) })
		AfterEach(func() { Expect(since(acme, from)).To(BeEmpty(), "a refused request published something") })

		It("refuses invalid JSON with 400", func() {
			r := post("/v1/batch", []byte(`{"batch":[{"type":"track",`), basic(acmeKey))
			Expect(r.Status).To(Equal(http.StatusBadRequest))
			Expect(r.Body).To(HaveErrorCode(segment.CodeInvalidJSON))
		})

		It("refuses a single message over 32 KB", func() {
			big := fmt.Sprintf(`{"userId":"u1","event":"Big","properties":{"p":%q}}`, strings.Repeat("x", 33*1024))
			r := post("/v1/track", []byte(big), basic(acmeKey))
			Expect(r.Status).To(Equal(http.StatusBadRequest))
			Expect(r.Body).To(HaveErrorCode(segment.CodeMessageTooLarge))
		})

		It("refuses a request over 500 KB", func() {
			item := fmt.Sprintf(`{"type":"track","userId":"u1","event":"E","properties":{"p":%q}}`, strings.Repeat("x", 20*1024))
			r := post("/v1/batch", []byte(`{"batch":[`+strings.TrimSuffix(strings.Repeat(item+",", 26), ",")+`]}`), basic(acmeKey))
			Expect(r.Status).To(Equal(http.StatusBadRequest))
			Expect(r.Body).To(HaveErrorCode(segment.CodeRequestTooLarge))
		})

		It("measures the size after decompression and refuses a gzip bomb without inflating it all", func() {
			// 1 GiB of zeros as ~1 MB of gzip: one compressed MiB of zeros repeated as gzip
			// members (readers decode concatenated members as one stream). Inflating it all
			// would take seconds and a GiB.
			var compressed bytes.Buffer
			compressed.Write(gzipped([]byte(`{"batch":[{"type":"track","userId":"u1","event":"E","properties":{"p":"`)))
			zeros := gzipped(make([]byte, 1<<20))
			for i := 0; i < 1024; i++ {
				compressed.Write(zeros)
			}
			Expect(compressed.Len()).To(BeNumerically("<", segment.MaxRequestBytes*3))

			start := time.Now()
			r := post("/v1/batch", compressed.Bytes(), basic(acmeKey), header("Content-Encoding", "gzip"))
			Expect(r.Status).To(Equal(http.StatusBadRequest))
			Expect(r.Body).To(HaveErrorCode(segment.CodeRequestTooLarge))
			GinkgoWriter.Printf("gzip bomb (%d bytes compressed) refused in %s\n", compressed.Len(), time.Since(start))
		})

		It("refuses more than 2500 messages in a batch", func() {
			items := strings.TrimSuffix(strings.Repeat(`{"type":"track","userId":"u1","event":"E"},`, 2501), ",")
			r := post("/v1/batch", []byte(`{"batch":[`+items+`]}`), basic(acmeKey))
			Expect(r.Status).To(Equal(http.StatusBadRequest))
			Expect(r.Body).To(HaveErrorCode(segment.CodeTooManyMessages))
		})

		It("refuses a batch request without a batch array", func() {
			r := post("/v1/batch", []byte(singleBodies["track"]), basic(acmeKey))
			Expect(r.Status).To(Equal(http.StatusBadRequest))
			Expect(r.Body).To(HaveErrorCode(segment.CodeInvalidBatch))
		})
	})
	It("refuses a message over 32 KB on its own and stores the rest of its batch", func() {
		from := mark(acme)
		big := fmt.Sprintf(`{"type":"track","userId":"u1","event":"Big","properties":{"p":%q}}`, strings.Repeat("x", 33*1024))
		r := post("/v1/batch", []byte(`{"batch":[{"type":"track","userId":"u1","event":"Small"},`+big+
			`,{"type":"track","userId":"u1","event":"Also small"}]}`), basic(acmeKey))
		Expect(r.Status).To(Equal(http.StatusOK))
		Expect(r.Body).To(HaveKeyWithValue("accepted", BeEquivalentTo(2)))
		Expect(r.Body["rejected"]).To(ConsistOf(And(HaveKeyWithValue("index", 1.0), HaveKeyWithValue("code", segment.CodeMessageTooLarge))))
		var events []string
		for _, m := range since(acme, from) {
			events = append(events, m.Message.Event)
		}
		Expect(events).To(Equal([]string{"Small", "Also small"}))
	})

	It("accepts exactly 2500 messages", func() {
		from := mark(acme)
		items := strings.TrimSuffix(strings.Repeat(`{"type":"track","userId":"u1","event":"E"},`, 2500), ",")
		r := post("/v1/batch", []byte(`{"batch":[`+items+`]}`), basic(acmeKey))
		Expect(r.Status).To(Equal(http.StatusOK))
		Expect(mark(acme) - from).To(BeEquivalentTo(2500))
	})
})
