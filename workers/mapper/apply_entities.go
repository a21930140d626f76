package mapper

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// Accounts, users and aliases: multi-row upserts merging each row with "newest version wins".

// entityArrays turns entity changes into the column arrays of an upsert.
type entityArrays struct {
	ids, traits, versions, names, nameVersions []string
	nameSet                                    []bool
	first, last                                []time.Time
	seen                                       []*time.Time
}

func newEntityArrays(changes []*entityChange) (entityArrays, error) {
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
		var seen *time.Time
		if !c.SeenAt.IsZero() {
			t := c.SeenAt
			seen = &t
		}
		e.seen = append(e.seen, seen)
	}
	return e, nil
}

func (a *applier) accounts(ctx context.Context, f *folded) error {
	if len(f.Accounts) == 0 {
		return nil
	}
	e, err := newEntityArrays(f.Accounts)
	if err != nil {
		return err
	}
	for _, id := range e.ids {
		a.touchedAccounts[id] = true
	}
	// A name is set only by a named call, and the newest named call wins.
	_, err = a.tx.Exec(ctx, `
		INSERT INTO tally.accounts AS acc
			(tenant, account_id, name, name_version, traits, trait_versions, created_at, updated_at, seen_at)
		SELECT $1, t.id, nullif(t.name, ''), nullif(t.name_version, ''), t.traits::jsonb, t.versions::jsonb,
			t.first_at, t.last_at, t.seen_at
		FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
			$7::timestamptz[], $8::timestamptz[], $9::timestamptz[])
			AS t(id, name, name_version, traits, versions, first_at, last_at, seen_at)
		ORDER BY t.id
		ON CONFLICT (tenant, account_id) DO UPDATE SET
			name = CASE WHEN coalesce(EXCLUDED.name_version > acc.name_version, EXCLUDED.name_version IS NOT NULL)
				THEN EXCLUDED.name ELSE acc.name END,
			name_version = greatest(acc.name_version, EXCLUDED.name_version),
			traits = tally.merge_traits(acc.traits, acc.trait_versions, EXCLUDED.traits, EXCLUDED.trait_versions),
			trait_versions = tally.merge_versions(acc.trait_versions, EXCLUDED.trait_versions),
			created_at = least(acc.created_at, EXCLUDED.created_at),
			updated_at = greatest(acc.updated_at, EXCLUDED.updated_at),
			seen_at = greatest(acc.seen_at, EXCLUDED.seen_at)`,
		a.tenant, e.ids, e.names, e.nameVersions, e.traits, e.versions, e.first, e.last, e.seen)
	return err
}

func (a *applier) users(ctx context.Context, f *folded) error {
	if len(f.Users) == 0 {
		return nil
	}
	e, err := newEntityArrays(f.Users)
	if err != nil {
		return err
	}
	for _, id := range e.ids {
		a.touchedUsers[id] = true
	}
	_, err = a.tx.Exec(ctx, `
		INSERT INTO tally.users AS u (tenant, user_id, traits, trait_versions, created_at, updated_at, seen_at)
		SELECT $1, t.id, t.traits::jsonb, t.versions::jsonb, t.first_at, t.last_at, t.seen_at
		FROM unnest($2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[], $7::timestamptz[])
			AS t(id, traits, versions, first_at, last_at, seen_at)
		ORDER BY t.id
		ON CONFLICT (tenant, user_id) DO UPDATE SET
			traits = tally.merge_traits(u.traits, u.trait_versions, EXCLUDED.traits, EXCLUDED.trait_versions),
			trait_versions = tally.merge_versions(u.trait_versions, EXCLUDED.trait_versions),
			created_at = least(u.created_at, EXCLUDED.created_at),
			updated_at = greatest(u.updated_at, EXCLUDED.updated_at),
			seen_at = greatest(u.seen_at, EXCLUDED.seen_at)`,
		a.tenant, e.ids, e.traits, e.versions, e.first, e.last, e.seen)
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
