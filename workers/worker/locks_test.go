package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/workers/segment"
	"github.com/tallyhq/tally/workers/stream"
)

// The races partitions open, provoked on purpose: two transactions of one tenant whose users have
// different lock slots run at the same moment, one creating an account, the other attributing a
// newer event to it. Without the accounts' lock rows the creator recomputes last_seen_at from
// events it cannot see yet while the other's raise finds no row, and the newer event is lost.
var _ = Describe("Concurrent partitions of one tenant", func() {
	It("never lose an account's last_seen_at to a creation racing an event in another partition", func(ctx SpecContext) {
		tenant := fmt.Sprintf("race-%d", sourceSeq.Add(1))
		creator, visitor := usersInDifferentSlots()
		for round := range 60 {
			account := fmt.Sprintf("acc-%d", round)
			created := foldOf(group(fmt.Sprintf("g%d", round), creator, account, 10, map[string]any{"name": "A"}))
			seen := foldOf(track(fmt.Sprintf("t%d", round), visitor, "Used", 20, nil, map[string]any{"groupId": account}))
			var wg sync.WaitGroup
			start := make(chan struct{})
			for _, f := range []*folded{created, seen} {
				wg.Go(func() {
					defer GinkgoRecover()
					<-start
					applyUntilDone(ctx, tenant, f)
				})
			}
			close(start)
			wg.Wait()
			row := queryRow(ctx, `SELECT last_seen_at FROM tally.accounts WHERE tenant = $1 AND account_id = $2`, tenant, account)
			Expect(row["last_seen_at"]).To(BeTemporally("==", ts(20)), "round %d: the track's time", round)
		}
	})

	It("take their tenant's accounts row before writing accounts, so one's upsert crossing the other's raise does not deadlock", func(ctx SpecContext) {
		tenant := fmt.Sprintf("cross-%d", sourceSeq.Add(1))
		one, other := usersInDifferentSlots()
		const accounts, rounds = 40, 5
		// name is the i-th id of a round under prefix; zero-padded, so the last is the greatest.
		name := func(prefix string, round, i int) string { return fmt.Sprintf("%s-%d-%02d", prefix, round, i) }
		batch := func(round int, user, upserted, raised, event string) *folded {
			var msgs []msg
			for i := range accounts {
				id := name(user, round, i)
				msgs = append(msgs,
					group("g"+id, user, name(upserted, round, i), float64(10+round), map[string]any{"plan": round}),
					track("t"+id, user, event, float64(20+round), nil, map[string]any{"groupId": name(raised, round, i)}))
			}
			return foldOf(msgs...)
		}
		deadlocks := 0
		for round := range rounds {
			var existing []msg // both sets of accounts exist, so each transaction raises rows the other upserts
			for i := range accounts {
				existing = append(existing, group(name("ga", round, i), "setup", name("a", round, i), 1, nil),
					group(name("gb", round, i), "setup", name("b", round, i), 1, nil))
			}
			applyUntilDone(ctx, tenant, foldOf(existing...))
			// Line the two up: the last account each upserts is held here, so each has locked the
			// others it upserts when both go on to raise the other's (what the scheduler makes
			// rare, made certain). Different event names: their catalog rows do not order them.
			hold, err := testPool.Begin(ctx)
			Expect(err).NotTo(HaveOccurred())
			DeferCleanup(func() { _ = hold.Rollback(context.Background()) }) // a no-op once committed
			_, err = hold.Exec(ctx, `SELECT 1 FROM tally.accounts WHERE tenant = $1 AND account_id = ANY($2::text[]) FOR UPDATE`,
				tenant, []string{name("a", round, accounts-1), name("b", round, accounts-1)})
			Expect(err).NotTo(HaveOccurred())
			crossing := []*folded{batch(round, one, "a", "b", "Left"), batch(round, other, "b", "a", "Right")}
			var wg sync.WaitGroup
			var mu sync.Mutex
			for _, f := range crossing {
				wg.Go(func() {
					defer GinkgoRecover()
					_, err := apply(ctx, testPool, tenant, "test/cross", f, testBounds, newLockSet())
					if isDeadlock(err) {
						mu.Lock()
						deadlocks++
						mu.Unlock()
					}
					applyUntilDone(ctx, tenant, f) // whatever happened, the batch lands
				})
			}
			Eventually(func() any {
				return queryRow(ctx, `SELECT count(*) AS n FROM pg_stat_activity
					WHERE datname = current_database() AND cardinality(pg_blocking_pids(pid)) > 0`)["n"]
			}).WithTimeout(10*time.Second).Should(BeEquivalentTo(2), "both transactions wait (on the held accounts, or one on the other)")
			Expect(hold.Commit(ctx)).To(Succeed())
			wg.Wait()
		}
		Expect(deadlocks).To(BeZero())
		row := queryRow(ctx, `SELECT count(*) AS n FROM tally.accounts WHERE tenant = $1 AND last_seen_at >= $2`, tenant, ts(20))
		Expect(row["n"]).To(BeEquivalentTo(rounds*2*accounts), "every account raised to its track's time")
	})

	It("lock the slots of a batch's users, of the users its anonymous events are tied to, and every slot for a deletion", func(ctx SpecContext) {
		tenant := fmt.Sprintf("locks-%d", sourceSeq.Add(1))
		applyUntilDone(ctx, tenant, foldOf(msg{"type": "identify", "messageId": "i1", "userId": "u1", "anonymousId": "a1",
			"timestamp": at(1), "receivedAt": at(2)}))
		anonymous := foldOf(msg{"type": "track", "messageId": "t1", "anonymousId": "a1", "event": "E", "timestamp": at(3), "receivedAt": at(4)})
		Expect(baseLocks(anonymous).keys()).To(Equal([]string{slotKey(stream.Slot("a1"))}))
		stored := map[string]storedTie{}
		b := &pgx.Batch{}
		queueTieLookup(b, tenant, tieLookups(anonymous), stored)
		Expect(testPool.SendBatch(ctx, b).Close()).To(Succeed())
		Expect(tieLocks(anonymous, stored).holds("u1")).To(BeTrue(), "the tied user's slot")

		deletion := foldOf(msg{"type": "delete", "messageId": "d1", "userId": "u1", "timestamp": at(5), "receivedAt": at(6)})
		Expect(baseLocks(deletion).keys()).To(HaveLen(stream.Slots))
	})
})

func isDeadlock(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "40P01"
}

// usersInDifferentSlots are two userIds whose lock slots differ.
func usersInDifferentSlots() (string, string) {
	for i := 1; ; i++ {
		other := fmt.Sprintf("user-%d", i)
		if stream.Slot(other) != stream.Slot("user-0") {
			return "user-0", other
		}
	}
}

// foldOf folds messages as a worker does with a batch of them.
func foldOf(msgs ...msg) *folded {
	GinkgoHelper()
	var parsed []*segment.Message
	for _, m := range msgs {
		data, err := json.Marshal(m)
		Expect(err).NotTo(HaveOccurred())
		p, err := segment.ParseNormalized(data)
		Expect(err).NotTo(HaveOccurred())
		parsed = append(parsed, &p)
	}
	return fold(parsed, "")
}
