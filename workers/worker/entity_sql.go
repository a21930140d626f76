package worker

// The upserts of accounts and users. Every column merges with "newest version wins" (or is a
// minimum or maximum), so the result does not depend on the order batches commit in.

// mergeTraitsSQL merges the stored traits of row r with EXCLUDED's, key by key, keeping the value
// whose version is newest (Segment's merge: a key sent as null becomes null, a key left out keeps
// its value), so merging is commutative. When the batch's oldest call that sent traits is newer
// than the row's newest (the usual case: calls arrive about in order), every incoming key wins
// and the incoming traits simply overwrite, at a fraction of the cost of comparing key by key.
// Inline subqueries: a SQL function cannot be inlined here and costs several times more per row.
const mergeTraitsSQL = `
			traits = CASE WHEN EXCLUDED.traits_oldest > coalesce(r.traits_newest, '') THEN r.traits || EXCLUDED.traits
				ELSE r.traits || (SELECT coalesce(jsonb_object_agg(n.k, EXCLUDED.traits -> n.k), '{}')
					FROM jsonb_each_text(EXCLUDED.trait_versions) AS n(k, v)
					WHERE n.v COLLATE "C" > coalesce(r.trait_versions ->> n.k, '') COLLATE "C") END,
			trait_versions = CASE WHEN EXCLUDED.traits_oldest > coalesce(r.traits_newest, '') THEN r.trait_versions || EXCLUDED.trait_versions
				ELSE r.trait_versions || (SELECT coalesce(jsonb_object_agg(n.k, n.v), '{}')
					FROM jsonb_each(EXCLUDED.trait_versions) AS n(k, v)
					WHERE n.v #>> '{}' COLLATE "C" > coalesce(r.trait_versions ->> n.k, '') COLLATE "C") END,
			traits_oldest = least(r.traits_oldest, EXCLUDED.traits_oldest),
			traits_newest = greatest(r.traits_newest, EXCLUDED.traits_newest),`

// A name is set only by a named call, and the newest named call wins. The upsert returns whether
// each row was inserted, and without a name, for the count of unnamed accounts created.
const upsertAccountsSQL = `
		INSERT INTO tally.accounts AS r
			(tenant, account_id, name, name_version, traits, trait_versions, traits_oldest, traits_newest,
			 created_at, updated_at, seen_at, last_seen_at)
		SELECT $1, t.id, nullif(t.name, ''), nullif(t.name_version, ''), t.traits, t.trait_versions,
			t.oldest, t.newest, t.first_at, t.last_at, t.seen_at, t.last_seen_at
		FROM unnest($2::text[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[], $7::text[], $8::text[],
			$9::timestamptz[], $10::timestamptz[], $11::timestamptz[], $12::timestamptz[])
			AS t(id, name, name_version, traits, trait_versions, oldest, newest, first_at, last_at, seen_at, last_seen_at)
		ORDER BY t.id
		ON CONFLICT (tenant, account_id) DO UPDATE SET
			name = CASE WHEN coalesce(EXCLUDED.name_version > r.name_version, EXCLUDED.name_version IS NOT NULL)
				THEN EXCLUDED.name ELSE r.name END,
			name_version = greatest(r.name_version, EXCLUDED.name_version),` + mergeTraitsSQL + `
			created_at = least(r.created_at, EXCLUDED.created_at),
			updated_at = greatest(r.updated_at, EXCLUDED.updated_at),
			seen_at = greatest(r.seen_at, EXCLUDED.seen_at),
			last_seen_at = greatest(r.last_seen_at, EXCLUDED.last_seen_at)
		RETURNING r.account_id, r.xmax = 0, r.name IS NULL`

const upsertUsersSQL = `
		INSERT INTO tally.users AS r (tenant, user_id, traits, trait_versions, traits_oldest, traits_newest,
			created_at, updated_at, seen_at, last_seen_at)
		SELECT $1, t.id, t.traits, t.trait_versions, t.oldest, t.newest, t.first_at, t.last_at, t.seen_at, t.last_seen_at
		FROM unnest($2::text[], $3::jsonb[], $4::jsonb[], $5::text[], $6::text[],
			$7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[])
			AS t(id, traits, trait_versions, oldest, newest, first_at, last_at, seen_at, last_seen_at)
		ORDER BY t.id
		ON CONFLICT (tenant, user_id) DO UPDATE SET` + mergeTraitsSQL + `
			created_at = least(r.created_at, EXCLUDED.created_at),
			updated_at = greatest(r.updated_at, EXCLUDED.updated_at),
			seen_at = greatest(r.seen_at, EXCLUDED.seen_at),
			last_seen_at = greatest(r.last_seen_at, EXCLUDED.last_seen_at)
		RETURNING r.user_id, r.xmax = 0`
