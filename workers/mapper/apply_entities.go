package mapper

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Accounts, users and aliases: set-based writes merging each row with "newest version wins".

// entityArrays turns entity changes into the column arrays of an update or upsert.
type entityArrays struct {
	ids, traits, versions, names, nameVersions []string
	oldest, newest                             []*string // range of the versions in versions
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

// without returns the rows whose id is not in done.
func (e entityArrays) without(done map[string]bool) entityArrays {
	var out entityArrays
	for i, id := range e.ids {
		if done[id] {
			continue
		}
		out.ids = append(out.ids, id)
		out.traits, out.versions = append(out.traits, e.traits[i]), append(out.versions, e.versions[i])
		out.oldest, out.newest = append(out.oldest, e.oldest[i]), append(out.newest, e.newest[i])
		out.names, out.nameVersions = append(out.names, e.names[i]), append(out.nameVersions, e.nameVersions[i])
		out.first, out.last = append(out.first, e.first[i]), append(out.last, e.last[i])
		out.seen, out.lastSeen = append(out.seen, e.seen[i]), append(out.lastSeen, e.lastSeen[i])
	}
	return out
}

// Accounts and users are written in two steps. Existing rows are updated in place, where the
// batch's oldest trait version is at hand: when it is newer than the row's newest, the incoming
// traits simply overwrite, which costs a fraction of comparing key by key. The rows that did not
// exist are then inserted (as upserts, so the statement stays right even if one appeared
// meanwhile) and get last_seen_at recomputed, as events about them may have been stored before.

func (a *applier) accounts(ctx context.Context, f *folded) error {
	if len(f.Accounts) == 0 {
		return nil
	}
	e, err := newEntityArrays(f.Accounts, a.seen.accountEvents)
	if err != nil {
		return err
	}
	updated, err := a.queryIDs(ctx, updateAccountsSQL, a.tenant, e.ids, e.names, e.nameVersions, e.traits, e.versions,
		e.oldest, e.newest, e.first, e.last, e.seen, e.lastSeen)
	if err != nil {
		return err
	}
	if rest := e.without(updated); len(rest.ids) > 0 {
		if _, err := a.queryIDs(ctx, upsertAccountsSQL, a.tenant, rest.ids, rest.names, rest.nameVersions, rest.traits,
			rest.versions, rest.newest, rest.first, rest.last, rest.seen, rest.lastSeen); err != nil {
			return err
		}
		markAll(a.seen.recomputeAccounts, rest.ids)
	}
	markAll(a.seen.upsertedAccounts, e.ids)
	return nil
}

func (a *applier) users(ctx context.Context, f *folded) error {
	if len(f.Users) == 0 {
		return nil
	}
	e, err := newEntityArrays(f.Users, a.seen.userEvents)
	if err != nil {
		return err
	}
	updated, err := a.queryIDs(ctx, updateUsersSQL, a.tenant, e.ids, e.traits, e.versions, e.oldest, e.newest,
		e.first, e.last, e.seen, e.lastSeen)
	if err != nil {
		return err
	}
	if rest := e.without(updated); len(rest.ids) > 0 {
		if _, err := a.queryIDs(ctx, upsertUsersSQL, a.tenant, rest.ids, rest.traits, rest.versions, rest.newest,
			rest.first, rest.last, rest.seen, rest.lastSeen); err != nil {
			return err
		}
		markAll(a.seen.recomputeUsers, rest.ids)
	}
	markAll(a.seen.upsertedUsers, e.ids)
	return nil
}

// queryIDs runs a statement returning one id per row written.
func (a *applier) queryIDs(ctx context.Context, sql string, args ...any) (map[string]bool, error) {
	rows, err := a.tx.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	ids := map[string]bool{}
	var id string
	_, err = pgx.ForEachRow(rows, []any{&id}, func() error {
		ids[id] = true
		return nil
	})
	return ids, err
}

func markAll(set map[string]bool, ids []string) {
	for _, id := range ids {
		set[id] = true
	}
}

func (a *applier) aliases(ctx context.Context, f *folded) error {
	if len(f.Aliases) == 0 {
		return nil
	}
	n := len(f.Aliases)
	prev, users, first, last := make([]string, n), make([]string, n), make([]time.Time, n), make([]time.Time, n)
	for i, al := range f.Aliases {
		prev[i], users[i], first[i], last[i] = al.PreviousID, al.UserID, al.FirstAt, al.LastAt
	}
	_, err := a.tx.Exec(ctx, `
		INSERT INTO tally.aliases AS al (tenant, previous_id, user_id, first_aliased_at, last_aliased_at)
		SELECT $1, t.previous_id, t.user_id, t.first_at, t.last_at
		FROM unnest($2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[]) AS t(previous_id, user_id, first_at, last_at)
		ORDER BY t.previous_id, t.user_id
		ON CONFLICT (tenant, previous_id, user_id) DO UPDATE SET
			first_aliased_at = least(al.first_aliased_at, EXCLUDED.first_aliased_at),
			last_aliased_at = greatest(al.last_aliased_at, EXCLUDED.last_aliased_at)`,
		a.tenant, prev, users, first, last)
	return err
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
