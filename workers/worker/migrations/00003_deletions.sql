-- Segment's user-deletion requests (type "delete", from the destination route). A deletion of a
-- user at version D voids every message about that user of version D or older: their rows go, and
-- a tombstone keeps a late delivery or a replay of such a message out. A message newer than D
-- starts the user afresh.

-- +goose Up
-- Tombstones. kind 'user': a deleted userId; kind 'anonymous': an anonymousId that was tied to a
-- deleted user, whose anonymous events of this version or older are void too.
CREATE TABLE tally.deletions (
    tenant  text             NOT NULL,
    kind    text             NOT NULL CHECK (kind IN ('user', 'anonymous')),
    id      text             NOT NULL,
    version text COLLATE "C" NOT NULL, -- every message about id of this version or older is void
    PRIMARY KEY (tenant, kind, id)
);

-- forget_user applies a deletion of p_user_id at p_version (= p_at, then p_message_id) to the rows
-- already stored: what only void messages wrote goes, what newer messages wrote stays. It returns
-- what the caller still has to settle: ('account', id) and ('user', id) rows whose last_seen_at
-- may have lost its newest event, and ('anonymous', id) tombstones it added. The caller holds the
-- tenant's lock and re-resolves the user's remaining fallback events (their links may be gone).
--
-- What the rows cannot give back: the user's created_at when messages newer than the deletion
-- were applied before it (the oldest of those is estimated from what they left: trait versions,
-- links, activity), and an alias's first_aliased_at in the same case (estimated by its last).
-- +goose StatementBegin
CREATE FUNCTION tally.forget_user(p_tenant text, p_user_id text, p_version text, p_at timestamptz, p_message_id text)
RETURNS TABLE (kind text, id text) LANGUAGE plpgsql AS $$
DECLARE
    v_anonymous text[];
    -- the deleted events, column by column
    v_types text[];
    v_events text[];
    v_times timestamptz[];
    v_accounts text[];
