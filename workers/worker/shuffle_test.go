package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/workers/segment"
)

// The order-independence property: one generated message set, applied in different orders, split
// into different batches, by several concurrent workers, leaves identical rows. Seeds are fixed and
// printed, so a failure reproduces.
var _ = Describe("Order independence", func() {
	seeds := []uint64{1, 2, 3, 42, 2026}

	for _, seed := range seeds {
		It(fmt.Sprintf("gives identical tables for every order, batching and concurrency (seed %d)", seed), func(ctx SpecContext) {
			msgs := generateMessages(seed, 160)
			GinkgoWriter.Printf("seed %d: %d messages\n", seed, len(msgs))
			reference := fmt.Sprintf("shuffle-%d-reference", seed)
			applyDirect(ctx, reference, msgs, 1, len(msgs), nil)
			want := dumpTenant(ctx, reference)
			Expect(want).To(ContainSubstring("account_users"), "the generated set should produce memberships")

			rng := rand.New(rand.NewPCG(seed, 99))
			for run := range 6 {
				order := append([][]byte(nil), msgs...)
				rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
				maxBatch := 1 + rng.IntN(25)
				workers := 1 + rng.IntN(3)
				tenant := fmt.Sprintf("shuffle-%d-run%d", seed, run)
				By(fmt.Sprintf("run %d: shuffled, batches of up to %d, %d concurrent workers", run, maxBatch, workers))
				applyDirect(ctx, tenant, order, workers, maxBatch, rng)
				Expect(dumpTenant(ctx, tenant)).To(Equal(want), "seed %d run %d", seed, run)
			}

			By("through JetStream, published shuffled, with three workers on one source")
			src := newSource(ctx, "accountId")
			order := append([][]byte(nil), msgs...)
			rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
			for i, data := range order {
				var m msg
				Expect(json.Unmarshal(data, &m)).To(Succeed())
				// Distinct Nats-Msg-Ids, so the set's duplicate messages reach the workers too.
				publishRaw(ctx, src, m["type"].(string), fmt.Sprintf("%s-%d", m["messageId"], i), data)
			}
			for range 3 {
				startWorker(src, 7)
			}
			drained(ctx, src)
			Expect(dumpTenant(ctx, src.Tenant)).To(Equal(want), "seed %d through JetStream", seed)
		})
	}
})

// applyDirect folds and applies msgs for tenant in batches of random size up to maxBatch, spread
// over workers goroutines running at the same time.
func applyDirect(ctx context.Context, tenant string, msgs [][]byte, workers, maxBatch int, rng *rand.Rand) {
	var batches [][]*segment.Message
	for i := 0; i < len(msgs); {
		n := maxBatch
		if rng != nil {
			n = 1 + rng.IntN(maxBatch)
		}
		var batch []*segment.Message
		for ; n > 0 && i < len(msgs); n, i = n-1, i+1 {
			m, err := segment.ParseNormalized(msgs[i])
			Expect(err).NotTo(HaveOccurred())
			batch = append(batch, &m)
		}
		batches = append(batches, batch)
	}
	work := make(chan []*segment.Message)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer GinkgoRecover()
			defer wg.Done()
			for batch := range work {
				f := fold(batch, "accountId")
				for {
					_, err := apply(ctx, pool, tenant, "test/shuffle", f, testBounds)
					if err != nil && classify(err) == contention {
						continue
					}
					Expect(err).NotTo(HaveOccurred())
					break
				}
			}
		}()
	}
	for _, b := range batches {
		work <- b
	}
	close(work)
	wg.Wait()
}

