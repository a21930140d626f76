package worker

import (
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// last_seen_at of an account or user is the newest of its own activity calls (seen_at) and of the
// events attributed to it. It is kept as a running maximum, which arrival order cannot change (max
// is commutative and idempotent), and recomputed from the events only where a maximum is not
// enough: a row created now (events about it may have been stored before it existed) and an
// account or user a re-resolved or re-attributed event moved away from (that event may have been
// its newest).

// lastSeenChanges collects what this transaction did to last_seen_at, for the steps that write it.
type lastSeenChanges struct {
	accountEvents map[string]time.Time // newest event this transaction attributed to the account
	userEvents    map[string]time.Time // newest event of the user this transaction inserted
	// upserted: rows whose upsert takes their event maximum into last_seen_at.
	upsertedAccounts, upsertedUsers map[string]bool
	// recompute: rows to recompute from the events.
	recomputeAccounts, recomputeUsers map[string]bool
}

func newLastSeenChanges() lastSeenChanges {
	return lastSeenChanges{
		accountEvents: map[string]time.Time{}, userEvents: map[string]time.Time{},
		upsertedAccounts: map[string]bool{}, upsertedUsers: map[string]bool{},
		recomputeAccounts: map[string]bool{}, recomputeUsers: map[string]bool{},
	}
}

func (s *lastSeenChanges) accountEvent(id string, at time.Time) {
	s.accountEvents[id] = maxTime(s.accountEvents[id], at)
}

func (s *lastSeenChanges) userEvent(id string, at time.Time) {
	s.userEvents[id] = maxTime(s.userEvents[id], at)
}

// raiseUserLastSeen and raiseAccountLastSeen take the events' maximum into last_seen_at of the
// existing rows not upserted now. A row that does not exist yet is left alone: its creation
// recomputes it. A user's creation and its raises hold the user's slot; an account may be
// created by a transaction of another partition at this very moment, so the accounts the raise
// did not find are raised again under their lock rows (settleAccounts).
func (a *applier) raiseUserLastSeen(b *pgx.Batch, _ *folded) error {
	a.queueRaise(b, "users", "user_id", a.seen.userEvents, a.seen.upsertedUsers, nil)
	return nil
}

func (a *applier) raiseAccountLastSeen(b *pgx.Batch, _ *folded) error {
	a.queueRaise(b, "accounts", "account_id", a.seen.accountEvents, a.seen.upsertedAccounts, a.missingAccounts)
	return nil
}

// settleAccounts makes the accounts' last_seen_at right whatever other partitions do at the same
// time. It takes the lock rows of the accounts this transaction created and of those its raise
// did not find, so a creation and a raise of one account never both miss the other's events: the
// raise is tried again under the lock, when a creation it waited for has committed, and the
// creation's recompute (next round) starts after any raise holding the lock committed. It also
// locks the rows of the accounts to recompute, so their recompute reads the events of every
// raise that got to the row first.
func (a *applier) settleAccounts(b *pgx.Batch, _ *folded) error {
	locks := map[string]bool{}
	for id := range a.insertedAccounts {
		locks[id] = true
	}
	for id := range a.missingAccounts {
		locks[id] = true
	}
	if len(locks) > 0 {
		keys := make([]string, 0, len(locks))
		for _, id := range slices.Sorted(maps.Keys(locks)) {
			keys = append(keys, accountKey(id))
		}
		queueLockRows(b, a.tenant, keys)
	}
	if len(a.missingAccounts) > 0 {
		again := make(map[string]time.Time, len(a.missingAccounts))
		for id := range a.missingAccounts {
			again[id] = a.seen.accountEvents[id]
		}
		a.queueRaise(b, "accounts", "account_id", again, nil, nil)
	}
	if len(a.seen.recomputeAccounts) > 0 {
		b.Queue(`SELECT 1 FROM tally.accounts WHERE tenant = $1 AND account_id = ANY($2::text[]) ORDER BY account_id FOR NO KEY UPDATE`,
			a.tenant, slices.Sorted(maps.Keys(a.seen.recomputeAccounts)))
	}
	return nil
}

// recomputeLastSeen sets last_seen_at of the rows that need it from their own calls and events.
func (a *applier) recomputeLastSeen(b *pgx.Batch, _ *folded) error {
	a.queueRecompute(b, "accounts", "account_id", a.seen.recomputeAccounts)
	a.queueRecompute(b, "users", "user_id", a.seen.recomputeUsers)
	return nil
}

// queueRaise raises last_seen_at of the rows of events not upserted; when missing is set, it
// learns the ids no row exists for (in the statement's snapshot: another transaction may be
// creating them).
func (a *applier) queueRaise(b *pgx.Batch, table, idColumn string, events map[string]time.Time, upserted, missing map[string]bool) {
	var ids []string
	var ats []time.Time
	for _, id := range slices.Sorted(maps.Keys(events)) {
		if !upserted[id] {
			ids, ats = append(ids, id), append(ats, events[id])
		}
	}
	if len(ids) == 0 {
		return
	}
	if missing == nil {
		b.Queue(fmt.Sprintf(`
			UPDATE tally.%[1]s r SET last_seen_at = t.at
			FROM unnest($2::text[], $3::timestamptz[]) AS t(id, at)
			WHERE r.tenant = $1 AND r.%[2]s = t.id AND (r.last_seen_at IS NULL OR r.last_seen_at < t.at)`,
			table, idColumn), a.tenant, ids, ats)
		return
	}
	b.Queue(fmt.Sprintf(`
		WITH t AS MATERIALIZED (SELECT * FROM unnest($2::text[], $3::timestamptz[]) AS t(id, at)),
		raised AS (
			UPDATE tally.%[1]s r SET last_seen_at = t.at FROM t
			WHERE r.tenant = $1 AND r.%[2]s = t.id AND (r.last_seen_at IS NULL OR r.last_seen_at < t.at)
		)
		SELECT t.id FROM t LEFT JOIN tally.%[1]s r ON r.tenant = $1 AND r.%[2]s = t.id WHERE r.%[2]s IS NULL`,
		table, idColumn), a.tenant, ids, ats,
	).Query(func(rows pgx.Rows) error {
		var id string
		_, err := pgx.ForEachRow(rows, []any{&id}, func() error {
			missing[id] = true
			return nil
		})
		return err
	})
}

func (a *applier) queueRecompute(b *pgx.Batch, table, idColumn string, rows map[string]bool) {
	if len(rows) == 0 {
		return
	}
	b.Queue(fmt.Sprintf(`
		UPDATE tally.%[1]s r SET last_seen_at = s.seen
		FROM (
			SELECT r2.%[2]s AS id, greatest(r2.seen_at,
				(SELECT max(e.timestamp) FROM tally.events e WHERE e.tenant = $1 AND e.%[2]s = r2.%[2]s)) AS seen
			FROM tally.%[1]s r2
			WHERE r2.tenant = $1 AND r2.%[2]s = ANY($2::text[])
		) s
		WHERE r.tenant = $1 AND r.%[2]s = s.id AND r.last_seen_at IS DISTINCT FROM s.seen`,
		table, idColumn), a.tenant, slices.Sorted(maps.Keys(rows)))
}
