package worker

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Accounts, users and aliases: set-based writes merging each row with "newest version wins".

// entityArrays turns entity changes into the column arrays of an upsert.
type entityArrays struct {
	ids, traits, versions, names, nameVersions []string
	oldest, newest                             []*string // versions of the oldest and newest call that sent traits
	first, last                                []time.Time
	seen, lastSeen                             []*time.Time
}

// newEntityArrays also computes each row's last_seen_at candidate: its own activity and the
// newest event this transaction attributed to it (from eventMax).
func newEntityArrays(changes []*entityChange, eventMax map[string]time.Time) (entityArrays, error) {
	var e entityArrays
	for _, c := range changes {
		traits, err := json.Marshal(nonNil(c.Traits.values))
		if err != nil {
			return e, fmt.Errorf("%w: traits of %q: %v", errLocalData, c.ID, err)
		}
		versions, err := json.Marshal(nonNilVersions(c.Traits.versions))
		if err != nil {
			return e, fmt.Errorf("%w: trait versions of %q: %v", errLocalData, c.ID, err)
		}
		oldest, newest := c.Traits.versionRange()
		e.ids = append(e.ids, c.ID)
		e.traits = append(e.traits, string(traits))
		e.versions = append(e.versions, string(versions))
		e.oldest, e.newest = append(e.oldest, oldest), append(e.newest, newest)
		e.names = append(e.names, c.Name)
		e.nameVersions = append(e.nameVersions, c.NameVersion)
		e.first = append(e.first, c.FirstAt)
		e.last = append(e.last, c.LastAt)
		e.seen = append(e.seen, nonZero(c.SeenAt))
		e.lastSeen = append(e.lastSeen, nonZero(maxTime(c.SeenAt, eventMax[c.ID])))
	}
	return e, nil
}

// Accounts and users are upserted, each row merged with what is stored; every row takes its event
// maximum into last_seen_at. A row this statement inserted (xmax is 0 only on a row version
// inserted rather than updated) gets last_seen_at recomputed, as events about it may have been
// stored before it existed.

func (a *applier) accounts(b *pgx.Batch, f *folded) error {
	if len(f.Accounts) == 0 {
		return nil
	}
	e, err := newEntityArrays(f.Accounts, a.seen.accountEvents)
	if err != nil {
		return err
	}
	markAll(a.seen.upsertedAccounts, e.ids)
	b.Queue(upsertAccountsSQL, a.tenant, e.ids, e.names, e.nameVersions, e.traits, e.versions,
		e.oldest, e.newest, e.first, e.last, e.seen, e.lastSeen,
	).Query(a.collectInsertedAccounts)
	return nil
}

// collectInsertedAccounts notes the accounts this upsert inserted (their last_seen_at is
// recomputed) and counts those inserted without a name.
func (a *applier) collectInsertedAccounts(rows pgx.Rows) error {
	var id string
	var inserted, unnamed bool
	_, err := pgx.ForEachRow(rows, []any{&id, &inserted, &unnamed}, func() error {
		if inserted {
			a.seen.recomputeAccounts[id] = true
			a.insertedAccounts[id] = true
			if unnamed {
				a.unnamedCreated++
			}
		}
		return nil
	})
	return err
}

func (a *applier) users(b *pgx.Batch, f *folded) error {
	if len(f.Users) == 0 {
		return nil
	}
	e, err := newEntityArrays(f.Users, a.seen.userEvents)
	if err != nil {
		return err
	}
	markAll(a.seen.upsertedUsers, e.ids)
	b.Queue(upsertUsersSQL, a.tenant, e.ids, e.traits, e.versions, e.oldest, e.newest,
		e.first, e.last, e.seen, e.lastSeen,
	).Query(func(rows pgx.Rows) error { return collectInserted(rows, a.seen.recomputeUsers) })
	return nil
}

// collectInserted adds the ids of an upsert's (id, inserted) rows that were inserted to set.
func collectInserted(rows pgx.Rows, set map[string]bool) error {
	var id string
	var inserted bool
	_, err := pgx.ForEachRow(rows, []any{&id, &inserted}, func() error {
		if inserted {
			set[id] = true
		}
		return nil
	})
	return err
}

func markAll(set map[string]bool, ids []string) {
	for _, id := range ids {
		set[id] = true
	}
}

func (a *applier) aliases(b *pgx.Batch, f *folded) error {
	if len(f.Aliases) == 0 {
		return nil
	}
	n := len(f.Aliases)
	prev, users, first, last := make([]string, n), make([]string, n), make([]time.Time, n), make([]time.Time, n)
	for i, al := range f.Aliases {
		prev[i], users[i], first[i], last[i] = al.PreviousID, al.UserID, al.FirstAt, al.LastAt
	}
	b.Queue(`
		INSERT INTO tally.aliases AS al (tenant, previous_id, user_id, first_aliased_at, last_aliased_at)
		SELECT $1, t.previous_id, t.user_id, t.first_at, t.last_at
		FROM unnest($2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[]) AS t(previous_id, user_id, first_at, last_at)
		ORDER BY t.previous_id, t.user_id
		ON CONFLICT (tenant, previous_id, user_id) DO UPDATE SET
			first_aliased_at = least(al.first_aliased_at, EXCLUDED.first_aliased_at),
			last_aliased_at = greatest(al.last_aliased_at, EXCLUDED.last_aliased_at)`,
		a.tenant, prev, users, first, last)
	return nil
}

func nonNil(m map[string]json.RawMessage) map[string]json.RawMessage {
	if m == nil {
		return map[string]json.RawMessage{}
	}
	return m
}

func nonNilVersions(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

func nonZero(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}
