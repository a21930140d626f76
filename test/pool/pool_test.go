package pool

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/test/testenv"
	"github.com/tallyhq/tally/workers/pool"
	"github.com/tallyhq/tally/workers/source"
)

var _ = Describe("One receiver and one worker for many members", func() {
	var p *podsOf
	BeforeEach(func(ctx SpecContext) { p = newPool(ctx) })

	It("route each member's key to its own tenant's rows, which the other tenant's login cannot see, knowing only digests", func(ctx SpecContext) {
		a, b := newMember(ctx), newMember(ctx)
		for _, m := range []*member{a, b} {
			p.mountCredentials(ctx, m)
			p.join(ctx, m, false)
		}
		Eventually(func() int { return p.status(a.keys[0], "a-1", "Clicked", nil) }).Should(Equal(http.StatusOK))
		Eventually(func() int { return p.status(b.keys[0], "b-1", "Clicked", nil) }).Should(Equal(http.StatusOK))
		Expect(p.status("not-a-member-key-0123456789abcdef", "x-1", "Clicked", nil)).To(Equal(http.StatusUnauthorized))

		drained(ctx, a)
		drained(ctx, b)
		Expect(eventsOf(ctx, a)).To(Equal([]string{"a-1"}), "tenant a's login sees its own event only")
		Expect(eventsOf(ctx, b)).To(Equal([]string{"b-1"}), "tenant b's login sees its own event only")

		By("the pool's worker connects with the pool's own login only, naming each member's tenant")
		var asPool, asTenants int
		Expect(admin.QueryRow(ctx, `SELECT count(*) FILTER (WHERE a.usename = l.role_name),
			count(*) FILTER (WHERE a.usename IN (SELECT role_name FROM tally.tenant_roles WHERE tenant = ANY($2)))
			FROM pg_stat_activity a, tally.pool_logins l WHERE l.pool = $1 AND a.application_name = 'tally-pool-worker'`,
			p.ref.String(), []string{a.src.Tenant, b.src.Tenant}).Scan(&asPool, &asTenants)).To(Succeed())
		Expect(asPool).To(BeNumerically(">", 0))
		Expect(asTenants).To(BeZero())

		By("the bucket, all the pool's pods read, holds no write key")
		for _, m := range []*member{a, b} {
			e, err := p.kv.Get(ctx, pool.Key(*m.src))
			Expect(err).NotTo(HaveOccurred())
			Expect(string(e.Value())).NotTo(ContainSubstring(m.keys[0]))
			Expect(string(e.Value())).To(ContainSubstring(pool.DigestKey(m.keys[0])))
		}
	})

	It("follow a key rotation in the bucket without a restart", func(ctx SpecContext) {
		m := newMember(ctx)
		p.mountCredentials(ctx, m)
		p.join(ctx, m, false)
		old := m.keys[0]
		Eventually(func() int { return p.status(old, "r-1", "E", nil) }).Should(Equal(http.StatusOK))

		const rotated = "rotated-key-0123456789abcdef0123"
		m.keys = []string{old, rotated}
		p.join(ctx, m, false)
		Eventually(func() int { return p.status(rotated, "r-2", "E", nil) }).Should(Equal(http.StatusOK))
		Expect(p.status(old, "r-3", "E", nil)).To(Equal(http.StatusOK), "both keys during the rotation")

		m.keys = []string{rotated}
		p.join(ctx, m, false)
		acceptedMeanwhile := p.until(old, "r-4", http.StatusUnauthorized)
		Expect(p.status(rotated, "r-5", "E", nil)).To(Equal(http.StatusOK))
		drained(ctx, m)
		Expect(eventsOf(ctx, m)).To(ConsistOf(append([]string{"r-1", "r-2", "r-3", "r-5"}, acceptedMeanwhile...)))
	})

	It("let members join and leave while another member's traffic flows: it gets only 2xx, every accepted event lands once", func(ctx SpecContext) {
		steady, comer := newMember(ctx), newMember(ctx)
		p.mountCredentials(ctx, steady)
		p.mountCredentials(ctx, comer)
		p.join(ctx, steady, false)
		Eventually(func() int { return p.status(steady.keys[0], "warm-up", "E", nil) }).Should(Equal(http.StatusOK))

		var mu sync.Mutex
		var accepted []string
		statuses := map[int]int{}
		stopTraffic := make(chan struct{})
		trafficDone := make(chan struct{})
		go func() {
			defer GinkgoRecover()
			defer close(trafficDone)
			for i := 0; ; i++ {
				select {
				case <-stopTraffic:
					return
				default:
				}
				id := fmt.Sprintf("steady-%05d", i)
				status, _ := p.track(steady.keys[0], id, "E", nil)
				mu.Lock()
				statuses[status]++
				if status == http.StatusOK {
					accepted = append(accepted, id)
				}
				mu.Unlock()
			}
		}()
		sent := func() int { mu.Lock(); defer mu.Unlock(); return len(accepted) }

		comerSeries := fmt.Sprintf(`source=%q`, comer.src.String())
		for round := range 3 {
			from := sent()
			p.join(ctx, comer, false)
			id := fmt.Sprintf("comer-%d", round)
			Eventually(func() int { return p.status(comer.keys[0], id, "E", nil) }).Should(Equal(http.StatusOK))
			if round == 0 {
				drained(ctx, comer)
				Expect(metricsText(p.metrics)).To(ContainSubstring(comerSeries), "the worker counts the member's batches")
			}
			p.leave(ctx, comer)
			p.until(comer.keys[0], id+"-after", http.StatusUnauthorized)
			Eventually(sent).Should(BeNumerically(">", from+20), "the steady member's traffic went on meanwhile")
		}
		close(stopTraffic)
		<-trafficDone

		By("the member that left leaves no series behind")
		// The workers follow the bucket on their own: the receiver refusing the key does not
		// mean the member's worker has stopped yet (an idle pull ends within a second).
		Eventually(func() []string { return seriesOf(p.metrics, comerSeries) }).WithTimeout(10 * time.Second).Should(BeEmpty())
		Eventually(func() []string { return seriesOf(p.receiver, comerSeries) }).WithTimeout(10 * time.Second).Should(BeEmpty())

		mu.Lock()
		defer mu.Unlock()
		Expect(statuses).To(HaveLen(1), "every answer to the steady member was a 200: %v", statuses)
		drained(ctx, steady)
		Expect(eventsOf(ctx, steady)).To(ConsistOf(append([]string{"warm-up"}, accepted...)))
	})

	It("refuse a suspended member with 503 and stop its worker; resuming applies its backlog", func(ctx SpecContext) {
		m, other := newMember(ctx), newMember(ctx)
		p.mountCredentials(ctx, m)
		p.mountCredentials(ctx, other)
		p.join(ctx, other, false)
		p.join(ctx, m, false)
		Eventually(func() int { return p.status(m.keys[0], "s-1", "E", nil) }).Should(Equal(http.StatusOK))
		drained(ctx, m)

		p.join(ctx, m, true)
		// Until the receiver sees the suspension, its messages are still accepted: they wait too.
		accepted := p.until(m.keys[0], "s-2", http.StatusServiceUnavailable)
		status, code := p.track(m.keys[0], "s-2", "E", nil)
		Expect(status).To(Equal(http.StatusServiceUnavailable))
		Expect(code).To(Equal("source_suspended"), "with Retry-After (checked by post)")
		Eventually(func() float64 { return p.members("suspended") }).Should(Equal(1.0))
		Expect(p.members("running")).To(Equal(1.0), "the other member's worker runs on")

		By("messages in the member's stream wait while it is suspended")
		waiting := unacknowledged(ctx, m)
		publish(ctx, m, "s-backlog")
		Eventually(func() uint64 { return unacknowledged(ctx, m) }).Should(Equal(waiting + 1))
		Consistently(func() uint64 { return unacknowledged(ctx, m) }, "1s").Should(Equal(waiting+1), "no worker acknowledges them")
		Expect(eventsOf(ctx, m)).NotTo(ContainElement("s-backlog"))

		p.join(ctx, m, false)
		Eventually(func() int { return p.status(m.keys[0], "s-3", "E", nil) }).Should(Equal(http.StatusOK))
		drained(ctx, m)
		Expect(eventsOf(ctx, m)).To(ConsistOf(append([]string{"s-1", "s-3", "s-backlog"}, accepted...)))
	})

	It("apply a member's new settings: ignored events at the receiver, the account property at the worker", func(ctx SpecContext) {
		m := newMember(ctx)
		p.mountCredentials(ctx, m)
		p.join(ctx, m, false)
		Eventually(func() int { return p.status(m.keys[0], "c-1", "Noise", map[string]any{"acct": "acme"}) }).Should(Equal(http.StatusOK))
		drained(ctx, m)
		Expect(accountOf(ctx, m, "c-1")).To(BeEmpty())

		m.src.IgnoredEvents = []string{"Noise"}
		m.src.AccountProperty = "acct"
		p.join(ctx, m, false)
		Eventually(func() bool { return catalogIgnored(ctx, m, "Noise") }).Should(BeTrue(), "the worker marks the catalog")
		n := 0
		Eventually(func() string {
			n++
			id := fmt.Sprintf("c-2-%d", n)
			Expect(p.status(m.keys[0], id, "Clicked", map[string]any{"acct": "acme"})).To(Equal(http.StatusOK))
			drained(ctx, m)
			return accountOf(ctx, m, id)
		}).Should(Equal("acme"), "the worker maps the account property")
		Eventually(func() float64 {
			n++
			Expect(p.status(m.keys[0], fmt.Sprintf("c-3-%d", n), "Noise", nil)).To(Equal(http.StatusOK))
			return metric(p.receiver, fmt.Sprintf(`tally_receiver_messages_total{outcome="ignored",source=%q}`, m.src.String()))
		}).Should(BeNumerically(">=", 1), "the receiver drops Noise")
	})

	It("apply a partitioned member's users on all its partitions, and dead-letter what cannot be mapped", func(ctx SpecContext) {
		m := newMember(ctx, "", "4")
		p.mountCredentials(ctx, m)
		p.join(ctx, m, false)
		var ids []string
		for i := range 20 {
			id := fmt.Sprintf("pt-%02d", i)
			body := fmt.Appendf(nil, `{"userId":"user-%d","event":"E","messageId":%q}`, i, id)
			Eventually(func() int { s, _ := post(p.receiver+"/v1/track", m.keys[0], body); return s }).Should(Equal(http.StatusOK))
			ids = append(ids, id)
		}
		publishRaw(ctx, m, []byte(`{"type":"track","messageId":`)) // what no worker can decode
		Eventually(func() error { return testenv.Drained(ctx, js, m.src.Stream().StreamName()) }).
			WithTimeout(30 * time.Second).Should(Succeed())
		Expect(eventsOf(ctx, m)).To(Equal(ids))
		dlq, err := js.Stream(ctx, m.src.Stream().DeadLetterStreamName())
		Expect(err).NotTo(HaveOccurred())
		info, err := dlq.Info(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(info.State.Msgs).To(BeEquivalentTo(1), "the worker's pool user may publish the member's dead letters")
	})

	It("start a member's worker when its database credentials appear", func(ctx SpecContext) {
		m := newMember(ctx)
		p.join(ctx, m, false)
		Eventually(func() int { return p.status(m.keys[0], "w-1", "E", nil) }).Should(Equal(http.StatusOK))
		Eventually(func() float64 { return p.members("waiting") }).Should(Equal(1.0))
		Expect(storedMessages(ctx, m)).To(BeEquivalentTo(1), "accepted, waiting in the stream")

		p.mountCredentials(ctx, m)
		drained(ctx, m)
		Expect(eventsOf(ctx, m)).To(Equal([]string{"w-1"}))
		Expect(p.members("waiting")).To(Equal(0.0))
	})

	It("check Segment's signature with each member's own shared secret, mounted per member", func(ctx SpecContext) {
		a, b := newMember(ctx), newMember(ctx)
		for i, m := range []*member{a, b} {
			p.mountCredentials(ctx, m)
			Expect(os.WriteFile(filepath.Join(p.secretsDir, pool.Key(*m.src)), []byte(fmt.Sprintf("secret-%d\n", i)), 0o600)).To(Succeed())
			p.join(ctx, m, false)
		}
		body := []byte(`{"type":"track","userId":"u1","event":"Signed","messageId":"sig-1","timestamp":"2026-03-01T12:00:00Z"}`)
		Eventually(func() int { return signed(p.receiver+"/v1/segment", body, "secret-1") }).Should(Equal(http.StatusOK))
		drained(ctx, b)
		Expect(eventsOf(ctx, b)).To(Equal([]string{"sig-1"}), "secret-1 is b's")
		Expect(eventsOf(ctx, a)).To(BeEmpty())
		Expect(signed(p.receiver+"/v1/segment", body, "not-a-secret")).To(Equal(http.StatusUnauthorized))

		By("the URL naming the member, as a pool of many members needs: only that member's secrets count")
		named := []byte(`{"type":"track","userId":"u1","event":"Signed","messageId":"sig-2","timestamp":"2026-03-01T12:00:00Z"}`)
		Expect(signed(p.receiver+"/v1/segment/"+a.src.Namespace+"/"+a.src.Name, named, "secret-1")).To(Equal(http.StatusUnauthorized))
		Expect(signed(p.receiver+"/v1/segment/"+b.src.Namespace+"/"+b.src.Name, named, "secret-1")).To(Equal(http.StatusOK))
		drained(ctx, b)
		Expect(eventsOf(ctx, b)).To(Equal([]string{"sig-1", "sig-2"}))
	})
})

var _ = Describe("A pool worker without tenant logins", func() {
	It("writes a member without a login of its own with --database-url, as dedicated workers do", func(ctx SpecContext) {
		p := newPool(ctx, "--database-url", adminURL)
		m := newMember(ctx)
		p.join(ctx, m, false)
		Eventually(func() int { return p.status(m.keys[0], "d-1", "E", nil) }).Should(Equal(http.StatusOK))
		drained(ctx, m)
		Expect(eventsOf(ctx, m)).To(Equal([]string{"d-1"}))
	})
})

var _ = Describe("A pool's pods and its bucket", func() {
	It("keep serving the last known members while the bucket is gone, and follow it once it is back", func(ctx SpecContext) {
		p := newPool(ctx)
		m, later := newMember(ctx), newMember(ctx)
		p.mountCredentials(ctx, m)
		p.mountCredentials(ctx, later)
		p.join(ctx, m, false)
		Eventually(func() int { return p.status(m.keys[0], "g-1", "E", nil) }).Should(Equal(http.StatusOK))

		Expect(pool.DeleteBucket(ctx, js, p.ref)).To(Succeed())
		Expect(p.status(m.keys[0], "g-2", "E", nil)).To(Equal(http.StatusOK))
		Expect(statusOf(http.Get(p.receiver + "/readyz"))).To(Equal(http.StatusOK))

		var err error
		p.kv, err = pool.EnsureBucket(ctx, js, p.ref, 1)
		Expect(err).NotTo(HaveOccurred())
		old := m.keys[0]
		m.keys = []string{"after-the-bucket-came-back-0123456789"}
		p.join(ctx, m, false)
		p.join(ctx, later, false)
		// Noticed at the next check that the bucket is still the same one.
		Eventually(func() int { return p.status(m.keys[0], "g-3", "E", nil) }).
			WithTimeout(3 * pool.FollowRecheck).WithPolling(100 * time.Millisecond).Should(Equal(http.StatusOK))
		p.until(old, "g-old", http.StatusUnauthorized)
		Eventually(func() int { return p.status(later.keys[0], "g-later", "E", nil) }).Should(Equal(http.StatusOK))
		Eventually(func() float64 { return p.members("running") }).
			WithTimeout(3 * pool.FollowRecheck).Should(Equal(2.0))
		drained(ctx, later)
		Expect(eventsOf(ctx, later)).To(Equal([]string{"g-later"}), "the worker runs the member that joined the new bucket")
		drained(ctx, m)
		Expect(eventsOf(ctx, m)).To(ContainElements("g-1", "g-2", "g-3"))
	})
})

var _ = Describe("A pool member's insights", func() {
	It("are pushed by the pool worker with the member's own insights write key, once it is mounted", func(ctx SpecContext) {
		p := newPool(ctx)
		pushing, receiving := newMember(ctx), newMember(ctx)
		p.mountCredentials(ctx, pushing)
		p.mountCredentials(ctx, receiving)
		p.join(ctx, receiving, false)
		// The insights go to the pool's own receiver, under the receiving member's key.
		pushing.src.Insights = &source.InsightsConfig{Endpoint: p.receiver, Interval: time.Second}
		p.join(ctx, pushing, false)
		body := []byte(`{"userId":"ada","traits":{"email":"ada@example.com"},"messageId":"i-1"}`)
		Eventually(func() int { s, _ := post(p.receiver+"/v1/identify", pushing.keys[0], body); return s }).Should(Equal(http.StatusOK))
		drained(ctx, pushing)

		Expect(os.WriteFile(filepath.Join(p.credsDir, pool.Key(*pushing.src)+".insights-write-key"), []byte(receiving.keys[0]+"\n"), 0o600)).To(Succeed())
		Eventually(func() []string {
			return asTenant[string](ctx, receiving, `SELECT user_id FROM tally.users WHERE traits ? 'tally_events_30d'`)
		}).WithTimeout(30*time.Second).Should(Equal([]string{"ada"}), "the pushing member's user, as an insights identify call")
		Expect(asTenant[string](ctx, pushing, `SELECT user_id FROM tally.users WHERE traits ? 'tally_events_30d'`)).To(BeEmpty())
	})
})

var _ = Describe("A pool worker's Postgres connections", func() {
	It("stay within --max-conns over all tenant logins, and every member's events still land", func(ctx SpecContext) {
		p := newPool(ctx, "--max-conns", "1")
		members := []*member{newMember(ctx), newMember(ctx), newMember(ctx)}
		for _, m := range members {
			p.mountOwnLogin(m)
			p.join(ctx, m, false)
		}
		for round := range 3 {
			for i, m := range members {
				id := fmt.Sprintf("m%d-%d", i, round)
				Eventually(func() int { return p.status(m.keys[0], id, "E", nil) }).Should(Equal(http.StatusOK))
			}
		}
		for i, m := range members {
			drained(ctx, m)
			Expect(eventsOf(ctx, m)).To(Equal([]string{fmt.Sprintf("m%d-0", i), fmt.Sprintf("m%d-1", i), fmt.Sprintf("m%d-2", i)}))
		}
		var open int
		Expect(admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity a JOIN tally.tenant_roles r ON a.usename = r.role_name
			WHERE r.tenant = ANY($1) AND a.application_name = 'tally-pool-worker'`,
			[]string{members[0].src.Tenant, members[1].src.Tenant, members[2].src.Tenant}).Scan(&open)).To(Succeed())
		Expect(open).To(BeNumerically("<=", 1))
	})
})

var _ = Describe("A pool receiver before its bucket has arrived", func() {
	It("is not ready and answers 503 (never 401), then serves once the members arrive", func(ctx SpecContext) {
		ref := pool.Ref{Namespace: "platform", Name: fmt.Sprintf("late%d", seq.Add(1))}
		base := startReceiverUnready(ref)
		Expect(statusOf(http.Get(base + "/readyz"))).To(Equal(http.StatusServiceUnavailable))
		m := newMember(ctx)
		p := &podsOf{ref: ref, receiver: base}
		Expect(p.status(m.keys[0], "l-1", "E", nil)).To(Equal(http.StatusServiceUnavailable))

		var err error
		p.kv, err = pool.EnsureBucket(ctx, js, ref, 1)
		Expect(err).NotTo(HaveOccurred())
		p.join(ctx, m, false)
		Eventually(func() int { return statusOf(http.Get(base + "/readyz")) }).WithTimeout(10 * time.Second).Should(Equal(http.StatusOK))
		// The watch may have begun on the empty bucket, the member's entry following at once.
		Eventually(func() int { return p.status(m.keys[0], "l-1", "E", nil) }).Should(Equal(http.StatusOK))
	})
})

// publishRaw puts bytes straight into the member's stream, on its unpartitioned track subject.
func publishRaw(ctx context.Context, m *member, data []byte) {
	GinkgoHelper()
	_, err := js.Publish(ctx, m.src.Stream().Subject("track"), data)
	Expect(err).NotTo(HaveOccurred())
}

// publish puts a message straight into the member's stream, as a receiver would have.
func publish(ctx context.Context, m *member, id string) {
	GinkgoHelper()
	out := nats.NewMsg(m.src.Stream().Subject("track"))
	out.Data = fmt.Appendf(nil, `{"type":"track","messageId":%q,"userId":"u1","event":"E","timestamp":"2026-03-01T12:00:00Z","receivedAt":"2026-03-01T12:00:01Z"}`, id)
	out.Header.Set(nats.MsgIdHdr, id)
	_, err := js.PublishMsg(ctx, out)
	Expect(err).NotTo(HaveOccurred())
}
