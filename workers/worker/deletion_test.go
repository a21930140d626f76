package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tallyhq/tally/workers/segment"
	"github.com/tallyhq/tally/workers/source"
)

func deleteUser(id, user string, ts float64) msg {
	return msg{"type": "delete", "messageId": id, "userId": user, "context": map[string]any{}, "timestamp": at(ts), "receivedAt": at(ts + 1)}
}

// replay publishes messages again as a Segment replay would: same messageIds and timestamps, past
// JetStream's duplicate window (a Nats-Msg-Id of its own).
func replay(ctx context.Context, src *source.Config, msgs ...msg) {
	for _, m := range msgs {
		data, err := json.Marshal(m)
		Expect(err).NotTo(HaveOccurred())
		publishRaw(ctx, src, m["type"].(string), "replay-"+m["messageId"].(string), data)
	}
}

var _ = Describe("User deletion requests", func() {
	count := func(ctx context.Context, sql string, args ...any) int64 {
		var n int64
		Expect(testPool.QueryRow(ctx, sql, args...).Scan(&n)).To(Succeed())
		return n
	}

	It("remove the user's row, links and events, keep the accounts, and keep a replay of older messages out", func(ctx SpecContext) {
		src := newSource(ctx, "")
		startWorker(src, 100)
		history := []msg{
			identify("i1", "u1", 10, map[string]any{"email": "gone@x.io", "company": map[string]any{"id": "acme", "name": "Acme"}}),
			group("g1", "u1", "acme", 11, map[string]any{"plan": "pro"}),
			track("t1", "u1", "Report Built", 12, nil, nil),
			track("t2", "u1", "Report Built", 13, nil, nil),
			identify("i2", "u2", 10, nil),
			group("g2", "u2", "acme", 10, nil),
			track("t3", "u2", "Report Built", 14, nil, nil),
		}
		publish(ctx, src, history...)
		drained(ctx, src)
		Expect(count(ctx, `SELECT count FROM tally.event_catalog WHERE tenant = $1 AND event = 'Report Built'`, src.Tenant)).To(BeEquivalentTo(3))

		publish(ctx, src, deleteUser("del-1", "u1", 20))
		drained(ctx, src)
		Expect(count(ctx, `SELECT count(*) FROM tally.users WHERE tenant = $1 AND user_id = 'u1'`, src.Tenant)).To(BeZero())
		Expect(count(ctx, `SELECT count(*) FROM tally.account_users WHERE tenant = $1 AND user_id = 'u1'`, src.Tenant)).To(BeZero())
		Expect(count(ctx, `SELECT count(*) FROM tally.associations WHERE tenant = $1 AND user_id = 'u1'`, src.Tenant)).To(BeZero())
		Expect(count(ctx, `SELECT count(*) FROM tally.events WHERE tenant = $1 AND user_id = 'u1'`, src.Tenant)).To(BeZero())
		// The other user's rows and the account (account data, not the user's) stay; the account's
		// last_seen_at and the catalog no longer count the deleted events.
		Expect(count(ctx, `SELECT count(*) FROM tally.events WHERE tenant = $1 AND user_id = 'u2'`, src.Tenant)).To(BeEquivalentTo(1))
		acc := queryRow(ctx, `SELECT name, traits, last_seen_at FROM tally.accounts WHERE tenant = $1 AND account_id = 'acme'`, src.Tenant)
		Expect(acc["name"]).To(Equal("Acme"))
		Expect(acc["traits"]).To(HaveKeyWithValue("plan", "pro"))
		Expect(acc["last_seen_at"]).To(BeTemporally("==", ts(14)))
		catalog := queryRow(ctx, `SELECT count, first_seen_at, last_seen_at FROM tally.event_catalog WHERE tenant = $1 AND event = 'Report Built'`, src.Tenant)
		Expect(catalog["count"]).To(BeEquivalentTo(1))
		Expect(catalog["first_seen_at"]).To(BeTemporally("==", ts(14)))
		Expect(testutil.ToFloat64(testMetrics.usersDeleted.WithLabelValues(src.String()))).To(BeEquivalentTo(1))

		By("a replay of the user's history, and the deletion again, change nothing")
		before := dumpTenant(ctx, src.Tenant)
		replay(ctx, src, history...)
		replay(ctx, src, deleteUser("del-1", "u1", 20), deleteUser("del-0", "u1", 5))
		drained(ctx, src)
		Expect(dumpTenant(ctx, src.Tenant)).To(Equal(before))
		Expect(testutil.ToFloat64(testMetrics.usersDeleted.WithLabelValues(src.String()))).To(BeEquivalentTo(1))

		By("a message newer than the deletion starts the user afresh")
		publish(ctx, src, identify("i3", "u1", 30, map[string]any{"plan": "free"}), track("t4", "u1", "Report Built", 31, nil, nil))
		drained(ctx, src)
		u := queryRow(ctx, `SELECT traits, created_at, last_seen_at FROM tally.users WHERE tenant = $1 AND user_id = 'u1'`, src.Tenant)
		Expect(u["traits"]).To(Equal(map[string]any{"plan": "free"}))
		Expect(u["created_at"]).To(BeTemporally("==", ts(30)))
		Expect(u["last_seen_at"]).To(BeTemporally("==", ts(31)))
		Expect(count(ctx, `SELECT count(*) FROM tally.account_users WHERE tenant = $1 AND user_id = 'u1'`, src.Tenant)).To(BeZero())
	})

	It("arriving after newer messages, keep what those wrote and only that", func(ctx SpecContext) {
		src := newSource(ctx, "")
		startWorker(src, 100)
		publish(ctx, src,
			identify("i1", "u1", 10, map[string]any{"email": "old@x.io", "plan": "trial", "company": map[string]any{"id": "acme", "name": "Acme"}}),
			track("t1", "u1", "Signed In", 12, nil, nil),
			identify("i2", "u1", 30, map[string]any{"plan": "pro"}),
			group("g2", "u1", "globex", 32, map[string]any{"name": "Globex"}),
			track("t2", "u1", "Signed In", 31, nil, nil),
			track("t3", "u1", "Signed In", 33, nil, nil),
		)
		drained(ctx, src)
		Expect(queryRow(ctx, `SELECT account_id FROM tally.events WHERE tenant = $1 AND message_id = 't2'`, src.Tenant)["account_id"]).To(Equal("acme"))

		publish(ctx, src, deleteUser("del-1", "u1", 20))
		drained(ctx, src)
		u := queryRow(ctx, `SELECT traits, created_at, updated_at, last_seen_at FROM tally.users WHERE tenant = $1 AND user_id = 'u1'`, src.Tenant)
		Expect(u["traits"]).To(Equal(map[string]any{"plan": "pro"}), "the void identify's keys are gone")
		Expect(u["created_at"]).To(BeTemporally("==", ts(30)))
		Expect(u["updated_at"]).To(BeTemporally("==", ts(32)))
		Expect(u["last_seen_at"]).To(BeTemporally("==", ts(33)))
		Expect(queryRows(ctx, `SELECT message_id, account_id FROM tally.events WHERE tenant = $1 ORDER BY message_id`, src.Tenant)).To(Equal([]map[string]any{
			// t2 was the acme link's; that link is void, and before its first remaining link (globex
			// at 32) a track takes that link's account.
			{"message_id": "t2", "account_id": "globex"},
			{"message_id": "t3", "account_id": "globex"},
		}))
		Expect(queryRows(ctx, `SELECT account_id, linked FROM tally.account_users WHERE tenant = $1 AND user_id = 'u1'`, src.Tenant)).To(Equal([]map[string]any{
			{"account_id": "globex", "linked": true},
		}))
		Expect(queryRow(ctx, `SELECT last_seen_at FROM tally.accounts WHERE tenant = $1 AND account_id = 'acme'`, src.Tenant)["last_seen_at"]).
			To(BeTemporally("==", ts(10)), "acme keeps its own activity (the named company), no longer the moved or deleted tracks")
	})

	It("take the deleted user's anonymous events along, and void later-arriving older ones of that anonymousId", func(ctx SpecContext) {
		src := newSource(ctx, "")
		startWorker(src, 100)
		tie := identify("i1", "u1", 10, nil)
		tie["anonymousId"] = "anon-1"
		anonymous := func(id string, at float64) msg {
			m := track(id, "", "Viewed", at, nil, nil)
			m["anonymousId"] = "anon-1"
			return m
		}
		publish(ctx, src, tie, anonymous("a1", 11), anonymous("a2", 25))
		drained(ctx, src)
		Expect(count(ctx, `SELECT count(*) FROM tally.events WHERE tenant = $1 AND user_id = 'u1'`, src.Tenant)).To(BeEquivalentTo(2))

		publish(ctx, src, deleteUser("del-1", "u1", 20))
		drained(ctx, src)
		publish(ctx, src, anonymous("a0", 15), anonymous("a3", 26))
		drained(ctx, src)
		Expect(queryRows(ctx, `SELECT message_id, user_id FROM tally.events WHERE tenant = $1 ORDER BY message_id`, src.Tenant)).To(Equal([]map[string]any{
			{"message_id": "a2", "user_id": nil},
			{"message_id": "a3", "user_id": nil},
		}))
		Expect(count(ctx, `SELECT count(*) FROM tally.anonymous_ties WHERE tenant = $1`, src.Tenant)).To(BeZero())
		Expect(queryRows(ctx, `SELECT kind, id FROM tally.deletions WHERE tenant = $1 ORDER BY kind`, src.Tenant)).To(Equal([]map[string]any{
			{"kind": "anonymous", "id": "anon-1"},
			{"kind": "user", "id": "u1"},
		}))
	})

	It("are applied within one tenant: another tenant's user of the same id keeps its rows", func(ctx SpecContext) {
		src, other := newSource(ctx, ""), newSource(ctx, "")
		startWorker(src, 100)
		startWorker(other, 100)
		publish(ctx, other, identify("o1", "u1", 10, map[string]any{"plan": "pro"}), track("o2", "u1", "E", 11, nil, nil))
		publish(ctx, src, identify("i1", "u1", 10, nil), deleteUser("del-1", "u1", 20))
		drained(ctx, src)
		drained(ctx, other)
		Expect(count(ctx, `SELECT count(*) FROM tally.users WHERE tenant = $1`, src.Tenant)).To(BeZero())
		Expect(count(ctx, `SELECT count(*) FROM tally.users WHERE tenant = $1`, other.Tenant)).To(BeEquivalentTo(1))
		Expect(count(ctx, `SELECT count(*) FROM tally.events WHERE tenant = $1`, other.Tenant)).To(BeEquivalentTo(1))
	})

	// The order-independence property with deletions in the set: the rows equal those of one batch
	// holding every message (where the deletion voids its user's older messages before anything is
	// written), whatever the order, batching and concurrency. Two columns are estimates when the
	// deletion arrives after newer messages of its user (see tally.forget_user): users.created_at
	// (checked to lie between the exact value and updated_at) and the bookkeeping traits_oldest.
	for _, seed := range []uint64{5, 8, 13} {
		It(fmt.Sprintf("settle the same way in any order, batching and concurrency (seed %d)", seed), func(ctx SpecContext) {
			deleted := []string{"u1", "late0"}
			msgs := withDeletions(generateMessages(seed, 160), deleted, 18)
			reference := fmt.Sprintf("deletion-%d-reference", seed)
			applyDirect(ctx, reference, msgs, 1, len(msgs), nil)
			want := dumpTenant(ctx, reference)
			wantCreated := createdAt(ctx, reference, deleted)
			Expect(wantCreated).NotTo(BeEmpty(), "deleted users come back with newer messages")
			Expect(want).To(ContainSubstring(`deletions {"id": "u1"`))

			rng := rand.New(rand.NewPCG(seed, 3))
			for run := range 6 {
				order := slices.Clone(msgs)
				rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
				maxBatch, workers := 1+rng.IntN(25), 1+rng.IntN(3)
				tenant := fmt.Sprintf("deletion-%d-run%d", seed, run)
				By(fmt.Sprintf("run %d: shuffled, batches of up to %d, %d concurrent workers", run, maxBatch, workers))
				applyDirect(ctx, tenant, order, workers, maxBatch, rng)
				Expect(withoutEstimates(dumpTenant(ctx, tenant), deleted)).To(Equal(withoutEstimates(want, deleted)), "seed %d run %d", seed, run)
				for user, created := range createdAt(ctx, tenant, deleted) {
					Expect(created).To(BeTemporally(">=", wantCreated[user]), "seed %d run %d: %s", seed, run, user)
				}
			}
		})
	}
})

