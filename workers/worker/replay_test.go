package worker

import (
	"encoding/json"
	"slices"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/workers/segment"
)

// A Segment replay resends months of archived history, in any order, while live traffic goes on:
// it must leave the tables exactly as one in-order live delivery did.
var _ = Describe("Replays", func() {
	It("of months of forwarded history, reversed and interleaved with live delivery, give the rows of one in-order delivery", func(ctx SpecContext) {
		generated := generateMessages(11, 160)
		// As Segment forwards them: the generated seconds become days (four months of history),
		// with Segment's own receivedAt, sentAt and originalTimestamp beside the timestamp it computed.
		bodies := make([][]byte, len(generated))
		delivered := make([]time.Time, len(generated))
		for i, data := range generated {
			var m map[string]any
			Expect(json.Unmarshal(data, &m)).To(Succeed())
			ts, err := time.Parse(time.RFC3339Nano, m["timestamp"].(string))
			Expect(err).NotTo(HaveOccurred())
			at := baseTime.Add(ts.Sub(baseTime) * 86400 * 3)
			delivered[i] = at.Add(time.Second)
			m["timestamp"], m["originalTimestamp"], m["sentAt"] = at.Format(time.RFC3339Nano), at.Format(time.RFC3339Nano), at.Format(time.RFC3339Nano)
			m["receivedAt"], m["projectId"], m["version"] = delivered[i].Format(time.RFC3339Nano), "q5Vb3pPT3d", 2
			bodies[i], err = json.Marshal(m)
			Expect(err).NotTo(HaveOccurred())
		}
		first, last := slices.MinFunc(delivered, time.Time.Compare), slices.MaxFunc(delivered, time.Time.Compare)
		Expect(last.Sub(first)).To(BeNumerically(">", 60*24*time.Hour), "the history spans months")
		// What the receiver's destination route stores, received then (live) or today (replay);
		// the generator's messages Segment would not forward (a group without a user) are left out.
		normalizedAt := func(body []byte, received time.Time) []byte {
			req, err := segment.ParseRequest(body, segment.Endpoint{Destination: true})
			Expect(err).NotTo(HaveOccurred())
			res := req.Normalize(received)
			if len(res.Accepted) == 0 {
				return nil
			}
			return res.Accepted[0].JSON
		}
		var live, replayed [][]byte
		for i, body := range bodies {
			if m := normalizedAt(body, delivered[i]); m != nil {
				live = append(live, m)
				replayed = append(replayed, normalizedAt(body, time.Now()))
			}
		}
		Expect(len(live)).To(BeNumerically(">", 120))

		applyDirect(ctx, "replay-live", live, 1, len(live), nil)
		want := dumpTenant(ctx, "replay-live")

		By("live delivery reached the middle of history when the replay of all of it arrived, newest first")
		half := len(live) / 2
		applyDirect(ctx, "replay-interleaved", live[:half], 1, 10, nil)
		reversed := slices.Clone(replayed)
		slices.Reverse(reversed)
		interleaved := make([][]byte, 0, len(reversed)+len(live)-half)
		for i, m := range reversed { // the rest of live traffic keeps arriving during the replay
			interleaved = append(interleaved, m)
			if half+i < len(live) {
				interleaved = append(interleaved, live[half+i])
			}
		}
		applyDirect(ctx, "replay-interleaved", interleaved, 2, 10, nil)
		Expect(dumpTenant(ctx, "replay-interleaved")).To(Equal(want))
	})
})