// dumpTenant renders every row of a tenant, bookkeeping columns included, without the tenant and
// source columns (which differ between runs by construction).
func dumpTenant(ctx context.Context, tenant string) string {
	tables := []struct{ name, order string }{
		{"accounts", "account_id"},
		{"users", "user_id"},
		{"account_users", "account_id, user_id"},
		{"associations", "user_id, version, account_id"},
		{"events", "message_id"},
		{"event_catalog", "event"},
		{"aliases", "previous_id, user_id"},
	}
	var b strings.Builder
	for _, t := range tables {
		rows, err := pool.Query(ctx, fmt.Sprintf(
			`SELECT (to_jsonb(t) - 'tenant' - 'source')::text FROM tally.%s t WHERE tenant = $1 ORDER BY %s`, t.name, t.order), tenant)
		Expect(err).NotTo(HaveOccurred())
		for rows.Next() {
			var line string
			Expect(rows.Scan(&line)).To(Succeed())
			fmt.Fprintf(&b, "%s %s\n", t.name, line)
		}
		Expect(rows.Err()).NotTo(HaveOccurred())
	}
	return b.String()
}

// generateMessages makes a message set over a few users and accounts with every kind of call, null
// traits, links and unlinks with string and numeric ids, the three ways a track finds its account,
// many equal timestamps, and some messages repeated as they are.
func generateMessages(seed uint64, n int) [][]byte {
	rng := rand.New(rand.NewPCG(seed, 7))
	users := []string{"u0", "u1", "u2", "u3", "u4"}
	accounts := []any{"acme", "globex", 100, "initech"} // 100 sometimes travels as "100"
	pick := func(xs []string) string { return xs[rng.IntN(len(xs))] }
	accountID := func() any {
		a := accounts[rng.IntN(len(accounts))]
		if a == 100 && rng.IntN(2) == 0 {
			return "100"
		}
		return a
	}
	value := func() any { return []any{"x", "y", 1, 2.5, nil, true, map[string]any{"nested": 1}}[rng.IntN(7)] }
	traits := func(keys ...string) map[string]any {
		t := map[string]any{}
		for _, k := range keys {
			if rng.IntN(2) == 0 {
				t[k] = value()
			}
		}
		return t
	}
	var out [][]byte
	for i := range n {
		id := fmt.Sprintf("m%03d", i)
		ts := float64(rng.IntN(30)) // few distinct timestamps: many ties, broken by messageId
		var m msg
		switch r := rng.IntN(100); {
		case r < 5 && len(out) > 0:
			out = append(out, out[rng.IntN(len(out))]) // the same message delivered again
			continue
		case r < 30:
			t := traits("plan", "email", "seats", "flag")
			if rng.IntN(2) == 0 {
				company := map[string]any{"id": accountID()}
				switch rng.IntN(3) {
				case 0:
					company["remove"] = true
				case 1:
					company["name"] = fmt.Sprintf("Company %d", rng.IntN(3))
					company["industry"] = value()
				}
				t["company"] = company
			}
			m = identify(id, pick(users), ts, t)
			if rng.IntN(8) == 0 {
				m["context"] = map[string]any{"active": false}
			}
		case r < 50:
			t := traits("plan", "tier", "mrr")
			if rng.IntN(2) == 0 {
				t["name"] = fmt.Sprintf("Account %d", rng.IntN(3))
			}
			user := ""
			if rng.IntN(3) > 0 {
				user = pick(users)
			}
			m = group(id, user, fmt.Sprint(accountID()), ts, t)
		case r < 90:
			var props, context map[string]any
			switch rng.IntN(4) {
			case 0:
				context = map[string]any{"groupId": accountID()}
			case 1:
				props = map[string]any{"accountId": accountID(), "value": value()}
			}
			user := pick(users)
			if rng.IntN(10) == 0 {
				user = ""
			}
			m = track(id, user, fmt.Sprintf("Event %d", rng.IntN(4)), ts, props, context)
			if user == "" {
				m["anonymousId"] = "anon-" + id
			}
		case r < 95:
			m = msg{"type": "page", "messageId": id, "userId": pick(users), "name": "Pricing", "timestamp": at(ts), "receivedAt": at(ts + 1)}
		default:
			m = msg{"type": "alias", "messageId": id, "userId": pick(users), "previousId": "anon-" + pick(users), "timestamp": at(ts), "receivedAt": at(ts + 1)}
		}
		data, err := json.Marshal(m)
		Expect(err).NotTo(HaveOccurred())
		out = append(out, data)
	}
	return out
}