// withDeletions adds a deletion at ts for each of users, delivered twice, and an older deletion of
// the first; the deleted users' ties to anonymousIds are left out (an anonymousId tied to two users,
// one of them deleted, settles by arrival order: see the worker's doc).
func withDeletions(msgs [][]byte, users []string, ts float64) [][]byte {
	var out [][]byte
	for _, data := range msgs {
		m, err := segment.ParseNormalized(data)
		Expect(err).NotTo(HaveOccurred())
		if slices.Contains(users, m.UserID) && (m.Type == segment.TypeAlias || (m.Type == segment.TypeIdentify && m.AnonymousID != "")) {
			continue
		}
		out = append(out, data)
	}
	add := func(m msg) {
		data, err := json.Marshal(m)
		Expect(err).NotTo(HaveOccurred())
		out = append(out, data)
	}
	for _, u := range users {
		add(deleteUser("del-"+u, u, ts))
		add(deleteUser("del-"+u, u, ts))
	}
	add(deleteUser("del-early-"+users[0], users[0], ts/3))
	return out
}

// createdAt reads created_at of those of users that have a row.
func createdAt(ctx context.Context, tenant string, users []string) map[string]time.Time {
	out := map[string]time.Time{}
	for _, r := range queryRows(ctx, `SELECT user_id, created_at FROM tally.users WHERE tenant = $1 AND user_id = ANY($2)`, tenant, users) {
		out[r["user_id"].(string)] = r["created_at"].(time.Time)
	}
	return out
}

// withoutEstimates drops the estimated columns of the deleted users' rows from a dump.
func withoutEstimates(dump string, users []string) string {
	lines := strings.Split(dump, "\n")
	for i, line := range lines {
		row, ok := strings.CutPrefix(line, "users ")
		if !ok {
			continue
		}
		var u map[string]any
		Expect(json.Unmarshal([]byte(row), &u)).To(Succeed())
		if slices.Contains(users, u["user_id"].(string)) {
			delete(u, "created_at")
			delete(u, "traits_oldest")
			data, err := json.Marshal(u)
			Expect(err).NotTo(HaveOccurred())
			lines[i] = "users " + string(data)
		}
	}
	return strings.Join(lines, "\n")
}
