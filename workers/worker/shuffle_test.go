package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/workers/segment"
	"github.com/tallyhq/tally/workers/stream"
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
			expectEveryRuleExercised(ctx, reference, msgs, want)

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

			for run := range 3 {
				order := append([][]byte(nil), msgs...)
				rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
				partitions := []int{2, 4, 8}[run]
				maxBatch := 1 + rng.IntN(25)
				tenant := fmt.Sprintf("shuffle-%d-partitioned%d", seed, run)
				By(fmt.Sprintf("partitioned run %d: %d partitions at once, two workers each, batches of up to %d", run, partitions, maxBatch))
				applyPartitioned(ctx, tenant, order, partitions, 2, maxBatch, rng)
				Expect(dumpTenant(ctx, tenant)).To(Equal(want), "seed %d partitioned run %d", seed, run)
			}

			By("through JetStream, published shuffled into 8 partitions, with two workers on one source")
			psrc := newSource(ctx, shuffleAccountProperty)
			psrc.Partitions = 8
			Expect(stream.Ensure(ctx, js, psrc.Stream(), psrc.StreamSettings())).To(Succeed())
			porder := append([][]byte(nil), msgs...)
			rng.Shuffle(len(porder), func(i, j int) { porder[i], porder[j] = porder[j], porder[i] })
			for i, data := range porder {
				var m msg
				Expect(json.Unmarshal(data, &m)).To(Succeed())
				publishRaw(ctx, psrc, m["type"].(string), fmt.Sprintf("%s-%d", m["messageId"], i), data)
			}
			for range 2 {
				startWorker(psrc, 7)
			}
			drained(ctx, psrc)
			Expect(dumpTenant(ctx, psrc.Tenant)).To(Equal(want), "seed %d through 8 partitions", seed)

			By("through JetStream, published shuffled, with three workers on one source")
			src := newSource(ctx, shuffleAccountProperty)
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
				applyUntilDone(ctx, tenant, fold(batch, shuffleAccountProperty))
			}
		}()
	}
	for _, b := range batches {
		work <- b
	}
	close(work)
	wg.Wait()
}

// applyPartitioned splits msgs by partition as the receiver does, and applies every partition at
// the same time, each by workers goroutines taking its batches in turn (a partition's consumer
// shared by several workers), so batches of different partitions and of the same partition
// commit concurrently.
func applyPartitioned(ctx context.Context, tenant string, msgs [][]byte, partitions, workers, maxBatch int, rng *rand.Rand) {
	byPartition := make([][][]byte, partitions)
	for _, data := range msgs {
		m, err := segment.ParseNormalized(data)
		Expect(err).NotTo(HaveOccurred())
		p := stream.Partition(stream.UserKey(m.UserID, m.AnonymousID), partitions)
		byPartition[p] = append(byPartition[p], data)
	}
	seeds := make([]uint64, partitions)
	for p := range seeds {
		seeds[p] = rng.Uint64()
	}
	var wg sync.WaitGroup
	for p, part := range byPartition {
		wg.Go(func() {
			defer GinkgoRecover()
			applyDirect(ctx, tenant, part, workers, maxBatch, rand.New(rand.NewPCG(seeds[p], 1)))
		})
	}
	wg.Wait()
}

// applyUntilDone applies a folded batch as a worker's commit does: again after contention, and
// with more lock slots when the transaction found it needed them.
func applyUntilDone(ctx context.Context, tenant string, f *folded) {
	extra := newLockSet()
	for {
		_, err := apply(ctx, testPool, tenant, "test/shuffle", f, testBounds, extra)
		if grew, ok := asLockSetGrew(err); ok {
			extra = extra.merge(grew.more)
			continue
		}
		if err != nil && classify(err) == contention {
			continue
		}
		Expect(err).NotTo(HaveOccurred())
		return
	}
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
		{"anonymous_ties", "anonymous_id"},
		{"deletions", "kind, id"},
	}
	var b strings.Builder
	for _, t := range tables {
		rows, err := testPool.Query(ctx, fmt.Sprintf(
			`SELECT (to_jsonb(t) - 'tenant' - 'source')::text FROM tally.%s t WHERE tenant = $1 ORDER BY %s`, t.name, t.order), tenant)
		Expect(err).NotTo(HaveOccurred())
		for rows.Next() {
			var line string
			Expect(rows.Scan(&line)).To(Succeed())
			fmt.Fprintf(&b, "%s %s\n", t.name, line)
		}
		Expect(rows.Err()).NotTo(HaveOccurred())
	}
	unnamed, err := UnnamedAccounts(ctx, testPool, tenant)
	Expect(err).NotTo(HaveOccurred())
	fmt.Fprintf(&b, "unnamed accounts %d\n", unnamed)
	return b.String()
}

