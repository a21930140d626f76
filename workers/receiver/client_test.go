package receiver_test

import (
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	analytics "github.com/segmentio/analytics-go/v3"
)

// callback records what analytics-go reports per message.
type callback struct {
	mu       sync.Mutex
	ok       int
	failures []error
}

func (c *callback) Success(analytics.Message) { c.mu.Lock(); c.ok++; c.mu.Unlock() }
func (c *callback) Failure(_ analytics.Message, err error) {
	c.mu.Lock()
	c.failures = append(c.failures, err)
	c.mu.Unlock()
}

var _ = Describe("The real analytics-go client", func() {
	It("sends through the receiver into the stream, normalised", func() {
		from := mark(acme)
		cb := &callback{}
		client, err := analytics.NewWithConfig(acmeKey, analytics.Config{
			Endpoint: srv.URL, BatchSize: 2, Interval: 50 * time.Millisecond, Callback: cb,
		})
		Expect(err).NotTo(HaveOccurred())
		eventAt := time.Now().Add(-time.Minute)
		Expect(client.Enqueue(analytics.Identify{UserId: "go-user", Traits: analytics.NewTraits().SetEmail("go@example.com").Set("company", map[string]any{"id": 7, "name": "Acme"})})).To(Succeed())
		Expect(client.Enqueue(analytics.Group{UserId: "go-user", GroupId: "go-account", Traits: analytics.NewTraits().SetName("Go Account")})).To(Succeed())
		Expect(client.Enqueue(analytics.Track{UserId: "go-user", Event: "Report Exported", Timestamp: eventAt,
			Properties: analytics.NewProperties().Set("rows", 3), Context: &analytics.Context{GroupID: "go-account"}})).To(Succeed())
		Expect(client.Enqueue(analytics.Track{UserId: "go-user", Event: "Heartbeat"})).To(Succeed())
		Expect(client.Enqueue(analytics.Page{UserId: "go-user", Name: "Dashboard"})).To(Succeed())
		Expect(client.Enqueue(analytics.Alias{PreviousId: "anon-1", UserId: "go-user"})).To(Succeed())
		Expect(client.Close()).To(Succeed()) // flushes

		Expect(cb.failures).To(BeEmpty())
		Expect(cb.ok).To(Equal(6))
		msgs := since(acme, from)
		byType := map[string]stored{}
		for _, m := range msgs {
			byType[m.Message.Type] = m
			Expect(m.MsgID).To(Equal(m.Message.MessageID))
			// analytics-go puts context.library only at the batch level.
			Expect(m.Message.Context).To(ContainSubstring(`"analytics-go"`))
			Expect(m.Message.SentAt).NotTo(BeNil())
		}
		Expect(msgs).To(HaveLen(5), "the Heartbeat track event is ignored")
		Expect(byType).To(HaveKey("identify"))
		Expect(byType["identify"].Message.Traits).To(MatchJSON(`{"email":"go@example.com","company":{"id":7,"name":"Acme"}}`))
		Expect(byType["group"].Message.GroupID).To(Equal("go-account"))
		track := byType["track"].Message
		Expect(track.Event).To(Equal("Report Exported"))
		Expect(track.Context).To(ContainSubstring(`"groupId":"go-account"`))
		// Same clock on both sides: the corrected time is within the request's transit of the real one.
		Expect(track.Timestamp).To(BeTemporally("~", eventAt, 2*time.Second))
		Expect(byType["page"].Message.Name).To(Equal("Dashboard"))
		Expect(byType["alias"].Message.PreviousID).To(Equal("anon-1"))
	})
})
