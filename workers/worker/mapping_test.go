package worker

import (
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/test/testenv"
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
				{"message_id": "t-early", "account_id": nil},
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
			w, err := New(Options{Pool: pool, JetStream: js, Source: src, Logger: testenv.QuietLogger()})
			Expect(err).NotTo(HaveOccurred())
			Expect(markIgnored(ctx, pool, src.Tenant, src.IgnoredEvents, testBounds)).To(Succeed())
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
