package mapper

import "fmt"

// The statements writing accounts and users. Every one merges with "newest version wins", so
// the result does not depend on the order batches commit in.

// mergeTraitsSQL merges the stored traits of row r with incoming ones (in: traits, versions),
// key by key, keeping the value whose version is newest (Segment's merge: a key sent as null
// becomes null, a key left out keeps its value), so merging is commutative. Inline subqueries: a
// SQL function cannot be inlined here and costs several times more per row.
func mergeTraitsSQL(in string) string {
	return fmt.Sprintf(`r.traits || (SELECT coalesce(jsonb_object_agg(n.k, %[1]s.traits -> n.k), '{}')
					FROM jsonb_each_text(%[1]s.trait_versions) AS n(k, v)
					WHERE n.v COLLATE "C" > coalesce(r.trait_versions ->> n.k, '') COLLATE "C")`, in)
}

func mergeVersionsSQL(in string) string {
	return fmt.Sprintf(`r.trait_versions || (SELECT coalesce(jsonb_object_agg(n.k, n.v), '{}')
					FROM jsonb_each(%[1]s.trait_versions) AS n(k, v)
					WHERE n.v #>> '{}' COLLATE "C" > coalesce(r.trait_versions ->> n.k, '') COLLATE "C")`, in)
}

// updateTraitsSQL is the SET of the traits columns in an update from incoming rows t: when every
// incoming version is newer than every stored one (the usual case: messages arrive about in
// order), the incoming keys simply overwrite; else they are merged key by key.
var updateTraitsSQL = `
			traits = CASE WHEN t.oldest > coalesce(r.traits_newest, '') COLLATE "C" THEN r.traits || t.traits
				ELSE ` + mergeTraitsSQL("t") + ` END,
			trait_versions = CASE WHEN t.oldest > coalesce(r.traits_newest, '') COLLATE "C" THEN r.trait_versions || t.trait_versions
				ELSE ` + mergeVersionsSQL("t") + ` END,
			traits_newest = greatest(r.traits_newest, t.newest)`

// A name is set only by a named call, and the newest named call wins.
var updateAccountsSQL = `
		UPDATE tally.accounts AS r SET
			name = CASE WHEN coalesce(t.name_version > r.name_version, t.name_version IS NOT NULL) THEN t.name ELSE r.name END,
			name_version = greatest(r.name_version, t.name_version),` + updateTraitsSQL + `,
			created_at = least(r.created_at, t.first_at),
			updated_at = greatest(r.updated_at, t.last_at),
			seen_at = greatest(r.seen_at, t.seen_at),
			last_seen_at = greatest(r.last_seen_at, t.last_seen_at)
		FROM (
			SELECT u.id, nullif(u.name, '') AS name, nullif(u.name_version, '') COLLATE "C" AS name_version,
				u.traits, u.trait_versions, u.oldest COLLATE "C" AS oldest, u.newest COLLATE "C" AS newest,
				u.first_at, u.last_at, u.seen_at, u.last_seen_at
			FROM unnest($2::text[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[], $7::text[], $8::text[],
				$9::timestamptz[], $10::timestamptz[], $11::timestamptz[], $12::timestamptz[])
				AS u(id, name, name_version, traits, trait_versions, oldest, newest, first_at, last_at, seen_at, last_seen_at)
		) t
		WHERE r.tenant = $1 AND r.account_id = t.id
		RETURNING r.account_id`

var upsertAccountsSQL = `
		INSERT INTO tally.accounts AS r
			(tenant, account_id, name, name_version, traits, trait_versions, traits_newest,
			 created_at, updated_at, seen_at, last_seen_at)
		SELECT $1, t.id, nullif(t.name, ''), nullif(t.name_version, ''), t.traits, t.trait_versions, t.newest,
			t.first_at, t.last_at, t.seen_at, t.last_seen_at
		FROM unnest($2::text[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[], $7::text[],
			$8::timestamptz[], $9::timestamptz[], $10::timestamptz[], $11::timestamptz[])
			AS t(id, name, name_version, traits, trait_versions, newest, first_at, last_at, seen_at, last_seen_at)
		ORDER BY t.id
		ON CONFLICT (tenant, account_id) DO UPDATE SET
			name = CASE WHEN coalesce(EXCLUDED.name_version > r.name_version, EXCLUDED.name_version IS NOT NULL)
				THEN EXCLUDED.name ELSE r.name END,
			name_version = greatest(r.name_version, EXCLUDED.name_version),
			traits = ` + mergeTraitsSQL("EXCLUDED") + `,
			trait_versions = ` + mergeVersionsSQL("EXCLUDED") + `,
			traits_newest = greatest(r.traits_newest, EXCLUDED.traits_newest),
			created_at = least(r.created_at, EXCLUDED.created_at),
			updated_at = greatest(r.updated_at, EXCLUDED.updated_at),
			seen_at = greatest(r.seen_at, EXCLUDED.seen_at),
			last_seen_at = greatest(r.last_seen_at, EXCLUDED.last_seen_at)
		RETURNING r.account_id`

var updateUsersSQL = `
		UPDATE tally.users AS r SET` + updateTraitsSQL + `,
			created_at = least(r.created_at, t.first_at),
			updated_at = greatest(r.updated_at, t.last_at),
			seen_at = greatest(r.seen_at, t.seen_at),
			last_seen_at = greatest(r.last_seen_at, t.last_seen_at)
		FROM (
			SELECT u.id, u.traits, u.trait_versions, u.oldest COLLATE "C" AS oldest, u.newest COLLATE "C" AS newest,
				u.first_at, u.last_at, u.seen_at, u.last_seen_at
			FROM unnest($2::text[], $3::jsonb[], $4::jsonb[], $5::text[], $6::text[],
				$7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[])
				AS u(id, traits, trait_versions, oldest, newest, first_at, last_at, seen_at, last_seen_at)
		) t
		WHERE r.tenant = $1 AND r.user_id = t.id
		RETURNING r.user_id`

var upsertUsersSQL = `
		INSERT INTO tally.users AS r (tenant, user_id, traits, trait_versions, traits_newest,
			created_at, updated_at, seen_at, last_seen_at)
		SELECT $1, t.id, t.traits, t.trait_versions, t.newest, t.first_at, t.last_at, t.seen_at, t.last_seen_at
		FROM unnest($2::text[], $3::jsonb[], $4::jsonb[], $5::text[],
			$6::timestamptz[], $7::timestamptz[], $8::timestamptz[], $9::timestamptz[])
			AS t(id, traits, trait_versions, newest, first_at, last_at, seen_at, last_seen_at)
		ORDER BY t.id
		ON CONFLICT (tenant, user_id) DO UPDATE SET
			traits = ` + mergeTraitsSQL("EXCLUDED") + `,
			trait_versions = ` + mergeVersionsSQL("EXCLUDED") + `,
			traits_newest = greatest(r.traits_newest, EXCLUDED.traits_newest),
			created_at = least(r.created_at, EXCLUDED.created_at),
			updated_at = greatest(r.updated_at, EXCLUDED.updated_at),
			seen_at = greatest(r.seen_at, EXCLUDED.seen_at),
			last_seen_at = greatest(r.last_seen_at, EXCLUDED.last_seen_at)
		RETURNING r.user_id`
