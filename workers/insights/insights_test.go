package insights_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/workers/insights"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/worker"
)

const day = 24 * time.Hour

// dataSet sends the spec's known data set, relative to n, through the receiver and workers:
//
//	acc-1 (Acme): u1, u2 linked; u3 linked, then unlinked
//	acc-2 (Globex): u4, u2 linked (u2 is in two accounts)
//	acc-3 (Initech): nobody
//	u5: no account
//	events: u1 in acc-1 at n-1d, n-10d, n-40d and n+1h (dated in the future: in no window yet);
//	u2 in acc-2 at n-20d; u3 (unlinked) in acc-1 at n-2d; u5 without account at n-3d
func dataSet(ctx context.Context, src *source.Config, n time.Time) {
	old := n.Add(-50 * day)
	send(ctx, src,
		group("g1", "u1", "acc-1", old, map[string]any{"name": "Acme"}),
		group("g2", "u2", "acc-1", old, nil),
		group("g3", "u3", "acc-1", old, nil),
		identify("i3", "u3", n.Add(-45*day), map[string]any{"company": map[string]any{"id": "acc-1", "remove": true}}),
		group("g4", "u4", "acc-2", old, map[string]any{"name": "Globex"}),
		group("g5", "u2", "acc-2", old, nil),
		group("g6", "", "acc-3", old, map[string]any{"name": "Initech"}),
		identify("i5", "u5", old, map[string]any{"email": "u5@example.test"}),
		track("t1", "u1", "acc-1", n.Add(-1*day)),
		track("t2", "u1", "acc-1", n.Add(-10*day)),
		track("t3", "u1", "acc-1", n.Add(-40*day)),
		track("t4", "u2", "acc-2", n.Add(-20*day)),
		track("t5", "u3", "acc-1", n.Add(-2*day)),
		track("t6", "u5", "", n.Add(-3*day)),
		track("t7", "u1", "acc-1", n.Add(time.Hour)),
	)
}

// at is a fixed clock.
func at(t time.Time) func(*insights.Options) {
	return func(o *insights.Options) { o.Now = func() time.Time { return t } }
}

