package worker

import (
	"fmt"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

// last_seen_at is kept as a running maximum; these are the cases a maximum alone would get wrong.
var _ = Describe("last_seen_at", func() {
	It("counts events stored before their user or account existed", func(ctx SpecContext) {
		src := newSource(ctx, "")
		startWorker(src, 100)
		publish(ctx, src,
			track("t1", "u1", "Clicked", 50, nil, map[string]any{"groupId": "acme"}),
			track("t2", "u1", "Clicked", 40, nil, nil),
		)
		drained(ctx, src)
		Expect(queryRows(ctx, `SELECT 1 FROM tally.users WHERE tenant = $1`, src.Tenant)).To(BeEmpty())

		// Created later by older calls: the stored events are newer than anything in the calls.
		publish(ctx, src,
			identify("i1", "u1", 10, map[string]any{"plan": "pro"}),
			group("g1", "", "acme", 5, map[string]any{"name": "Acme"}),
		)
		drained(ctx, src)
		Expect(queryRow(ctx, `SELECT last_seen_at FROM tally.users WHERE tenant = $1 AND user_id = 'u1'`, src.Tenant)["last_seen_at"]).To(BeTemporally("==", ts(50)))
		Expect(queryRow(ctx, `SELECT last_seen_at FROM tally.accounts WHERE tenant = $1 AND account_id = 'acme'`, src.Tenant)["last_seen_at"]).To(BeTemporally("==", ts(50)))
	})

	It("raises last_seen_at of existing rows from events alone, never lowers it with an older event", func(ctx SpecContext) {
		src := newSource(ctx, "")
		startWorker(src, 100)
		publish(ctx, src, group("g1", "u1", "acme", 20, map[string]any{"name": "Acme"}))
		drained(ctx, src)
		publish(ctx, src, track("t1", "u1", "Clicked", 30, nil, nil), track("t0", "u1", "Clicked", 10, nil, nil))
		drained(ctx, src)
		Expect(queryRow(ctx, `SELECT last_seen_at FROM tally.users WHERE tenant = $1 AND user_id = 'u1'`, src.Tenant)["last_seen_at"]).To(BeTemporally("==", ts(30)))
		Expect(queryRow(ctx, `SELECT last_seen_at FROM tally.accounts WHERE tenant = $1 AND account_id = 'acme'`, src.Tenant)["last_seen_at"]).To(BeTemporally("==", ts(30)))
	})
})

var _ = Describe("The fallback account", func() {
	It("skips accounts whose newest change at the event's time is an unlink, however long the history", func(ctx SpecContext) {
		src := newSource(ctx, "")
		startWorker(src, 100)
		var calls []msg
		for i := range 20 { // a long history of repeated links to acme
			calls = append(calls, identify(fmt.Sprintf("i-acme-%d", i), "u1", float64(i), map[string]any{"company": map[string]any{"id": "acme"}}))
		}
		calls = append(calls,
			identify("i-globex", "u1", 30, map[string]any{"company": map[string]any{"id": "globex"}}),
			identify("i-initech", "u1", 31, map[string]any{"company": map[string]any{"id": "initech"}}),
			identify("i-initech-off", "u1", 32, map[string]any{"company": map[string]any{"id": "initech", "remove": true}}),
			identify("i-globex-off", "u1", 33, map[string]any{"company": map[string]any{"id": "globex", "remove": true}}),
			track("t-after-unlinks", "u1", "Clicked", 40, nil, nil),
			track("t-initech", "u1", "Clicked", 31.5, nil, nil),
			track("t-before-any", "u1", "Clicked", -1, nil, nil),
		)
		publish(ctx, src, calls...)
		drained(ctx, src)
		rows := queryRows(ctx, `SELECT message_id, account_id FROM tally.events WHERE tenant = $1 ORDER BY message_id`, src.Tenant)
		Expect(rows).To(Equal([]map[string]any{
			{"message_id": "t-after-unlinks", "account_id": "acme"},
			{"message_id": "t-before-any", "account_id": "acme"}, // before the first link: that link's account
			{"message_id": "t-initech", "account_id": "initech"},
		}))
	})
})
