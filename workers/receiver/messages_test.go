package receiver_test

import (
	"net/http"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tallyhq/tally/workers/segment"
)

var _ = Describe("Published messages", func() {
	It("accepts the valid messages of a batch and reports the invalid ones", func() {
		from := mark(acme)
		invalidBefore := testutil.ToFloat64(metrics.MessagesCounter("tenants/acme-web", "invalid"))
		r := post("/v1/batch", []byte(`{"batch":[
			{"type":"track","userId":"u1","event":"Kept"},
			{"type":"track","userId":"u1"},
			{"type":"identify"},
			{"type":"group","userId":"u1","groupId":"acc1"}]}`), basic(acmeKey))
		Expect(r.Status).To(Equal(http.StatusOK))
		Expect(r.Body).To(HaveKeyWithValue("success", true))
		Expect(r.Body).To(HaveKeyWithValue("accepted", BeEquivalentTo(2)))
		Expect(r.Body["rejected"]).To(Equal([]any{
			map[string]any{"index": 1.0, "code": segment.CodeEventNotDefined, "message": "a track call needs an event name"},
			map[string]any{"index": 2.0, "code": segment.CodeIDRequired, "message": "a message needs a userId or an anonymousId"},
		}))
		msgs := since(acme, from)
		Expect(msgs).To(HaveLen(2))
		Expect(msgs[0].Message.Event).To(Equal("Kept"))
		Expect(msgs[1].Message.GroupID).To(Equal("acc1"))
		Expect(testutil.ToFloat64(metrics.MessagesCounter("tenants/acme-web", "invalid"))).To(Equal(invalidBefore + 2))
	})

	It("merges batch context and integrations into every message", func() {
		from := mark(acme)
		r := post("/v1/batch", []byte(`{"context":{"library":{"name":"analytics-go","version":"3.0.0"},"locale":"en-US"},"integrations":{"All":true},
			"batch":[{"type":"track","userId":"u1","event":"E","context":{"groupId":"acc1","library":{"version":"3.3.0"}}},
			         {"type":"identify","userId":"u1"}]}`), basic(acmeKey))
		Expect(r.Status).To(Equal(http.StatusOK))
		msgs := since(acme, from)
		Expect(msgs[0].Message.Context).To(MatchJSON(`{"groupId":"acc1","library":{"name":"analytics-go","version":"3.3.0"},"locale":"en-US"}`))
		Expect(msgs[1].Message.Context).To(MatchJSON(`{"library":{"name":"analytics-go","version":"3.0.0"},"locale":"en-US"}`))
		Expect(msgs[1].Message.Integrations).To(MatchJSON(`{"All":true}`))
	})

	It("stamps receivedAt and corrects timestamp for the client's clock skew", func() {
		// The client's clock runs two hours behind, in a +02:00 zone with nanosecond precision
		// like analytics-go; the event happened 3 s before the request was sent.
		clientNow := time.Now().Add(-2 * time.Hour)
		eventAt := clientNow.Add(-3 * time.Second)
		zone := time.FixedZone("client", 2*3600)
		before := time.Now()
		from := mark(acme)
		r := post("/v1/batch", []byte(`{"sentAt":"`+clientNow.In(zone).Format(time.RFC3339Nano)+`","batch":[
			{"type":"track","userId":"u1","event":"Skewed","timestamp":"`+eventAt.In(zone).Format(time.RFC3339Nano)+`"}]}`), basic(acmeKey))
		Expect(r.Status).To(Equal(http.StatusOK))
		m := since(acme, from)[0].Message
		Expect(m.ReceivedAt).To(BeTemporally(">=", before.Truncate(time.Microsecond)))
		Expect(m.ReceivedAt).To(BeTemporally("<=", time.Now()))
		Expect(m.Timestamp).To(BeTemporally("~", m.ReceivedAt.Add(-3*time.Second), time.Microsecond))
		Expect(m.OriginalTimestamp.Equal(eventAt)).To(BeTrue())
		Expect(m.SentAt.Equal(clientNow)).To(BeTrue())
	})

	It("turns numeric ids into strings and strips writeKey from what it stores", func() {
		from := mark(acme)
		r := post("/v1/batch", []byte(`{"writeKey":"`+acmeKey+`","batch":[
			{"type":"group","userId":42,"groupId":1001,"traits":{"name":"Acme"},"writeKey":"`+acmeKey+`"},
			{"type":"identify","userId":42,"traits":{"company":{"id":1001,"name":"Acme"}}}]}`))
		Expect(r.Status).To(Equal(http.StatusOK))
		msgs := since(acme, from)
		Expect(msgs[0].Message.UserID).To(Equal("42"))
		Expect(msgs[0].Message.GroupID).To(Equal("1001"))
		Expect(msgs[1].Message.Traits).To(MatchJSON(`{"company":{"id":1001,"name":"Acme"}}`))
		for _, m := range msgs {
			Expect(string(m.JSON)).NotTo(ContainSubstring(acmeKey))
		}
	})

	It("drops the source's ignored track events before JetStream and counts them", func() {
		ignoredBefore := testutil.ToFloat64(metrics.MessagesCounter("tenants/acme-web", "ignored"))
		from := mark(acme)
		r := post("/v1/batch", []byte(`{"batch":[
			{"type":"track","userId":"u1","event":"Heartbeat"},
			{"type":"track","userId":"u1","event":"Clicked"},
			{"type":"page","userId":"u1","name":"Heartbeat"}]}`), basic(acmeKey))
		Expect(r.Status).To(Equal(http.StatusOK))
		Expect(r.Body).To(Equal(success))
		var kept []string
		for _, m := range since(acme, from) {
			kept = append(kept, m.Message.Type+":"+m.Message.Event+m.Message.Name)
		}
		Expect(kept).To(Equal([]string{"track:Clicked", "page:Heartbeat"}))
		Expect(testutil.ToFloat64(metrics.MessagesCounter("tenants/acme-web", "ignored"))).To(Equal(ignoredBefore + 1))

		// A single ignored call is answered like any accepted one.
		Expect(post("/v1/track", []byte(`{"userId":"u1","event":"Heartbeat"}`), basic(acmeKey)).Body).To(Equal(success))
		Expect(mark(acme)).To(Equal(from + 2))
	})

	It("ignores an event only for the source that lists it", func() {
		from := mark(beta)
		Expect(post("/v1/track", []byte(`{"userId":"u1","event":"Heartbeat"}`), basic(betaKey)).Status).To(Equal(http.StatusOK))
		Expect(since(beta, from)).To(HaveLen(1))
	})

	It("sets Nats-Msg-Id so a retried message is stored once", func() {
		from := mark(acme)
		body := []byte(`{"batch":[{"type":"track","userId":"u1","event":"Retried","messageId":"retry-me-1"}]}`)
		for i := 0; i < 3; i++ {
			Expect(post("/v1/batch", body, basic(acmeKey)).Status).To(Equal(http.StatusOK), "a duplicate is acknowledged too")
		}
		msgs := since(acme, from)
		Expect(msgs).To(HaveLen(1))
		Expect(msgs[0].MsgID).To(Equal("retry-me-1"))
	})
})