// shuffleAccountProperty is a dotted path: the generated tracks name their account by the
// property "account.id", by properties.account.id, or both.
const shuffleAccountProperty = "account.id"

// expectEveryRuleExercised checks that the generated set reaches the rules whose order
// independence the property is about, so a change of the generator cannot quietly drop one.
func expectEveryRuleExercised(ctx context.Context, tenant string, msgs [][]byte, dump string) {
	count := func(sql string) int64 {
		var n int64
		Expect(testPool.QueryRow(ctx, sql, tenant).Scan(&n)).To(Succeed())
		return n
	}
	Expect(count(`SELECT count(*) FROM tally.events e WHERE e.tenant = $1 AND e.account_from = 'user'
		AND e.account_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM tally.associations a
			WHERE a.tenant = e.tenant AND a.user_id = e.user_id AND a.at <= e.timestamp AND a.linked)`)).
		To(BeNumerically(">", 0), "tracks before their user's first link")
	Expect(count(`SELECT count(*) FROM tally.events WHERE tenant = $1 AND user_from = 'anonymous'`)).
		To(BeNumerically(">", 0), "anonymous events attributed through a tie")
	Expect(count(`SELECT count(*) FROM tally.events WHERE tenant = $1 AND account_from = 'property'`)).
		To(BeNumerically(">", 0), "accounts from the dotted account property")
	Expect(conflictingTies(msgs)).To(BeNumerically(">", 0), "anonymousIds tied to two users")
	joined := string(bytes.Join(msgs, nil))
	Expect(joined).To(ContainSubstring(`"id":100.0`), "a numeric company id or account property with a fraction")
	Expect(joined).To(ContainSubstring(`"remove":"true"`), "company.remove as a string")
	Expect(dump).NotTo(ContainSubstring(`"remove"`), "no remove marker stored")
	Expect(dump).NotTo(ContainSubstring(`"100.0"`), "numeric ids keyed on their integer form")
}

// conflictingTies counts the anonymousIds the messages tie to more than one userId.
func conflictingTies(msgs [][]byte) int {
	users := map[string]map[string]bool{}
	for _, data := range msgs {
		m, err := segment.ParseNormalized(data)
		Expect(err).NotTo(HaveOccurred())
		anon := m.AnonymousID
		if m.Type == segment.TypeAlias {
			anon = m.PreviousID
		} else if m.Type != segment.TypeIdentify {
			continue
		}
		if anon != "" && m.UserID != "" {
			if users[anon] == nil {
				users[anon] = map[string]bool{}
			}
			users[anon][m.UserID] = true
		}
	}
	n := 0
	for _, u := range users {
		if len(u) > 1 {
			n++
		}
	}
	return n
}

