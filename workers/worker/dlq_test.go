package worker

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
)

var _ = Describe("Poison messages", func() {
	deadLetters := func(ctx context.Context, src *source.Config) []stream.DeadLetter {
		letters, err := stream.ListDeadLetters(ctx, js, src.Stream())
		Expect(err).NotTo(HaveOccurred())
		return letters
	}

	It("dead-letters the messages Postgres refuses, with their reason, and commits the rest of the batch", func(ctx SpecContext) {
		src := newSource(ctx, "")
		publish(ctx, src,
			track("t1", "u1", "Clicked", 1, nil, nil),
			track("t2", "u1", "Clicked", 2, nil, nil),
			identify("bad-nul", "u2", 3, map[string]any{"bio": "a\u0000b"}),
			track("t3", "u1", "Clicked", 4, nil, nil),
		)
		publishRaw(ctx, src, "track", "bad-range", []byte(`{"type":"track","messageId":"bad-range","userId":"u1","event":"Clicked",`+
			`"properties":{"huge":1e1000000},"timestamp":"`+at(5)+`","receivedAt":"`+at(6)+`"}`))
		publishRaw(ctx, src, "track", "bad-json", []byte(`{"type":"track",`))
		publish(ctx, src, track("t4", "u1", "Clicked", 7, nil, nil))
		startWorker(src, 100) // everything above arrives as one batch
		drained(ctx, src)

		Expect(queryRows(ctx, `SELECT message_id FROM tally.events WHERE tenant = $1 ORDER BY message_id`, src.Tenant)).To(Equal([]map[string]any{
			{"message_id": "t1"}, {"message_id": "t2"}, {"message_id": "t3"}, {"message_id": "t4"},
		}))
		Expect(queryRow(ctx, `SELECT count FROM tally.event_catalog WHERE tenant = $1 AND event = 'Clicked'`, src.Tenant)["count"]).To(BeEquivalentTo(4))
		Expect(queryRows(ctx, `SELECT 1 FROM tally.users WHERE tenant = $1 AND user_id = 'u2'`, src.Tenant)).To(BeEmpty())

		letters := deadLetters(ctx, src)
		Expect(letters).To(HaveLen(3))
		for _, l := range letters {
			Expect(l.Tenant).To(Equal(src.Tenant))
			Expect(l.OriginalSequence).NotTo(BeEmpty())
		}
		Expect(letters).To(ContainElement(And(
			HaveField("OriginalSubject", src.Stream().Subject("identify")),
			HaveField("Reason", ContainSubstring("22P05")), // unsupported Unicode escape sequence
		)))
		Expect(letters).To(ContainElement(And(
			HaveField("OriginalSubject", src.Stream().Subject("track")),
			HaveField("Reason", ContainSubstring("22003")), // numeric value out of range
		)))
		Expect(letters).To(ContainElement(HaveField("Reason", ContainSubstring("not a normalised Segment message"))))

		Expect(testutil.ToFloat64(testMetrics.deadLetters.WithLabelValues(src.String()))).To(BeEquivalentTo(3))
	})

	It("re-drives dead letters to their original subject and removes them from the dead-letter stream", func(ctx SpecContext) {
		src := newSource(ctx, "")
		startWorker(src, 100)
		// A message dead-lettered by some past failure that is fixed now.
		good := []byte(`{"type":"track","messageId":"redriven","userId":"u1","event":"Clicked","timestamp":"` + at(1) + `","receivedAt":"` + at(2) + `"}`)
		out := nats.NewMsg(src.Stream().DeadLetterSubject())
		out.Data = good
		out.Header.Set(stream.HeaderOriginalSubject, src.Stream().Subject("track"))
		out.Header.Set(stream.HeaderReason, "connection reset during a past deployment")
		_, err := js.PublishMsg(ctx, out)
		Expect(err).NotTo(HaveOccurred())
		// And one that Postgres will refuse again.
		publish(ctx, src, identify("bad-nul", "u2", 3, map[string]any{"bio": "a\u0000b"}))
		drained(ctx, src)
		letters := deadLetters(ctx, src)
		Expect(letters).To(HaveLen(2))

		for _, l := range letters {
			Expect(stream.Redrive(ctx, js, src.Stream(), l.Sequence)).To(Succeed())
		}
		Eventually(func() []map[string]any {
			return queryRows(ctx, `SELECT message_id FROM tally.events WHERE tenant = $1`, src.Tenant)
		}).WithTimeout(30 * time.Second).Should(Equal([]map[string]any{{"message_id": "redriven"}}))
		// The refused message went round once more and is back, alone, under a new sequence.
		Eventually(func() []string {
			var ids []string
			for _, l := range deadLetters(ctx, src) {
				ids = append(ids, fmt.Sprint(l.Sequence > letters[1].Sequence, " ", string(l.Data)[:40]))
			}
			return ids
		}).WithTimeout(30 * time.Second).Should(ConsistOf(HavePrefix("true {\"messageId\":\"bad-nul\"")))
	})
})
