package worker

import (
	"context"
	"encoding/json"
	"fmt"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tallyhq/tally/test/testenv"
	"github.com/tallyhq/tally/workers/source"
)

var _ = Describe("Mapping messages into the tally tables", func() {
	Describe("group", func() {
		It("creates a named account with its traits and links the calling user", func(ctx SpecContext) {
			src := newSource(ctx, "")
			startWorker(src, 100)
			publish(ctx, src, group("g1", "u1", "acme", 10, map[string]any{"name": "Acme Inc", "plan": "pro", "employees": 12}))
			drained(ctx, src)

			acc := queryRow(ctx, `SELECT name, traits, created_at, updated_at, last_seen_at FROM tally.accounts WHERE tenant = $1 AND account_id = 'acme'`, src.Tenant)
			Expect(acc["name"]).To(Equal("Acme Inc"))
			Expect(acc["traits"]).To(Equal(map[string]any{"name": "Acme Inc", "plan": "pro", "employees": float64(12)}))
			Expect(acc["created_at"]).To(BeTemporally("==", ts(10)))
			Expect(acc["last_seen_at"]).To(BeTemporally("==", ts(10)))
			link := queryRow(ctx, `SELECT linked, changed_at, last_associated_at FROM tally.account_users WHERE tenant = $1 AND account_id = 'acme' AND user_id = 'u1'`, src.Tenant)
			Expect(link["linked"]).To(BeTrue())
			Expect(link["changed_at"]).To(BeTemporally("==", ts(10)))
			Expect(link["last_associated_at"]).To(BeTemporally("==", ts(10)))
			Expect(queryRow(ctx, `SELECT count(*) AS n FROM tally.users WHERE tenant = $1 AND user_id = 'u1'`, src.Tenant)["n"]).To(BeEquivalentTo(1))
		})

		It("keeps an unknown account's traits without a name until a named call arrives, and the newest name wins", func(ctx SpecContext) {
			src := newSource(ctx, "")
			startWorker(src, 100)
			publish(ctx, src, group("g1", "", "acme", 10, map[string]any{"plan": "trial"}))
			drained(ctx, src)
			acc := queryRow(ctx, `SELECT name, traits FROM tally.accounts WHERE tenant = $1 AND account_id = 'acme'`, src.Tenant)
			Expect(acc["name"]).To(BeNil())
			Expect(acc["traits"]).To(Equal(map[string]any{"plan": "trial"}))

			// A newer named call names it; an older named call arriving afterwards does not rename it.
			publish(ctx, src,
				group("g3", "", "acme", 30, map[string]any{"name": "Acme New"}),
				group("g2", "", "acme", 20, map[string]any{"name": "Acme Old", "plan": "pro"}),
			)
			drained(ctx, src)
			acc = queryRow(ctx, `SELECT name, traits, created_at, updated_at FROM tally.accounts WHERE tenant = $1 AND account_id = 'acme'`, src.Tenant)
			Expect(acc["name"]).To(Equal("Acme New"))
			Expect(acc["traits"]).To(Equal(map[string]any{"name": "Acme New", "plan": "pro"}))
			Expect(acc["created_at"]).To(BeTemporally("==", ts(10)))
			Expect(acc["updated_at"]).To(BeTemporally("==", ts(30)))

			// A later call without a name leaves the name alone.
			publish(ctx, src, group("g4", "", "acme", 40, map[string]any{"plan": "enterprise"}))
			drained(ctx, src)
			Expect(queryRow(ctx, `SELECT name FROM tally.accounts WHERE tenant = $1 AND account_id = 'acme'`, src.Tenant)["name"]).To(Equal("Acme New"))
		})
	})

	Describe("identify", func() {
		It("merges traits the Segment way: null sets null, absent keeps, older never overwrites newer", func(ctx SpecContext) {
			src := newSource(ctx, "")
			startWorker(src, 100)
			publish(ctx, src, identify("i1", "u1", 10, map[string]any{"email": "a@x.io", "plan": "free", "age": 30}))
			drained(ctx, src)
			publish(ctx, src,
				identify("i3", "u1", 30, map[string]any{"plan": nil}),
				identify("i2", "u1", 20, map[string]any{"plan": "pro", "email": "b@x.io"}),
			)
			drained(ctx, src)
			u := queryRow(ctx, `SELECT traits, created_at, updated_at, last_seen_at FROM tally.users WHERE tenant = $1 AND user_id = 'u1'`, src.Tenant)
			Expect(u["traits"]).To(Equal(map[string]any{"email": "b@x.io", "plan": nil, "age": float64(30)}))
			Expect(u["created_at"]).To(BeTemporally("==", ts(10)))
			Expect(u["updated_at"]).To(BeTemporally("==", ts(30)))
			Expect(u["last_seen_at"]).To(BeTemporally("==", ts(30)))
		})

		It("does not count an identify with context.active false as activity", func(ctx SpecContext) {
			src := newSource(ctx, "")
			startWorker(src, 100)
			passive := identify("i2", "u1", 50, map[string]any{"plan": "pro"})
			passive["context"] = map[string]any{"active": false}
			publish(ctx, src, identify("i1", "u1", 10, nil), passive)
			drained(ctx, src)
			u := queryRow(ctx, `SELECT traits, last_seen_at FROM tally.users WHERE tenant = $1 AND user_id = 'u1'`, src.Tenant)
			Expect(u["traits"]).To(Equal(map[string]any{"plan": "pro"}))
			Expect(u["last_seen_at"]).To(BeTemporally("==", ts(10)))
		})

		It("links a user through traits.company with a numeric id, creating the account when the company has a name", func(ctx SpecContext) {
			src := newSource(ctx, "")
			startWorker(src, 100)
			publish(ctx, src,
				identify("i1", "u1", 10, map[string]any{"company": map[string]any{"id": 12345, "name": "Numeric Co", "plan": "pro"}}),
				identify("i2", "u2", 11, map[string]any{"company": map[string]any{"id": "12345"}}),
				identify("i3", "u3", 12, map[string]any{"company": map[string]any{"id": 777}}),
			)
			drained(ctx, src)
			acc := queryRow(ctx, `SELECT name, traits FROM tally.accounts WHERE tenant = $1 AND account_id = '12345'`, src.Tenant)
			Expect(acc["name"]).To(Equal("Numeric Co"))
			Expect(acc["traits"]).To(Equal(map[string]any{"name": "Numeric Co", "plan": "pro"}))
			links := queryRows(ctx, `SELECT account_id, user_id, linked FROM tally.account_users WHERE tenant = $1 ORDER BY user_id`, src.Tenant)
			Expect(links).To(Equal([]map[string]any{
				{"account_id": "12345", "user_id": "u1", "linked": true},
				{"account_id": "12345", "user_id": "u2", "linked": true},
				{"account_id": "777", "user_id": "u3", "linked": true},
			}))
			// A company without a name links, but creates no account.
			Expect(queryRows(ctx, `SELECT 1 FROM tally.accounts WHERE tenant = $1 AND account_id = '777'`, src.Tenant)).To(BeEmpty())
			// The user keeps company as a trait, like any other.
			u := queryRow(ctx, `SELECT traits FROM tally.users WHERE tenant = $1 AND user_id = 'u3'`, src.Tenant)
			Expect(u["traits"]).To(HaveKey("company"))
		})

		It("unlinks with company.remove true or \"true\" and keeps no remove marker in the user's company trait", func(ctx SpecContext) {
			src := newSource(ctx, "")
			startWorker(src, 100)
			publish(ctx, src,
				identify("i1", "u1", 10, map[string]any{"company": map[string]any{"id": "acme", "name": "Acme"}}),
				identify("i2", "u1", 20, map[string]any{"company": map[string]any{"id": "acme", "remove": "true"}}),
				identify("i3", "u2", 10, map[string]any{"company": map[string]any{"id": "acme"}}),
				identify("i4", "u2", 20, map[string]any{"company": map[string]any{"id": "acme", "remove": true}}),
				identify("i5", "u3", 20, map[string]any{"company": map[string]any{"id": "acme", "remove": "no"}}),
			)
			drained(ctx, src)
			Expect(queryRows(ctx, `SELECT user_id, linked FROM tally.account_users WHERE tenant = $1 ORDER BY user_id`, src.Tenant)).To(Equal([]map[string]any{
				{"user_id": "u1", "linked": false},
				{"user_id": "u2", "linked": false},
				{"user_id": "u3", "linked": true},
			}))
			Expect(queryRows(ctx, `SELECT user_id, traits->'company' AS company FROM tally.users WHERE tenant = $1 ORDER BY user_id`, src.Tenant)).To(Equal([]map[string]any{
				{"user_id": "u1", "company": map[string]any{"id": "acme"}},
				{"user_id": "u2", "company": map[string]any{"id": "acme"}},
				{"user_id": "u3", "company": map[string]any{"id": "acme"}},
			}))
		})

		DescribeTable("unlinks with company.remove and relinks, whatever order the calls arrive in",
			func(ctx SpecContext, order []string) {
				src := newSource(ctx, "")
				startWorker(src, 1)
				calls := map[string]msg{
					"link":   identify("i-link", "u1", 10, map[string]any{"company": map[string]any{"id": "acme", "name": "Acme"}}),
					"unlink": identify("i-unlink", "u1", 20, map[string]any{"company": map[string]any{"id": "acme", "remove": true}}),
				}
				for _, name := range order {
					publish(ctx, src, calls[name])
					drained(ctx, src)
				}
				link := queryRow(ctx, `SELECT linked, changed_at, last_associated_at FROM tally.account_users WHERE tenant = $1`, src.Tenant)
				Expect(link["linked"]).To(BeFalse())
				Expect(link["changed_at"]).To(BeTemporally("==", ts(20)))
				Expect(link["last_associated_at"]).To(BeTemporally("==", ts(10)))

				publish(ctx, src, identify("i-relink", "u1", 30, map[string]any{"company": map[string]any{"id": "acme"}}))
				drained(ctx, src)
				link = queryRow(ctx, `SELECT linked, changed_at, last_associated_at FROM tally.account_users WHERE tenant = $1`, src.Tenant)
				Expect(link["linked"]).To(BeTrue())
				Expect(link["changed_at"]).To(BeTemporally("==", ts(30)))
				Expect(link["last_associated_at"]).To(BeTemporally("==", ts(30)))
			},
			Entry("link first", []string{"link", "unlink"}),
			Entry("unlink first", []string{"unlink", "link"}),
		)
	})

	Describe("track", func() {
		It("takes the account from context.groupId, then the account property, then the user's association at the event's time", func(ctx SpecContext) {
			src := newSource(ctx, "accountId")
			startWorker(src, 100)
			publish(ctx, src,
				group("g1", "u1", "acme", 10, map[string]any{"name": "Acme"}),
				group("g2", "u1", "globex", 20, map[string]any{"name": "Globex"}),
				track("t-ctx", "u1", "Clicked", 30, map[string]any{"accountId": "initech"}, map[string]any{"groupId": "hooli"}),
				track("t-prop", "u1", "Clicked", 31, map[string]any{"accountId": "initech"}, nil),
				track("t-num", "u1", "Clicked", 32, map[string]any{"accountId": 42}, nil),
				track("t-late", "u1", "Clicked", 33, nil, nil),
				track("t-mid", "u1", "Clicked", 15, nil, nil),
				track("t-early", "u1", "Clicked", 5, nil, nil),
				track("t-anon", "", "Clicked", 34, nil, nil),
			)
			drained(ctx, src)
			rows := queryRows(ctx, `SELECT message_id, account_id FROM tally.events WHERE tenant = $1 ORDER BY message_id`, src.Tenant)
			Expect(rows).To(Equal([]map[string]any{
				{"message_id": "t-anon", "account_id": nil},
				{"message_id": "t-ctx", "account_id": "hooli"},
				{"message_id": "t-early", "account_id": "acme"}, // before the first link: that link's account
				{"message_id": "t-late", "account_id": "globex"},
				{"message_id": "t-mid", "account_id": "acme"},
				{"message_id": "t-num", "account_id": "42"},
				{"message_id": "t-prop", "account_id": "initech"},
			}))
		})

		It("re-resolves stored fallback events when an older association arrives later", func(ctx SpecContext) {
			src := newSource(ctx, "")
			startWorker(src, 100)
			publish(ctx, src, group("g1", "u1", "acme", 10, map[string]any{"name": "Acme"}), track("t1", "u1", "Clicked", 30, nil, nil))
			drained(ctx, src)
			Expect(queryRow(ctx, `SELECT account_id FROM tally.events WHERE tenant = $1 AND message_id = 't1'`, src.Tenant)["account_id"]).To(Equal("acme"))
			Expect(queryRow(ctx, `SELECT last_seen_at FROM tally.accounts WHERE tenant = $1 AND account_id = 'acme'`, src.Tenant)["last_seen_at"]).To(BeTemporally("==", ts(30)))

			// Arriving late, a link to globex at 20 is the user's most recent association at 30.
			publish(ctx, src, group("g2", "u1", "globex", 20, map[string]any{"name": "Globex"}))
			drained(ctx, src)
			Expect(queryRow(ctx, `SELECT account_id FROM tally.events WHERE tenant = $1 AND message_id = 't1'`, src.Tenant)["account_id"]).To(Equal("globex"))
			Expect(queryRow(ctx, `SELECT last_seen_at FROM tally.accounts WHERE tenant = $1 AND account_id = 'acme'`, src.Tenant)["last_seen_at"]).To(BeTemporally("==", ts(10)))
			Expect(queryRow(ctx, `SELECT last_seen_at FROM tally.accounts WHERE tenant = $1 AND account_id = 'globex'`, src.Tenant)["last_seen_at"]).To(BeTemporally("==", ts(30)))

			// An unlink from globex at 25 makes acme the account at 30 again.
			publish(ctx, src, identify("i1", "u1", 25, map[string]any{"company": map[string]any{"id": "globex", "remove": true}}))
			drained(ctx, src)
			Expect(queryRow(ctx, `SELECT account_id FROM tally.events WHERE tenant = $1 AND message_id = 't1'`, src.Tenant)["account_id"]).To(Equal("acme"))
		})

		It("stores page and screen calls as events of their type named after the page or screen", func(ctx SpecContext) {
			src := newSource(ctx, "")
			startWorker(src, 100)
			publish(ctx, src,
				msg{"type": "page", "messageId": "p1", "userId": "u1", "name": "Pricing", "properties": map[string]any{"path": "/pricing"}, "timestamp": at(1), "receivedAt": at(2)},
				msg{"type": "screen", "messageId": "s1", "anonymousId": "anon1", "name": "Home", "timestamp": at(3), "receivedAt": at(4)},
			)
			drained(ctx, src)
			rows := queryRows(ctx, `SELECT message_id, type, event, user_id, anonymous_id, properties, source FROM tally.events WHERE tenant = $1 ORDER BY message_id`, src.Tenant)
			Expect(rows).To(Equal([]map[string]any{
				{"message_id": "p1", "type": "page", "event": "Pricing", "user_id": "u1", "anonymous_id": nil, "properties": map[string]any{"path": "/pricing"}, "source": src.String()},
				{"message_id": "s1", "type": "screen", "event": "Home", "user_id": nil, "anonymous_id": "anon1", "properties": map[string]any{}, "source": src.String()},
			}))
			// Pages are not product events: the catalog lists track events only.
			Expect(queryRows(ctx, `SELECT event FROM tally.event_catalog WHERE tenant = $1`, src.Tenant)).To(BeEmpty())
		})
	})

	It("records an alias from the previous id to the user id", func(ctx SpecContext) {
		src := newSource(ctx, "")
		startWorker(src, 100)
		publish(ctx, src, msg{"type": "alias", "messageId": "a1", "userId": "u1", "previousId": "anon-9", "timestamp": at(5), "receivedAt": at(6)})
		drained(ctx, src)
		Expect(queryRows(ctx, `SELECT previous_id, user_id FROM tally.aliases WHERE tenant = $1`, src.Tenant)).To(Equal([]map[string]any{
			{"previous_id": "anon-9", "user_id": "u1"},
		}))
	})

	Describe("the account property", func() {
		It("reads a dotted name as a path into properties, preferring a property whose own name has the dot", func(ctx SpecContext) {
			src := newSource(ctx, "account.id")
			startWorker(src, 100)
			publish(ctx, src,
				track("t-path", "u9", "E", 1, map[string]any{"account": map[string]any{"id": "acme"}}, nil),
				track("t-key", "u9", "E", 2, map[string]any{"account.id": "globex"}, nil),
				track("t-both", "u9", "E", 3, map[string]any{"account.id": "globex", "account": map[string]any{"id": "acme"}}, nil),
				track("t-null-key", "u9", "E", 4, map[string]any{"account.id": nil, "account": map[string]any{"id": "acme"}}, nil),
				track("t-num", "u9", "E", 5, map[string]any{"account": map[string]any{"id": json.Number("42.0")}}, nil),
				track("t-none", "u9", "E", 6, map[string]any{"account": "acme"}, nil),
			)
			drained(ctx, src)
			Expect(eventAccounts(ctx, src)).To(Equal(map[string]any{
				"t-path": "acme", "t-key": "globex", "t-both": "globex", "t-null-key": "acme", "t-num": "42", "t-none": nil,
			}))
		})
	})

	Describe("the fallback account before a user's first link", func() {
		calls := map[string]msg{
			"t1":  track("t1", "u1", "Signed Up", 1, nil, nil),
			"t5":  track("t5", "u1", "Onboarded", 5, nil, nil),
			"t15": track("t15", "u1", "Clicked", 15, nil, nil),
			"t25": track("t25", "u1", "Clicked", 25, nil, nil),
			"g3":  group("g3", "u1", "initech", 3, map[string]any{"name": "Initech"}),
			"g10": group("g10", "u1", "acme", 10, map[string]any{"name": "Acme"}),
			"g20": group("g20", "u1", "globex", 20, map[string]any{"name": "Globex"}),
			// u2 is unlinked before ever being linked, then linked and unlinked again.
			"u2-off2":  identify("u2-off2", "u2", 2, map[string]any{"company": map[string]any{"id": "acme", "remove": true}}),
			"u2-on10":  identify("u2-on10", "u2", 10, map[string]any{"company": map[string]any{"id": "acme"}}),
			"u2-off20": identify("u2-off20", "u2", 20, map[string]any{"company": map[string]any{"id": "acme", "remove": true}}),
			"u2-t1":    track("u2-t1", "u2", "Signed Up", 1, nil, nil),
			"u2-t3":    track("u2-t3", "u2", "Onboarded", 3, nil, nil),
			"u2-t25":   track("u2-t25", "u2", "Clicked", 25, nil, nil),
		}
		DescribeTable("is that link's account, a track after links keeps the account at its time, whatever the order",
			func(ctx SpecContext, order []string) {
				src := newSource(ctx, "")
				startWorker(src, 1)
				publishInOrder(ctx, src, calls, order...)
				Expect(eventAccounts(ctx, src)).To(Equal(map[string]any{
					"t1": "initech", "t5": "initech", "t15": "acme", "t25": "globex",
					"u2-t1": "acme", "u2-t3": "acme", "u2-t25": nil,
				}))
				// last_seen_at follows the events wherever a late first link moved them.
				Expect(lastSeen(ctx, src, "accounts", "account_id")).To(Equal(map[string]float64{"acme": 15, "globex": 25, "initech": 5}))
			},
			Entry("tracks first", []string{"t1", "t5", "t15", "t25", "u2-t1", "u2-t3", "u2-t25", "g3", "g10", "g20", "u2-off2", "u2-on10", "u2-off20"}),
			Entry("links first", []string{"g20", "g10", "g3", "u2-off20", "u2-on10", "u2-off2", "t25", "t15", "t5", "t1", "u2-t25", "u2-t3", "u2-t1"}),
			Entry("the first link last", []string{"g10", "t1", "t5", "t25", "u2-off2", "u2-t1", "g20", "t15", "u2-t3", "u2-off20", "u2-t25", "u2-on10", "g3"}),
		)
	})

	Describe("ids sent as numbers", func() {
		It("are one account whether they arrive as groupId, traits.company.id, context.groupId or the account property", func(ctx SpecContext) {
			src := newSource(ctx, "accountId")
			startWorker(src, 100)
			publish(ctx, src,
				group("g1", "", "12345", 10, map[string]any{"name": "Numeric"}), // the receiver forwards groupId 12345.0 as "12345"
				identify("i1", "u1", 11, map[string]any{"company": map[string]any{"id": json.Number("12345.0")}}),
				track("t-ctx", "u2", "E", 12, nil, map[string]any{"groupId": json.Number("12345.0")}),
				track("t-prop", "u2", "E", 13, map[string]any{"accountId": json.Number("1.2345e4")}, nil),
				group("g2", "u3", "12345", 14, map[string]any{"plan": "pro"}),
				group("g3", "", "2.5", 15, map[string]any{"name": "Fraction"}),
				track("t-frac", "u2", "E", 16, nil, map[string]any{"groupId": 2.5}),
			)
			drained(ctx, src)
			Expect(queryRows(ctx, `SELECT account_id, name, traits FROM tally.accounts WHERE tenant = $1 ORDER BY account_id`, src.Tenant)).To(Equal([]map[string]any{
				{"account_id": "12345", "name": "Numeric", "traits": map[string]any{"name": "Numeric", "plan": "pro"}},
				{"account_id": "2.5", "name": "Fraction", "traits": map[string]any{"name": "Fraction"}},
			}))
			Expect(queryRows(ctx, `SELECT account_id, user_id FROM tally.account_users WHERE tenant = $1 ORDER BY user_id`, src.Tenant)).To(Equal([]map[string]any{
				{"account_id": "12345", "user_id": "u1"},
				{"account_id": "12345", "user_id": "u3"},
			}))
			Expect(eventAccounts(ctx, src)).To(Equal(map[string]any{"t-ctx": "12345", "t-prop": "12345", "t-frac": "2.5"}))
		})
	})

	Describe("unnamed accounts", func() {
		It("are counted once per account created without a name, per source, and reported per tenant", func(ctx SpecContext) {
			src := newSource(ctx, "")
			other := newSource(ctx, "")
			startWorker(src, 100)
			startWorker(other, 100)
			unnamed := func() float64 { return testutil.ToFloat64(testMetrics.unnamed.WithLabelValues(src.String())) }
			first := group("g1", "", "acme", 10, map[string]any{"plan": "trial"})
			publish(ctx, src,
				first,
				group("g2", "u1", "globex", 11, map[string]any{"name": "Globex"}),
				identify("i1", "u1", 12, map[string]any{"company": map[string]any{"id": "hooli"}}), // links, creates nothing
				group("g3", "", "initech", 13, nil),
			)
			publish(ctx, other, group("o1", "", "acme", 10, map[string]any{"name": "Acme"}))
			drained(ctx, src)
			drained(ctx, other)
			Expect(unnamed()).To(BeEquivalentTo(2))
			Expect(UnnamedAccounts(ctx, testPool, src.Tenant)).To(BeEquivalentTo(2))

			// Named later: no longer unnamed, still counted as created unnamed; a redelivery adds nothing.
			publish(ctx, src, group("g4", "", "initech", 20, map[string]any{"name": "Initech"}))
			data, err := json.Marshal(first)
			Expect(err).NotTo(HaveOccurred())
			publishRaw(ctx, src, "group", "g1-redelivered", data)
			drained(ctx, src)
			Expect(unnamed()).To(BeEquivalentTo(2))
			Expect(UnnamedAccounts(ctx, testPool, src.Tenant)).To(BeEquivalentTo(1))
			Expect(UnnamedAccounts(ctx, testPool, other.Tenant)).To(BeZero())
			Expect(testutil.ToFloat64(testMetrics.unnamed.WithLabelValues(other.String()))).To(BeZero())
		})
	})

	Describe("identity stitching", func() {
		calls := map[string]msg{
			"link":     group("g1", "u1", "acme", 1, map[string]any{"name": "Acme"}),
			"tie":      withAnonymousID(identify("i1", "u1", 10, nil), "anon-1"),
			"late-tie": withAnonymousID(identify("i2", "u3", 20, nil), "anon-1"), // a newer tie of the same anonymousId: loses
			"alias":    {"type": "alias", "messageId": "a1", "userId": "u2", "previousId": "anon-2", "timestamp": at(10), "receivedAt": at(11)},
			"track":    anonymousTrack("t-anon", "anon-1", 30, nil),
			"page":     {"type": "page", "messageId": "p-anon", "anonymousId": "anon-1", "name": "Pricing", "timestamp": at(6), "receivedAt": at(7)},
			"ctx":      anonymousTrack("t-ctx", "anon-1", 7, map[string]any{"groupId": "hooli"}),
			"aliased":  anonymousTrack("t-aliased", "anon-2", 4, nil),
			"untied":   anonymousTrack("t-untied", "anon-9", 5, nil),
		}
		DescribeTable("attributes anonymous events to the user their anonymousId is first tied to, whatever the order",
			func(ctx SpecContext, order []string) {
				src := newSource(ctx, "")
				startWorker(src, 1)
				publishInOrder(ctx, src, calls, order...)
				Expect(queryRows(ctx, `SELECT message_id, anonymous_id, user_id, account_id FROM tally.events WHERE tenant = $1 ORDER BY message_id`, src.Tenant)).To(Equal([]map[string]any{
					{"message_id": "p-anon", "anonymous_id": "anon-1", "user_id": "u1", "account_id": "acme"},
					{"message_id": "t-aliased", "anonymous_id": "anon-2", "user_id": "u2", "account_id": nil},
					{"message_id": "t-anon", "anonymous_id": "anon-1", "user_id": "u1", "account_id": "acme"},
					{"message_id": "t-ctx", "anonymous_id": "anon-1", "user_id": "u1", "account_id": "hooli"},
					{"message_id": "t-untied", "anonymous_id": "anon-9", "user_id": nil, "account_id": nil},
				}))
				// last_seen_at counts the stitched events, and drops them from a user that lost the tie.
				Expect(lastSeen(ctx, src, "users", "user_id")).To(Equal(map[string]float64{"u1": 30, "u3": 20}))
				Expect(lastSeen(ctx, src, "accounts", "account_id")).To(Equal(map[string]float64{"acme": 30}))
			},
			Entry("ties first", []string{"link", "tie", "late-tie", "alias", "track", "page", "ctx", "aliased", "untied"}),
			Entry("events first", []string{"track", "page", "ctx", "aliased", "untied", "late-tie", "alias", "tie", "link"}),
			Entry("the losing tie first", []string{"late-tie", "track", "page", "ctx", "link", "tie", "aliased", "alias", "untied"}),
		)
	})

	Describe("event_catalog", func() {
		It("counts each event once per messageId, keeps first and last seen, and marks ignored events", func(ctx SpecContext) {
			src := newSource(ctx, "", "Heartbeat")
			startWorker(src, 100)
			first := track("t1", "u1", "Signed In", 10, nil, nil)
			publish(ctx, src, first, track("t2", "u1", "Signed In", 20, nil, nil))
			drained(ctx, src)
			// The same message again, e.g. a client retry after the stream's duplicate window.
			data := []byte(`{"type":"track","messageId":"t1","userId":"u1","event":"Signed In","timestamp":"` + at(10) + `","receivedAt":"` + at(99) + `"}`)
			publishRaw(ctx, src, "track", "retry-of-t1", data)
			drained(ctx, src)

			rows := queryRows(ctx, `SELECT event, first_seen_at, last_seen_at, count, ignored FROM tally.event_catalog WHERE tenant = $1 ORDER BY event`, src.Tenant)
			Expect(rows).To(HaveLen(2))
			Expect(rows[0]).To(Equal(map[string]any{"event": "Heartbeat", "first_seen_at": nil, "last_seen_at": nil, "count": int64(0), "ignored": true}))
			Expect(rows[1]["event"]).To(Equal("Signed In"))
			Expect(rows[1]["count"]).To(BeEquivalentTo(2))
			Expect(rows[1]["ignored"]).To(BeFalse())
			Expect(rows[1]["first_seen_at"]).To(BeTemporally("==", ts(10)))
			Expect(rows[1]["last_seen_at"]).To(BeTemporally("==", ts(20)))
			Expect(queryRow(ctx, `SELECT count(*) AS n FROM tally.events WHERE tenant = $1`, src.Tenant)["n"]).To(BeEquivalentTo(2))
		})

		It("never stores an ignored event that reached the stream before it was ignored", func(ctx SpecContext) {
			src := newSource(ctx, "", "Heartbeat")
			startWorker(src, 100)
			publish(ctx, src, track("h1", "u1", "Heartbeat", 10, nil, nil), track("s1", "u1", "Signed In", 11, nil, nil))
			drained(ctx, src)
			Expect(queryRows(ctx, `SELECT message_id FROM tally.events WHERE tenant = $1`, src.Tenant)).To(Equal([]map[string]any{
				{"message_id": "s1"},
			}))
		})

		It("follows a change of ignoredEvents without a restart", func(ctx SpecContext) {
			src := newSource(ctx, "", "Heartbeat")
			w, err := New(Options{Pool: testPool, JetStream: js, Source: src, Logger: testenv.QuietLogger()})
			Expect(err).NotTo(HaveOccurred())
			Expect(markIgnored(ctx, testPool, src.Tenant, src.IgnoredEvents, testBounds)).To(Succeed())
			changed := *src
			changed.IgnoredEvents = []string{"Ping"}
			Expect(w.UpdateSource(ctx, &changed)).To(Succeed())
			Expect(queryRows(ctx, `SELECT event, ignored FROM tally.event_catalog WHERE tenant = $1 ORDER BY event`, src.Tenant)).To(Equal([]map[string]any{
				{"event": "Heartbeat", "ignored": false},
				{"event": "Ping", "ignored": true},
			}))
		})
	})
})