var _ = Describe("Insights", func() {
	var (
		fake *fakeSegment
		src  *source.Config
		n    time.Time
	)
	BeforeEach(func(ctx SpecContext) {
		fake = newFakeSegment()
		src = newSource(ctx, fake.URL())
		n = time.Now().UTC().Truncate(time.Second)
		dataSet(ctx, src, n)
	})

	account := func(users, active7, active30, events7, events30 float64, lastSeen any) map[string]any {
		return map[string]any{"tally_users": users, "tally_active_users_7d": active7, "tally_active_users_30d": active30,
			"tally_events_7d": events7, "tally_events_30d": events30, "tally_last_seen_at": lastSeen}
	}
	user := func(events30, accounts float64, lastSeen any) map[string]any {
		return map[string]any{"tally_events_30d": events30, "tally_accounts": accounts, "tally_last_seen_at": lastSeen}
	}
	seenA := func(ctx context.Context, id string) any {
		return lastSeenText(ctx, "accounts", "account_id", src.Tenant, id)
	}
	seenU := func(ctx context.Context, id string) any { return lastSeenText(ctx, "users", "user_id", src.Tenant, id) }

	It("computes each account's and user's insights on event time and delivers them as group and identify calls", func(ctx SpecContext) {
		p := pusher(src, at(n.Add(time.Minute)))
		res, err := p.Push(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(res.Accounts).To(Equal(3))
		Expect(res.Users).To(Equal(5))

		Expect(seenA(ctx, "acc-1")).To(Equal(n.Add(time.Hour).Format("2006-01-02T15:04:05.000Z")), "the future event is the newest")
		Expect(traitsByEntity(fake.accepted())).To(Equal(map[string]map[string]any{
			// u1 and u2 linked (u3 no longer); u1 active in 7 days, u2 in 30 (in the other
			// account: any event counts); t1 and t5 (u3's, still attributed) in 7 days, t2 too
			// in 30; t3 is older, t7 not yet.
			"group:acc-1": account(2, 1, 2, 2, 3, seenA(ctx, "acc-1")),
			"group:acc-2": account(2, 0, 1, 0, 1, seenA(ctx, "acc-2")),
			"group:acc-3": account(0, 0, 0, 0, 0, seenA(ctx, "acc-3")),
			"identify:u1": user(2, 1, seenU(ctx, "u1")),
			"identify:u2": user(1, 2, seenU(ctx, "u2")),
			"identify:u3": user(1, 0, seenU(ctx, "u3")),
			"identify:u4": user(0, 1, seenU(ctx, "u4")),
			"identify:u5": user(1, 0, seenU(ctx, "u5")),
		}))

		By("marking every message as Tally's own, inactive, with a deterministic id")
		reqs := fake.all()
		Expect(reqs).NotTo(BeEmpty())
		for _, r := range reqs {
			Expect(r.key).To(Equal(src.Insights.WriteKey))
			Expect(r.gzip).To(BeTrue(), "Segment and Tally take gzip bodies")
		}
		for _, m := range fake.accepted() {
			ctxField := m["context"].(map[string]any)
			Expect(ctxField["library"]).To(Equal(map[string]any{"name": "tally-insights", "version": "test"}))
			Expect(ctxField["active"]).To(BeFalse())
			Expect(m["messageId"]).To(HavePrefix("tally-insights-"))
			Expect(m["timestamp"]).To(HavePrefix(n.Add(time.Minute).Format("2006-01-02T15:04:05")))
			if m["type"] == "group" {
				Expect(m["anonymousId"]).To(Equal("tally-insights"))
				Expect(m).NotTo(HaveKey("userId"))
			} else {
				Expect(m).NotTo(HaveKey("anonymousId"), "an identify with an anonymousId would tie it to the user")
			}
		}
		rows := deliveredRows(ctx, src)
		Expect(rows).To(HaveLen(8))
		for _, m := range fake.accepted() {
			key := "user:" + fmt.Sprint(m["userId"])
			if m["type"] == "group" {
				key = "account:" + fmt.Sprint(m["groupId"])
			}
			Expect(rows[key]["message_id"]).To(Equal(m["messageId"]))
			Expect(rows[key]["traits"]).To(Equal(m["traits"]))
		}

		status, ok, err := insights.ReadStatus(ctx, pool, src.Tenant, src.String())
		Expect(err).NotTo(HaveOccurred())
		Expect(ok).To(BeTrue())
		Expect(status.LastError).To(BeEmpty())
		Expect(status.LastPushAt).NotTo(BeNil())
		Expect(status.EntitiesPushed).To(Equal(int64(8)))
	})

	It("sends only what changed: nothing again, nothing after a restart, late events and passing time", func(ctx SpecContext) {
		p := pusher(src, at(n.Add(time.Minute)))
		_, err := p.Push(ctx)
		Expect(err).NotTo(HaveOccurred())
		first := fake.accepted()
		fake.reset()

		By("pushing again with nothing changed")
		res, err := p.Push(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(res.Entities()).To(BeZero())
		Expect(fake.all()).To(BeEmpty())

		By("restarting: a new pusher remembers what was delivered")
		p.Close()
		restarted := pusher(src, at(n.Add(2*time.Minute)))
		res, err = restarted.Push(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(res.Entities()).To(BeZero())
		Expect(fake.all()).To(BeEmpty())
		status, _, err := insights.ReadStatus(ctx, pool, src.Tenant, src.String())
		Expect(err).NotTo(HaveOccurred())
		Expect(status.EntitiesPushed).To(BeZero())

		By("a late event inside the windows: u2 in acc-1 three days ago")
		send(ctx, src, track("t8", "u2", "acc-1", n.Add(-3*day)))
		res, err = restarted.Push(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(res.Accounts).To(Equal(2))
		Expect(res.Users).To(Equal(1))
		Expect(entityKeys(fake.accepted())).To(ConsistOf("group:acc-1", "group:acc-2", "identify:u2"))
		got := traitsByEntity(fake.accepted())
		Expect(got["group:acc-1"]).To(Equal(account(2, 2, 2, 3, 4, seenA(ctx, "acc-1"))))
		Expect(got["group:acc-2"]).To(Equal(account(2, 1, 1, 0, 1, seenA(ctx, "acc-2"))), "u2 is active, in another account")
		Expect(got["identify:u2"]).To(Equal(user(2, 2, n.Add(-3*day).Format("2006-01-02T15:04:05.000Z"))))
		fake.reset()

		By("a late event older than every window changes nothing")
		send(ctx, src, track("t9", "u5", "", n.Add(-60*day)))
		res, err = restarted.Push(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(res.Entities()).To(BeZero())
		Expect(fake.all()).To(BeEmpty())

		By("time passing moves the windows without any new data")
		later := pusher(src, at(n.Add(8*day)))
		restarted.Close()
		res, err = later.Push(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(res.Entities()).To(BeNumerically(">", 0))
		got = traitsByEntity(fake.accepted())
		Expect(got["identify:u1"]).To(HaveKeyWithValue("tally_events_30d", 3.0), "t1, t2 and t7, now in the past")
		Expect(got["group:acc-3"]).To(BeNil(), "nothing changed for acc-3")

		By("a value returning to an earlier one gets a new message id")
		firstIDs := map[string]bool{}
		for _, m := range first {
			firstIDs[m["messageId"].(string)] = true
		}
		for _, m := range fake.accepted() {
			Expect(firstIDs).NotTo(HaveKey(m["messageId"]))
		}
	})

	It("retries an endpoint answering 5xx or 429 without losing or repeating a delivery", func(ctx SpecContext) {
		fake.fail(http.StatusInternalServerError, http.StatusServiceUnavailable, http.StatusTooManyRequests)
		p := pusher(src, at(n.Add(time.Minute)), func(o *insights.Options) { o.BatchSize = 100 })
		res, err := p.Push(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(res.Entities()).To(Equal(8))
		reqs := fake.all()
		// One batch per kind (a page each): the first batch failed three times, then both went.
		Expect(reqs).To(HaveLen(5))
		Expect(reqs[0].messages).To(Equal(reqs[3].messages), "a retry resends the same messages, ids included")
		Expect(fake.accepted()).To(HaveLen(8))
		Expect(deliveredRows(ctx, src)).To(HaveLen(8))
		Expect(metricValue("tally_insights_failed_requests_total", "source", src.String(), "reason", "unavailable")).To(Equal(3.0))
	})

	It("marks nothing delivered while the endpoint is down, bounds the attempts, and delivers it all once it is back", func(ctx SpecContext) {
		fake.setAlways(http.StatusServiceUnavailable)
		p := pusher(src, at(n.Add(time.Minute)), func(o *insights.Options) { o.PageSize = 2; o.BatchSize = 1 })
		res, err := p.Push(ctx)
		var de *insights.DeliveryError
		Expect(errors.As(err, &de)).To(BeTrue(), "%v", err)
		Expect(de.Permanent).To(BeFalse())
		Expect(de.Status).To(Equal(http.StatusServiceUnavailable))
		Expect(res.Entities()).To(BeZero())
		Expect(deliveredRows(ctx, src)).To(BeEmpty())
		// The first page (two accounts, a request each) tried ten times each; no other page.
		Expect(fake.all()).To(HaveLen(2 * 10))
		failedIDs := map[string]bool{}
		for _, r := range fake.all() {
			failedIDs[r.messages[0]["messageId"].(string)] = true
		}
		Expect(failedIDs).To(HaveLen(2))
		status, _, err := insights.ReadStatus(ctx, pool, src.Tenant, src.String())
		Expect(err).NotTo(HaveOccurred())
		Expect(status.LastPushAt).To(BeNil())
		Expect(status.LastError).To(And(ContainSubstring("503"), ContainSubstring(fake.URL())))

		By("the endpoint recovers")
		fake.setAlways(0)
		fake.reset()
		res, err = p.Push(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(res.Entities()).To(Equal(8))
		Expect(fake.accepted()).To(HaveLen(8))
		Expect(deliveredRows(ctx, src)).To(HaveLen(8))
		for _, m := range fake.accepted()[:2] {
			Expect(failedIDs).To(HaveKey(m["messageId"]), "the same deliveries, deduplicated by Segment if they did arrive")
		}
		status, _, err = insights.ReadStatus(ctx, pool, src.Tenant, src.String())
		Expect(err).NotTo(HaveOccurred())
		Expect(status.LastError).To(BeEmpty())
		Expect(status.LastPushAt).NotTo(BeNil())
	})

	It("reports a 4xx without retrying it, and delivers once the endpoint takes the insights", func(ctx SpecContext) {
		fake.setAlways(http.StatusBadRequest)
		p := pusher(src, at(n.Add(time.Minute)), func(o *insights.Options) { o.PageSize = 2; o.BatchSize = 1 })
		_, err := p.Push(ctx)
		var de *insights.DeliveryError
		Expect(errors.As(err, &de)).To(BeTrue(), "%v", err)
		Expect(de.Permanent).To(BeTrue())
		Expect(len(fake.all())).To(BeNumerically("<=", 2), "at most the requests already in flight, never a retry")
		Expect(deliveredRows(ctx, src)).To(BeEmpty())
		status, _, err := insights.ReadStatus(ctx, pool, src.Tenant, src.String())
		Expect(err).NotTo(HaveOccurred())
		Expect(status.LastError).To(And(ContainSubstring("400"), ContainSubstring("bad write key")))
		Expect(status.LastError).NotTo(ContainSubstring(src.Insights.WriteKey))

		fake.setAlways(0)
		res, err := p.Push(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(res.Entities()).To(Equal(8))
	})

	It("sends plain JSON to an endpoint that refuses gzip", func(ctx SpecContext) {
		fake.noGzip = true
		p := pusher(src, at(n.Add(time.Minute)))
		res, err := p.Push(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(res.Entities()).To(Equal(8))
		Expect(fake.accepted()).To(HaveLen(8))
		for _, r := range fake.all()[1:] {
			Expect(r.gzip).To(BeFalse())
		}
	})

	It("lets one pusher of a source push at a time, however many there are", func(ctx SpecContext) {
		other := func(key string, interval time.Duration) *source.Config {
			c := *src
			ins := *src.Insights
			ins.WriteKey, ins.Interval = key, interval
			c.Insights = &ins
			return &c
		}
		p1 := pusher(other("key-of-p1", time.Hour), at(n.Add(time.Minute)))
		p2 := pusher(other("key-of-p2", time.Hour), at(n.Add(time.Minute)))
		res, err := p1.Push(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(res.Entities()).To(Equal(8))
		send(ctx, src, track("t8", "u4", "acc-2", n.Add(-time.Hour)))
		_, err = p2.Push(ctx)
		Expect(err).To(MatchError(insights.ErrStandby))
		_, err = p2.Push(ctx)
		Expect(err).To(MatchError(insights.ErrStandby))
		for _, r := range fake.all() {
			Expect(r.key).To(Equal("key-of-p1"))
		}

		By("the holder stops: the other takes over and sends only what changed since")
		p1.Close()
		fake.reset()
		res, err = p2.Push(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(res.Entities()).To(Equal(2))
		Expect(entityKeys(fake.accepted())).To(ConsistOf("group:acc-2", "identify:u4"))
		for _, r := range fake.all() {
			Expect(r.key).To(Equal("key-of-p2"))
		}
		p2.Close()

		By("running side by side, only one of them ever sends")
		fake.reset()
		runCtx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		keys := []string{"key-of-r1", "key-of-r2"}
		for _, key := range keys {
			p := pusher(other(key, 10*time.Millisecond), func(o *insights.Options) { o.StandbyRecheck = 5 * time.Millisecond })
			wg.Go(func() { _ = p.Run(runCtx) })
		}
		DeferCleanup(func() { cancel(); wg.Wait() })
		standby := func() float64 {
			return metricValue("tally_insights_pushes_total", "source", src.String(), "result", "standby")
		}
		success := func() float64 {
			return metricValue("tally_insights_pushes_total", "source", src.String(), "result", "success")
		}
		standbyBefore, successBefore := standby(), success()
		// New data while they run, so the active one has something to send.
		send(ctx, src, track("t9", "u5", "", time.Now().Add(-time.Minute)))
		Eventually(func() float64 { return standby() - standbyBefore }).Should(BeNumerically(">=", 10))
		Eventually(fake.accepted).ShouldNot(BeEmpty())
		Expect(success() - successBefore).To(BeNumerically(">=", 1))
		seen := map[string]bool{}
		for _, r := range fake.all() {
			seen[r.key] = true
		}
		Expect(seen).To(HaveLen(1), "one pusher sent, the other stood by")
	})
})

var _ = Describe("Insights under the tenant's own Postgres login", func() {
	It("pushes through row-level security, and sees no other tenant's rows", func(ctx SpecContext) {
		fake := newFakeSegment()
		src := newSource(ctx, fake.URL())
		other := newSource(ctx, fake.URL())
		n := time.Now().UTC().Truncate(time.Second)
		dataSet(ctx, src, n)
		dataSet(ctx, other, n)
		roles := worker.NewTenantRoles(pool, databaseURL)
		url, err := roles.Ensure(ctx, src.Tenant, "")
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(func() { _ = roles.Drop(context.Background(), src.Tenant) })

		p := pusher(src, at(n.Add(time.Minute)), func(o *insights.Options) {
			conn, err := pgx.ParseConfig(url)
			Expect(err).NotTo(HaveOccurred())
			o.Conn = conn
		})
		res, err := p.Push(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(res.Entities()).To(Equal(8))
		Expect(fake.accepted()).To(HaveLen(8))
		Expect(deliveredRows(ctx, src)).To(HaveLen(8))
		status, ok, err := insights.ReadStatus(ctx, pool, src.Tenant, src.String())
		Expect(err).NotTo(HaveOccurred())
		Expect(ok).To(BeTrue())
		Expect(status.LastError).To(BeEmpty())

		By("a pusher of another tenant's source on this login finds nothing to send")
		intruder := pusher(other, at(n.Add(time.Minute)), func(o *insights.Options) {
			conn, err := pgx.ParseConfig(url)
			Expect(err).NotTo(HaveOccurred())
			o.Conn = conn
		})
		fake.reset()
		_, err = intruder.Push(ctx)
		Expect(err).To(HaveOccurred(), "it may not even record its status under another tenant")
		Expect(fake.all()).To(BeEmpty())
	})
})

var _ = Describe("Insights into Tally itself", func() {
	It("never moves last_seen_at, events or the catalog of the tenant they describe, and settle after one push", func(ctx SpecContext) {
		// The insights write key is the source's own: they come back into the same tenant.
		src := newSource(ctx, tallyURL)
		src.Insights.WriteKey = src.WriteKeys[0]
		n := time.Now().UTC().Truncate(time.Second)
		dataSet(ctx, src, n)
		snapshot := func() []any {
			return []any{
				queryRows(ctx, `SELECT account_id, last_seen_at, seen_at FROM tally.accounts WHERE tenant = $1 ORDER BY 1`, src.Tenant),
				queryRows(ctx, `SELECT user_id, last_seen_at, seen_at FROM tally.users WHERE tenant = $1 ORDER BY 1`, src.Tenant),
				queryRows(ctx, `SELECT message_id, type, account_id, user_id FROM tally.events WHERE tenant = $1 ORDER BY 1`, src.Tenant),
				queryRows(ctx, `SELECT * FROM tally.event_catalog WHERE tenant = $1 ORDER BY event`, src.Tenant),
				queryRows(ctx, `SELECT account_id, user_id, linked, changed_at FROM tally.account_users WHERE tenant = $1 ORDER BY 1, 2`, src.Tenant),
				queryRows(ctx, `SELECT * FROM tally.anonymous_ties WHERE tenant = $1`, src.Tenant),
			}
		}
		before := snapshot()

		p := pusher(src)
		res, err := p.Push(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(res.Entities()).To(Equal(8))
		drained(ctx, src)
		traits := queryRows(ctx, `SELECT user_id AS id, traits FROM tally.users WHERE tenant = $1
			UNION ALL SELECT account_id, traits FROM tally.accounts WHERE tenant = $1`, src.Tenant)
		Expect(traits).To(HaveLen(8))
		for _, r := range traits {
			Expect(r["traits"]).To(HaveKey("tally_last_seen_at"), "the insights arrived as traits of %s", r["id"])
		}
		Expect(snapshot()).To(Equal(before))

		By("the next push finds nothing to send: no loop")
		res, err = p.Push(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(res.Entities()).To(BeZero())
	})
})
