package segment_test

import (
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/workers/segment"
)

// forwardedTrack is a track as Segment's Webhooks destination forwards it (the shape of Segment's
// destination docs): Segment has stamped receivedAt and computed timestamp from the client's
// originalTimestamp and sentAt.
const forwardedTrack = `{
  "anonymousId": "507f191e810c19729de860ea",
  "context": {"ip": "8.8.8.8", "library": {"name": "analytics.js", "version": "2.11.1"},
    "page": {"path": "/reports", "url": "https://app.acme.test/reports"}, "userAgent": "Mozilla/5.0"},
  "event": "Report Exported",
  "integrations": {},
  "messageId": "ajs-f8ca1e4de5024d9430b3928bd8ac6b96",
  "originalTimestamp": "2025-05-03T10:14:02.117Z",
  "projectId": "q5Vb3pPT3d",
  "properties": {"format": "csv"},
  "receivedAt": "2025-05-03T10:14:03.025Z",
  "sentAt": "2025-05-03T10:14:02.120Z",
  "timestamp": "2025-05-03T10:14:03.022Z",
  "type": "track",
  "userId": "97980cfea0067",
  "version": 2
}`

var _ = Describe("Messages Segment forwards (the destination route)", func() {
	dest := segment.Endpoint{Destination: true}
	received := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC) // a replay, months later

	normalizeAt := func(body string) segment.Result {
		GinkgoHelper()
		req, err := segment.ParseRequest([]byte(body), dest)
		Expect(err).NotTo(HaveOccurred())
		return req.Normalize(received)
	}

	It("keeps Segment's timestamp, receivedAt, sentAt and originalTimestamp, and every other field", func() {
		res := normalizeAt(forwardedTrack)
		Expect(res.Rejected).To(BeEmpty())
		m := decoded(res.Accepted[0])
		Expect(m).To(HaveKeyWithValue("timestamp", "2025-05-03T10:14:03.022Z"))
		Expect(m).To(HaveKeyWithValue("receivedAt", "2025-05-03T10:14:03.025Z"))
		Expect(m).To(HaveKeyWithValue("sentAt", "2025-05-03T10:14:02.12Z"))
		Expect(m).To(HaveKeyWithValue("originalTimestamp", "2025-05-03T10:14:02.117Z"))
		Expect(m).To(HaveKeyWithValue("projectId", "q5Vb3pPT3d"))
		Expect(m).To(HaveKeyWithValue("version", BeEquivalentTo("2")))
		Expect(res.Accepted[0].MessageID).To(Equal("ajs-f8ca1e4de5024d9430b3928bd8ac6b96"))
	})

	It("takes one message, a JSON array of messages (Webhooks Actions batching) or a batch object", func() {
		identify := `{"type":"identify","userId":"u1","messageId":"m2","timestamp":"2025-05-03T10:15:00Z","traits":{"plan":"pro"}}`
		Expect(normalizeAt(identify).Accepted).To(HaveLen(1))
		res := normalizeAt(`[` + forwardedTrack + `,` + identify + `]`)
		Expect(res.Accepted).To(HaveLen(2))
		Expect(res.Accepted[1].Type).To(Equal(segment.TypeIdentify))
		Expect(normalizeAt(`{"batch":[` + identify + `]}`).Accepted).To(HaveLen(1))
	})

	It("falls back to originalTimestamp, then Segment's receivedAt, then now, for a message without timestamp", func() {
		ts := func(body string) any { return decoded(normalizeAt(body).Accepted[0])["timestamp"] }
		Expect(ts(`{"type":"track","userId":"u","event":"E","originalTimestamp":"2025-01-02T03:04:05Z","sentAt":"2025-01-02T03:04:06Z","receivedAt":"2025-01-02T03:09:00Z"}`)).
			To(Equal("2025-01-02T03:04:05Z"), "no skew correction: the forwarded times are Segment's")
		Expect(ts(`{"type":"track","userId":"u","event":"E","receivedAt":"2025-01-02T03:09:00Z"}`)).To(Equal("2025-01-02T03:09:00Z"))
		Expect(ts(`{"type":"track","userId":"u","event":"E"}`)).To(Equal("2026-12-01T12:00:00Z"))
	})

	It("still clamps a timestamp more than a day ahead of now", func() {
		res := normalizeAt(`{"type":"identify","userId":"u","timestamp":"2999-01-01T00:00:00Z"}`)
		Expect(res.Accepted[0].Clamped).To(BeTrue())
		Expect(decoded(res.Accepted[0])["timestamp"]).To(Equal("2026-12-01T12:00:00Z"))
	})

	It("takes Segment's user-deletion requests, which need a userId, and only from Segment", func() {
		res := normalizeAt(`[{"type":"delete","userId":"u1","messageId":"del-1","timestamp":"2025-03-04T05:06:07.089Z","context":{},"projectId":"p1"},` +
			`{"type":"delete","anonymousId":"a1","messageId":"del-2"},` + forwardedTrack + `]`)
		Expect(res.Accepted).To(HaveLen(2))
		del := decoded(res.Accepted[0])
		Expect(del).To(And(HaveKeyWithValue("type", "delete"), HaveKeyWithValue("userId", "u1"),
			HaveKeyWithValue("timestamp", "2025-03-04T05:06:07.089Z")))
		Expect(res.Rejected).To(ConsistOf(And(HaveField("Index", 1), HaveField("Code", segment.CodeUserIDRequired))))

		req, err := segment.ParseRequest([]byte(`{"batch":[{"type":"delete","userId":"u1"}]}`), segment.Endpoint{Batch: true})
		Expect(err).NotTo(HaveOccurred())
		Expect(req.Normalize(received).Rejected).To(ConsistOf(HaveField("Code", segment.CodeDeleteNotHere)))
	})

	It("leaves the client routes' rule alone: a client's receivedAt is ignored and skew is corrected", func() {
		req, err := segment.ParseRequest([]byte(`{"userId":"u","event":"E","originalTimestamp":"2026-12-01T11:00:00Z","sentAt":"2026-12-01T11:00:10Z","receivedAt":"2001-01-01T00:00:00Z"}`),
			segment.Endpoint{Type: segment.TypeTrack})
		Expect(err).NotTo(HaveOccurred())
		m := decoded(req.Normalize(received).Accepted[0])
		Expect(m["timestamp"]).To(Equal("2026-12-01T11:59:50Z"))
		Expect(m["receivedAt"]).To(Equal("2026-12-01T12:00:00Z"))
	})
})
