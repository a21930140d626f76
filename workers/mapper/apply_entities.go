package mapper

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Accounts, users and aliases: multi-row upserts merging each row with "newest version wins".

// entityArrays turns entity changes into the column arrays of an upsert.
type entityArrays struct {
	ids, traits, versions, names, nameVersions []string
	first, last                                []time.Time
	seen, lastSeen                             []*time.Time
}

// newEntityArrays also computes each row's last_seen_at candidate: its own activity and the
// newest event this transaction attributed to it (events, from eventMax).
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
		e.ids = append(e.ids, c.ID)
		e.traits = append(e.traits, string(traits))
		e.versions = append(e.versions, string(versions))
		e.names = append(e.names, c.Name)
		e.nameVersions = append(e.nameVersions, c.NameVersion)
		e.first = append(e.first, c.FirstAt)
		e.last = append(e.last, c.LastAt)
		e.seen = append(e.seen, nonZero(c.SeenAt))
		e.lastSeen = append(e.lastSeen, nonZero(maxTime(c.SeenAt, eventMax[c.ID])))
	}
	return e, nil
}

// mergeTraitsSQL sets traits and trait_versions of row r to their merge with EXCLUDED's, key by
// key, keeping the value whose version is newest (Segment's merge: a key sent as null becomes
// null, a key left out keeps its value), so merging is commutative. One pass over the incoming
// keys only, inline: a SQL function cannot be inlined here and costs several times more per row.
const mergeTraitsSQL = `(traits, trait_versions) = (
		SELECT r.traits || coalesce(jsonb_object_agg(n.k, EXCLUDED.traits -> n.k), '{}'),
			r.trait_versions || coalesce(jsonb_object_agg(n.k, n.v), '{}')
		FROM jsonb_each(EXCLUDED.trait_versions) AS n(k, v)
		WHERE n.v #>> '{}' COLLATE "C" > coalesce(r.trait_versions ->> n.k, '') COLLATE "C")`

func (a *applier) accounts(ctx context.Context, f *folded) error {
	if len(f.Accounts) == 0 {
		return nil
	}
	e, err := newEntityArrays(f.Accounts, a.seen.accountEvents)
	if err != nil {
		return err
	}
	// A name is set only by a named call, and the newest named call wins.
	rows, err := a.tx.Query(ctx, `
		INSERT INTO tally.accounts AS r
			(tenant, account_id, name, name_version, traits, trait_versions, created_at, updated_at, seen_at, last_seen_at)
		SELECT $1, t.id, nullif(t.name, ''), nullif(t.name_version, ''), t.traits::jsonb, t.versions::jsonb,
			t.first_at, t.last_at, t.seen_at, t.last_seen_at
		FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
			$7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[])
			AS t(id, name, name_version, traits, versions, first_at, last_at, seen_at, last_seen_at)
		ORDER BY t.id
		ON CONFLICT (tenant, account_id) DO UPDATE SET
			name = CASE WHEN coalesce(EXCLUDED.name_version > r.name_version, EXCLUDED.name_version IS NOT NULL)
				THEN EXCLUDED.name ELSE r.name END,
			name_version = greatest(r.name_version, EXCLUDED.name_version),
			`+mergeTraitsSQL+`,
			created_at = least(r.created_at, EXCLUDED.created_at),
			updated_at = greatest(r.updated_at, EXCLUDED.updated_at),
			seen_at = greatest(r.seen_at, EXCLUDED.seen_at),
			last_seen_at = greatest(r.last_seen_at, EXCLUDED.last_seen_at)
		RETURNING r.account_id, r.xmax = 0`,
		a.tenant, e.ids, e.names, e.nameVersions, e.traits, e.versions, e.first, e.last, e.seen, e.lastSeen)
	if err != nil {
		return err
	}
	return a.collectUpserted(rows, a.seen.upsertedAccounts, a.seen.recomputeAccounts)
}

func (a *applier) users(ctx context.Context, f *folded) error {
	if len(f.Users) == 0 {
		return nil
	}
	e, err := newEntityArrays(f.Users, a.seen.userEvents)
	if err != nil {
		return err
	}
	rows, err := a.tx.Query(ctx, `
		INSERT INTO tally.users AS r (tenant, user_id, traits, trait_versions, created_at, updated_at, seen_at, last_seen_at)
		SELECT $1, t.id, t.traits::jsonb, t.versions::jsonb, t.first_at, t.last_at, t.seen_at, t.last_seen_at
		FROM unnest($2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[], $7::timestamptz[],
			$8::timestamptz[])
			AS t(id, traits, versions, first_at, last_at, seen_at, last_seen_at)
		ORDER BY t.id
		ON CONFLICT (tenant, user_id) DO UPDATE SET
			`+mergeTraitsSQL+`,
			created_at = least(r.created_at, EXCLUDED.created_at),
			updated_at = greatest(r.updated_at, EXCLUDED.updated_at),
			seen_at = greatest(r.seen_at, EXCLUDED.seen_at),
			last_seen_at = greatest(r.last_seen_at, EXCLUDED.last_seen_at)
		RETURNING r.user_id, r.xmax = 0`,
		a.tenant, e.ids, e.traits, e.versions, e.first, e.last, e.seen, e.lastSeen)
	if err != nil {
		return err
	}
	return a.collectUpserted(rows, a.seen.upsertedUsers, a.seen.recomputeUsers)
}

// collectUpserted reads an upsert's (id, inserted) rows: every row took its event maximum, and a
// row inserted now is recomputed, as events about it may have been stored before it existed.
// (xmax is 0 exactly on a row version this statement inserted rather than updated.)
func (a *applier) collectUpserted(rows pgx.Rows, upserted, recompute map[string]bool) error {
	var id string
	var inserted bool
	_, err := pgx.ForEachRow(rows, []any{&id, &inserted}, func() error {
		upserted[id] = true
		if inserted {
			recompute[id] = true
		}
		return nil
	})
	return err
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
