package segment_test

import (
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/workers/segment"
)

// What a sender with nothing but a write key may try: every rule refuses the offending message
// alone and keeps the good ones beside it.
var _ = Describe("Hostile input", func() {
	batch := segment.Endpoint{Batch: true}
	good := func(id string) string {
		return `{"type":"track","userId":"u1","event":"Kept","messageId":"` + id + `"}`
	}
	// within normalises a batch of good messages around one bad one and returns the bad one's
	// rejection.
	within := func(bad string) segment.Rejection {
		GinkgoHelper()
		res := normalize(`{"batch":[`+good("g1")+`,`+bad+`,`+good("g2")+`]}`, batch)
		Expect(res.Accepted).To(HaveLen(2))
		Expect(res.Accepted[0].MessageID).To(Equal("g1"))
		Expect(res.Accepted[1].MessageID).To(Equal("g2"))
		Expect(res.Rejected).To(HaveLen(1))
		Expect(res.Rejected[0].Index).To(Equal(1))
		return res.Rejected[0]
	}

	It("refuses a message over 32 KB on its own, not the batch", func() {
		big := `{"type":"track","userId":"u","event":"E","properties":{"p":"` + strings.Repeat("x", segment.MaxMessageBytes) + `"}}`
		Expect(within(big).Code).To(Equal(segment.CodeMessageTooLarge))
	})

	It("measures a message as stored: with the batch context merged in", func() {
		ctx := `{"blob":"` + strings.Repeat("c", 20<<10) + `"}`
		own := `{"type":"track","userId":"u","event":"E","properties":{"p":"` + strings.Repeat("p", 15<<10) + `"}}`
		res := normalize(`{"context":`+ctx+`,"batch":[`+own+`,`+good("small")+`]}`, batch)
		Expect(res.Rejected).To(ConsistOf(And(HaveField("Index", 0), HaveField("Code", segment.CodeMessageTooLarge))))
		Expect(res.Accepted).To(ConsistOf(HaveField("MessageID", "small")))
		Expect(len(res.Accepted[0].JSON)).To(BeNumerically("<=", segment.MaxMessageBytes))
	})

	It("turns the amplification batch (300 KB batch context, 2,500 tiny messages) into refusals, not 750 MB", func() {
		ctx := `{"blob":"` + strings.Repeat("c", 300<<10) + `"}`
		items := strings.TrimSuffix(strings.Repeat(`{"type":"track","userId":"u","event":"E"},`, 2500), ",")
		req, err := segment.ParseRequest([]byte(`{"context":`+ctx+`,"batch":[`+items+`]}`), batch)
		Expect(err).NotTo(HaveOccurred())
		Expect(req.OutputBound()).To(BeNumerically("<=", segment.MaxRequestOutputBytes+segment.MaxMessageBytes))
		res := req.Normalize(time.Now())
		Expect(res.Accepted).To(BeEmpty())
		Expect(res.Rejected).To(HaveLen(2500))
		Expect(res.Rejected).To(HaveEach(HaveField("Code", segment.CodeMessageTooLarge)))
	})

	It("bounds what a request expands to, refusing the messages past the bound", func() {
		ctx := `{"blob":"` + strings.Repeat("c", 30<<10) + `"}` // fits in each message, once
		items := strings.TrimSuffix(strings.Repeat(`{"type":"track","userId":"u","event":"E"},`, 200), ",")
		res := normalize(`{"context":`+ctx+`,"batch":[`+items+`]}`, batch)
		total := 0
		for _, a := range res.Accepted {
			total += len(a.JSON)
		}
		Expect(total).To(BeNumerically("<=", segment.MaxRequestOutputBytes))
		Expect(res.Accepted).NotTo(BeEmpty())
		Expect(res.Rejected).NotTo(BeEmpty())
		Expect(res.Rejected).To(HaveEach(HaveField("Code", segment.CodeRequestExpansion)))
		Expect(len(res.Accepted) + len(res.Rejected)).To(Equal(200))
	})

	DescribeTable("refuses strings Postgres cannot store, at the edge",
		func(bad, code string) { Expect(within(bad).Code).To(Equal(code)) },
		Entry("a NUL escape in a property", `{"type":"track","userId":"u","event":"E","properties":{"p":"a\u0000b"}}`, segment.CodeUnstorableString),
		Entry("a NUL escape in a key", `{"type":"identify","userId":"u","traits":{"a\u0000":1}}`, segment.CodeUnstorableString),
		Entry("a lone high surrogate", `{"type":"track","userId":"u","event":"E","properties":{"p":"\ud83d"}}`, segment.CodeUnstorableString),
		Entry("a lone low surrogate", `{"type":"track","userId":"u","event":"E","properties":{"p":"\ude00x"}}`, segment.CodeUnstorableString),
		Entry("invalid UTF-8 bytes", "{\"type\":\"track\",\"userId\":\"u\",\"event\":\"E\",\"properties\":{\"p\":\"\xff\xfe\"}}", segment.CodeInvalidUTF8),
		Entry("a truncated UTF-8 sequence", "{\"type\":\"track\",\"userId\":\"u\",\"event\":\"caf\xc3\"}", segment.CodeInvalidUTF8),
		Entry("nesting past 64 levels", `{"type":"track","userId":"u","event":"E","properties":{"p":`+strings.Repeat("[", 70)+strings.Repeat("]", 70)+`}}`, segment.CodeNestingTooDeep),
	)

	It("keeps what only looks like NUL or a broken surrogate", func() {
		res := normalize(`{"batch":[`+
			`{"type":"track","userId":"u","event":"E","properties":{"escaped":"\\u0000","pair":"\ud83d\ude00","nul":"\u0030"}},`+
			`{"type":"track","userId":"u","event":"E","properties":{"deep":`+strings.Repeat("[", 60)+strings.Repeat("]", 60)+`}}]}`, batch)
		Expect(res.Rejected).To(BeEmpty())
		Expect(res.Accepted).To(HaveLen(2))
	})

	It("refuses NUL in the batch context for every message it is merged into", func() {
		res := normalize(`{"context":{"x":"\u0000"},"batch":[`+good("a")+`,`+good("b")+`]}`, batch)
		Expect(res.Accepted).To(BeEmpty())
		Expect(res.Rejected).To(HaveEach(HaveField("Code", segment.CodeUnstorableString)))
	})

	It("forwards numeric ids as the string of their integer form, so 12345, 12345.0 and 1.2345e4 are one account", func() {
		res := normalize(`{"batch":[`+
			`{"type":"group","userId":"u","groupId":12345.0},{"type":"group","userId":"u","groupId":1.2345e4},`+
			`{"type":"group","userId":"u","groupId":12345},{"type":"group","userId":"u","groupId":2.5},`+
			`{"type":"group","userId":"u","groupId":"12345.0"}]}`, batch)
		var ids []any
		for _, a := range res.Accepted {
			ids = append(ids, decoded(a)["groupId"])
		}
		Expect(ids).To(Equal([]any{"12345", "12345", "12345", "2.5", "12345.0"}), "a string id stays as sent")
	})

	Describe("far-future timestamps", func() {
		received := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
		at := func(body string) (map[string]any, bool) {
			GinkgoHelper()
			req, err := segment.ParseRequest([]byte(body), segment.Endpoint{Type: segment.TypeIdentify})
			Expect(err).NotTo(HaveOccurred())
			res := req.Normalize(received)
			Expect(res.Accepted).To(HaveLen(1))
			return decoded(res.Accepted[0]), res.Accepted[0].Clamped
		}

		It("clamps an event dated beyond a day after receipt to the receipt time, keeping the client's value", func() {
			m, clamped := at(`{"userId":"u","timestamp":"2999-01-01T00:00:00Z","traits":{"plan":"forever"}}`)
			Expect(clamped).To(BeTrue())
			Expect(m["timestamp"]).To(Equal("2026-12-01T12:00:00Z"))
			Expect(m["originalTimestamp"]).To(Equal("2999-01-01T00:00:00Z"))
		})

		It("keeps a skewed but honest client inside the day", func() {
			m, clamped := at(`{"userId":"u","timestamp":"2026-12-02T11:00:00Z"}`)
			Expect(clamped).To(BeFalse())
			Expect(m["timestamp"]).To(Equal("2026-12-02T11:00:00Z"))
		})
	})
})