// publishInOrder publishes the named calls one at a time, each mapped before the next is sent.
func publishInOrder(ctx context.Context, src *source.Config, calls map[string]msg, order ...string) {
	Expect(order).To(ConsistOf(keysOf(calls)), "every call exactly once")
	for _, name := range order {
		publish(ctx, src, calls[name])
		drained(ctx, src)
	}
}

func keysOf(m map[string]msg) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	return keys
}

// eventAccounts maps each of src's events to its account.
func eventAccounts(ctx context.Context, src *source.Config) map[string]any {
	out := map[string]any{}
	for _, r := range queryRows(ctx, `SELECT message_id, account_id FROM tally.events WHERE tenant = $1`, src.Tenant) {
		out[r["message_id"].(string)] = r["account_id"]
	}
	return out
}

func withAnonymousID(m msg, anonymousID string) msg {
	m["anonymousId"] = anonymousID
	return m
}

// anonymousTrack is a track sent with only an anonymousId.
func anonymousTrack(id, anonymousID string, ts float64, context map[string]any) msg {
	return withAnonymousID(track(id, "", "Clicked", ts, nil, context), anonymousID)
}

// lastSeen maps each row of src's table to its last_seen_at, in seconds after baseTime (as ts).
func lastSeen(ctx context.Context, src *source.Config, table, idColumn string) map[string]float64 {
	out := map[string]float64{}
	for _, r := range queryRows(ctx, fmt.Sprintf(`SELECT %s AS id, extract(epoch FROM last_seen_at - $2::timestamptz)::float8 AS s
		FROM tally.%s WHERE tenant = $1`, idColumn, table), src.Tenant, baseTime) {
		out[r["id"].(string)] = r["s"].(float64)
	}
	return out
}