// generateMessages makes a message set over a few users and accounts with every kind of call, null
// traits, links and unlinks with string and numeric ids (100, "100", 100.0, 1e2, 2.5), company.remove
// as true and "true", the three ways a track finds its account (the property by its dotted name, by
// path, or both), users whose links all come late (tracks before their first link), anonymous
// tracks and pages tied to users by identify and alias (a few anonymousIds, so some are tied to
// two users), many equal timestamps, and some messages repeated as they are.
func generateMessages(seed uint64, n int) [][]byte {
	rng := rand.New(rand.NewPCG(seed, 7))
	// late0 and late1 are linked only from ts 15 on: their earlier tracks precede their first link.
	users := []string{"u0", "u1", "u2", "u3", "u4", "late0", "late1"}
	anonymousIDs := []string{"anon-a", "anon-b", "anon-c", "anon-d"}
	accounts := []any{"acme", "globex", 100, "initech", json.Number("2.5")}
	pick := func(xs []string) string { return xs[rng.IntN(len(xs))] }
	accountID := func() any {
		a := accounts[rng.IntN(len(accounts))]
		if a == 100 {
			return []any{100, "100", json.Number("100.0"), json.Number("1e2")}[rng.IntN(4)]
		}
		return a
	}
	linkTime := func(user string, ts float64) float64 {
		if strings.HasPrefix(user, "late") {
			return 15 + ts/2
		}
		return ts
	}
	accountProperty := func() map[string]any {
		switch rng.IntN(4) {
		case 0:
			return map[string]any{"account.id": accountID()}
		case 1:
			return map[string]any{"account": map[string]any{"id": accountID()}}
		case 2: // the property named with the dot wins over the path
			return map[string]any{"account.id": accountID(), "account": map[string]any{"id": accountID()}}
		default: // ... unless it holds no id
			return map[string]any{"account.id": nil, "account": map[string]any{"id": accountID()}}
		}
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
					company["remove"] = []any{true, "true"}[rng.IntN(2)]
				case 1:
					company["name"] = fmt.Sprintf("Company %d", rng.IntN(3))
					company["industry"] = value()
				}
				t["company"] = company
			}
			user := pick(users)
			if _, links := t["company"]; links {
				ts = linkTime(user, ts)
			}
			m = identify(id, user, ts, t)
			if rng.IntN(8) == 0 {
				m["context"] = map[string]any{"active": false}
			}
			if rng.IntN(3) == 0 {
				m["anonymousId"] = pick(anonymousIDs)
			}
		case r < 50:
			t := traits("plan", "tier", "mrr")
			if rng.IntN(2) == 0 {
				t["name"] = fmt.Sprintf("Account %d", rng.IntN(3))
			}
			user := ""
			if rng.IntN(3) > 0 {
				user = pick(users)
				ts = linkTime(user, ts)
			}
			// The receiver forwards a numeric groupId as a string of its integer form.
			m = group(id, user, receiverID(accountID()), ts, t)
		case r < 90:
			var props, context map[string]any
			switch rng.IntN(4) {
			case 0:
				context = map[string]any{"groupId": accountID()}
			case 1:
				props = accountProperty()
				props["value"] = value()
			}
			user := pick(users)
			if rng.IntN(5) == 0 {
				user = ""
			}
			m = track(id, user, fmt.Sprintf("Event %d", rng.IntN(4)), ts, props, context)
			if user == "" || rng.IntN(10) == 0 { // anonymous, or with both ids (its userId stays)
				m["anonymousId"] = anonymousID(rng, anonymousIDs, id)
			}
		case r < 95:
			m = msg{"type": "page", "messageId": id, "userId": pick(users), "name": "Pricing", "timestamp": at(ts), "receivedAt": at(ts + 1)}
			if rng.IntN(2) == 0 {
				delete(m, "userId")
				m["anonymousId"] = anonymousID(rng, anonymousIDs, id)
			}
		default:
			previous := pick(anonymousIDs)
			if rng.IntN(3) == 0 {
				previous = "anon-" + pick(users)
			}
			m = msg{"type": "alias", "messageId": id, "userId": pick(users), "previousId": previous, "timestamp": at(ts), "receivedAt": at(ts + 1)}
		}
		data, err := json.Marshal(m)
		Expect(err).NotTo(HaveOccurred())
		out = append(out, data)
	}
	return out
}

// anonymousID is mostly one of the shared anonymousIds (which identify and alias tie), sometimes
// one never tied.
func anonymousID(rng *rand.Rand, shared []string, messageID string) string {
	if rng.IntN(4) == 0 {
		return "anon-" + messageID
	}
	return shared[rng.IntN(len(shared))]
}

// receiverID is a groupId as the receiver forwards it: strings as sent, numbers as the string of
// their integer form (segment.IntegralText).
func receiverID(id any) string {
	if n, ok := id.(json.Number); ok {
		if f, err := n.Float64(); err == nil && f == math.Trunc(f) {
			return strconv.FormatInt(int64(f), 10)
		}
	}
	return fmt.Sprint(id)
}
