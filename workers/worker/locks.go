package worker

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/tallyhq/tally/workers/segment"
	"github.com/tallyhq/tally/workers/stream"
)

// Locks. A tenant's transactions used to lock the whole tenant; now each locks the slots of the
// users it touches (stream.Slot of a userId or anonymousId, rows s00..s63 of tally.tenant_locks),
// so batches of different partitions (whose users have different slots) run at once. The rule
// that keeps the mapping's cross-row steps right: a transaction writes or reads the rows of a user
// or anonymousId (its events, ties, links, last_seen_at) only while holding that identity's slot.
//
//   - A message's own user (userId, else anonymousId) is known from the batch.
//   - The user an anonymous event is attributed to, and the user an anonymousId's tie moves away
//     from, are read from tally.anonymous_ties before locking (ties change only under the
//     anonymousId's slot), then read again under the locks.
//   - Whatever the transaction then finds it touched (moved events, tied anonymousIds, the users
//     of inserted events) is checked against the slots it holds; a miss rolls the transaction
//     back, and it is tried again with those slots too (errLockSetGrew).
//   - Deletions lock every slot: they are rare and touch everything.
//
// Accounts are shared by the users of many partitions. A transaction that writes any account
// first takes its tenant's accounts row (lockAccounts, near its end, after the event catalog):
// the upsert and the raise of last_seen_at each lock account rows in an order of their own, and
// two partitions whose upserted and raised accounts crossed deadlocked. The catalog's rows
// already order most transactions' ends (batches name the same events), so the tenant-wide row
// costs little where it matters. last_seen_at also needs a lock where a maximum is not enough:
// an account created while another transaction attributes an event to it, and a recompute racing
// a raise. Those take a lock row per account (a:<id>) and the account's row lock before the
// recompute (settleAccounts), as a worker of the previous version does. Slots are taken first in
// one sorted statement, the accounts row and the account locks later, so transactions do not
// deadlock on them (a deadlock Postgres still finds elsewhere is retried as contention).

// lockSet is what a transaction locks: every slot, or some.
type lockSet struct {
	all   bool
	slots map[int]bool
}

func newLockSet() lockSet { return lockSet{slots: map[int]bool{}} }

func (l lockSet) add(identity string) {
	if identity != "" {
		l.slots[stream.Slot(identity)] = true
	}
}

func (l lockSet) holds(identity string) bool { return l.all || l.slots[stream.Slot(identity)] }

// keys are the slots' lock keys, sorted (the order they are locked in).
func (l lockSet) keys() []string {
	var keys []string
	for s := range stream.Slots {
		if l.all || l.slots[s] {
			keys = append(keys, slotKey(s))
		}
	}
	return keys
}

func (l lockSet) merge(other lockSet) lockSet {
	out := lockSet{all: l.all || other.all, slots: maps.Clone(l.slots)}
	maps.Copy(out.slots, other.slots)
	return out
}

func slotKey(slot int) string { return fmt.Sprintf("s%02d", slot) }

func accountKey(id string) string { return "a:" + id }

// accountsKey is the lock row of all the tenant's accounts (no account key has this form).
const accountsKey = "accounts"

// lockAccounts takes the tenant's accounts row when the transaction writes an account: one it
// upserts, raises or recomputes (those of moved events are known by now).
func (a *applier) lockAccounts(b *pgx.Batch, f *folded) error {
	if len(f.Accounts) > 0 || len(a.seen.accountEvents) > 0 || len(a.seen.recomputeAccounts) > 0 {
		queueLockRows(b, a.tenant, []string{accountsKey})
	}
	return nil
}

// baseLocks are the slots a batch needs from its messages alone.
func baseLocks(f *folded) lockSet {
	l := newLockSet()
	for _, m := range f.messages {
		switch {
		case m.Type == segment.TypeDelete:
			l.all = true
		case m.UserID != "":
			l.add(m.UserID)
		default:
			l.add(m.AnonymousID)
		}
		if m.Type == segment.TypeAlias {
			l.add(m.PreviousID)
		}
	}
	return l
}

// tieLookups are the anonymousIds whose stored ties decide more slots: those of events without a
// userId (their tied user's slot) and those the batch ties (their own slot, and the slot of the
// user a tie moves them away from).
func tieLookups(f *folded) []string {
	ids := map[string]bool{}
	for _, m := range f.messages {
		if m.UserID == "" && m.AnonymousID != "" {
			ids[m.AnonymousID] = true
		}
	}
	for _, t := range f.Ties {
		ids[t.AnonymousID] = true
	}
	return slices.Sorted(maps.Keys(ids))
}

// storedTie is an anonymousId's tie as stored.
type storedTie struct{ user, version string }

// queueTieLookup reads the stored ties of ids into into.
func queueTieLookup(b *pgx.Batch, tenant string, ids []string, into map[string]storedTie) {
	b.Queue(`SELECT anonymous_id, user_id, version FROM tally.anonymous_ties WHERE tenant = $1 AND anonymous_id = ANY($2::text[])`,
		tenant, ids,
	).Query(func(rows pgx.Rows) error {
		var anon string
		var t storedTie
		_, err := pgx.ForEachRow(rows, []any{&anon, &t.user, &t.version}, func() error {
			into[anon] = t
			return nil
		})
		return err
	})
}

// tieLocks are the slots the stored ties add: an anonymous event's tied user; for a tie of the
// batch that will change the stored one, the anonymousId and the user it leaves.
func tieLocks(f *folded, stored map[string]storedTie) lockSet {
	l := newLockSet()
	for _, m := range f.messages {
		if m.UserID == "" && m.AnonymousID != "" {
			if t, ok := stored[m.AnonymousID]; ok {
				l.add(t.user)
			}
		}
	}
	for _, t := range f.Ties {
		cur, ok := stored[t.AnonymousID]
		if !ok || t.Version < cur.version {
			l.add(t.AnonymousID)
			if ok {
				l.add(cur.user)
			}
		}
	}
	return l
}

// errLockSetGrew rolls back a transaction that found it must touch a user whose slot it does not
// hold (a tie changed between the look-up and the locks); it is tried again with more.
type errLockSetGrew struct{ more lockSet }

func (e *errLockSetGrew) Error() string {
	return fmt.Sprintf("the batch needs %d more lock slots", len(e.more.slots))
}

func asLockSetGrew(err error) (*errLockSetGrew, bool) {
	var grew *errLockSetGrew
	ok := errors.As(err, &grew)
	return grew, ok
}

// queueLockRows locks the tenant's rows of tally.tenant_locks with the given keys, sorted,
// creating them the first time (a concurrent creator waits on the primary key, then both queue on
// the row lock).
func queueLockRows(b *pgx.Batch, tenant string, keys []string) {
	b.Queue(`INSERT INTO tally.tenant_locks (tenant, lock_key) SELECT $1, k FROM unnest($2::text[]) AS k ORDER BY k ON CONFLICT DO NOTHING`,
		tenant, keys)
	b.Queue(`SELECT 1 FROM tally.tenant_locks WHERE tenant = $1 AND lock_key = ANY($2::text[]) ORDER BY lock_key FOR UPDATE`,
		tenant, keys)
}

// missingSlots lists the identities the transaction touched without holding their slot.
func (a *applier) missingSlots() lockSet {
	more := newLockSet()
	check := func(id string) {
		if !a.locks.holds(id) {
			more.add(id)
		}
	}
	for id := range a.seen.userEvents {
		check(id)
	}
	for id := range a.seen.recomputeUsers {
		check(id)
	}
	for id := range a.tiedAnonymous {
		check(id)
	}
	return more
}