BEGIN
    INSERT INTO tally.deletions AS d (tenant, kind, id, version) VALUES (p_tenant, 'user', p_user_id, p_version)
    ON CONFLICT ON CONSTRAINT deletions_pkey DO UPDATE SET version = EXCLUDED.version WHERE EXCLUDED.version > d.version;

    -- The user's anonymousIds: their ties go, and their void anonymous events with them.
    WITH gone AS (
        DELETE FROM tally.anonymous_ties t
        WHERE t.tenant = p_tenant AND t.user_id = p_user_id AND t.version <= p_version
        RETURNING t.anonymous_id
    )
    SELECT coalesce(array_agg(g.anonymous_id ORDER BY g.anonymous_id), '{}') INTO v_anonymous FROM gone g;
    INSERT INTO tally.deletions AS d (tenant, kind, id, version)
    SELECT p_tenant, 'anonymous', a.id, p_version FROM unnest(v_anonymous) AS a(id) ORDER BY a.id
    ON CONFLICT ON CONSTRAINT deletions_pkey DO UPDATE SET version = EXCLUDED.version WHERE EXCLUDED.version > d.version;
    RETURN QUERY SELECT 'anonymous'::text, a.id FROM unnest(v_anonymous) AS a(id);

    -- The void events (the user's own and those attributed to them through a tie), out of the
    -- catalog too; a name's first and last seen are read again only when a deleted event was one.
    WITH gone AS (
        DELETE FROM tally.events e
        WHERE e.tenant = p_tenant AND e.user_id = p_user_id
          AND (e.timestamp < p_at OR (e.timestamp = p_at AND e.message_id COLLATE "C" <= p_message_id COLLATE "C"))
        RETURNING e.type, e.event, e.timestamp, e.account_id
    )
    SELECT coalesce(array_agg(g.type), '{}'), coalesce(array_agg(g.event), '{}'),
           coalesce(array_agg(g.timestamp), '{}'), coalesce(array_agg(g.account_id), '{}')
    INTO v_types, v_events, v_times, v_accounts FROM gone g;

    WITH tracks AS (
        SELECT f.event, count(*) AS n, min(f.ts) AS first_ts, max(f.ts) AS last_ts
        FROM unnest(v_types, v_events, v_times) AS f(type, event, ts)
        WHERE f.type = 'track' AND f.event IS NOT NULL GROUP BY f.event
    )
    UPDATE tally.event_catalog c SET count = c.count - t.n,
        first_seen_at = CASE WHEN t.first_ts <= c.first_seen_at THEN (SELECT min(e.timestamp) FROM tally.events e
            WHERE e.tenant = p_tenant AND e.type = 'track' AND e.event = c.event) ELSE c.first_seen_at END,
        last_seen_at = CASE WHEN t.last_ts >= c.last_seen_at THEN (SELECT max(e.timestamp) FROM tally.events e
            WHERE e.tenant = p_tenant AND e.type = 'track' AND e.event = c.event) ELSE c.last_seen_at END
    FROM tracks t
    WHERE c.tenant = p_tenant AND c.event = t.event;
    DELETE FROM tally.event_catalog c
    WHERE c.tenant = p_tenant AND c.count = 0 AND NOT c.ignored AND c.event = ANY (v_events);
    RETURN QUERY SELECT DISTINCT 'account'::text, a.id FROM unnest(v_accounts) AS a(id) WHERE a.id IS NOT NULL;

    -- Newer anonymous events of those anonymousIds are nobody's now (unless they named an account).
    RETURN QUERY WITH untied AS MATERIALIZED (
        SELECT e.message_id, e.account_id FROM tally.events e
        WHERE e.tenant = p_tenant AND e.user_id = p_user_id AND e.user_from = 'anonymous'
          AND e.anonymous_id = ANY (v_anonymous)
    ), moved AS (
        UPDATE tally.events e SET user_id = NULL, user_from = NULL,
            account_id = CASE WHEN e.account_from IN ('context', 'property') THEN e.account_id END,
            account_from = CASE WHEN e.account_from IN ('context', 'property') THEN e.account_from END
        FROM untied u WHERE e.tenant = p_tenant AND e.message_id = u.message_id
        RETURNING u.account_id
    )
    SELECT DISTINCT 'account'::text, m.account_id FROM moved m WHERE m.account_id IS NOT NULL;

    -- Links: the void ones go; the memberships are rebuilt from what is left.
    DELETE FROM tally.associations a WHERE a.tenant = p_tenant AND a.user_id = p_user_id AND a.version <= p_version;
    DELETE FROM tally.account_users au WHERE au.tenant = p_tenant AND au.user_id = p_user_id;
    INSERT INTO tally.account_users (tenant, account_id, user_id, linked, changed_at, last_associated_at, link_version)
    SELECT DISTINCT ON (a.account_id) p_tenant, a.account_id, p_user_id, a.linked, a.at,
        (SELECT max(l.at) FROM tally.associations l
         WHERE l.tenant = p_tenant AND l.user_id = p_user_id AND l.account_id = a.account_id AND l.linked),
        a.version
    FROM tally.associations a WHERE a.tenant = p_tenant AND a.user_id = p_user_id
    ORDER BY a.account_id, a.version DESC;

    -- The user: gone when nothing newer than the deletion wrote it, else only the newer part kept.
    DELETE FROM tally.users u WHERE u.tenant = p_tenant AND u.user_id = p_user_id AND u.updated_at <= p_at;
    UPDATE tally.users u SET
        traits = k.traits, trait_versions = k.versions, traits_oldest = k.oldest, traits_newest = k.newest,
        seen_at = CASE WHEN u.seen_at > p_at THEN u.seen_at END,
        created_at = least(u.updated_at, CASE WHEN u.seen_at > p_at THEN u.seen_at END,
            split_part(k.oldest, '|', 1)::timestamptz,
            (SELECT min(a.at) FROM tally.associations a WHERE a.tenant = p_tenant AND a.user_id = p_user_id))
    FROM (
        SELECT u2.user_id,
            coalesce(jsonb_object_agg(v.k, u2.traits -> v.k) FILTER (WHERE v.k IS NOT NULL), '{}') AS traits,
            coalesce(jsonb_object_agg(v.k, v.v) FILTER (WHERE v.k IS NOT NULL), '{}') AS versions,
            min(v.v COLLATE "C") AS oldest, max(v.v COLLATE "C") AS newest
        FROM tally.users u2
        LEFT JOIN LATERAL (SELECT t.k, t.v FROM jsonb_each_text(u2.trait_versions) AS t(k, v)
                           WHERE t.v COLLATE "C" > p_version) v ON true
        WHERE u2.tenant = p_tenant AND u2.user_id = p_user_id
        GROUP BY u2.user_id
    ) k
    WHERE u.tenant = p_tenant AND u.user_id = k.user_id AND u.created_at <= p_at;
    RETURN QUERY SELECT 'user'::text, u.user_id FROM tally.users u WHERE u.tenant = p_tenant AND u.user_id = p_user_id;

    -- Aliases naming the user on either side.
    DELETE FROM tally.aliases al WHERE al.tenant = p_tenant AND (al.user_id = p_user_id OR al.previous_id = p_user_id)
        AND al.last_aliased_at <= p_at;
    UPDATE tally.aliases al SET first_aliased_at = al.last_aliased_at
    WHERE al.tenant = p_tenant AND (al.user_id = p_user_id OR al.previous_id = p_user_id) AND al.first_aliased_at <= p_at;
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION tally.forget_user(text, text, text, timestamptz, text);
DROP TABLE tally.deletions;
