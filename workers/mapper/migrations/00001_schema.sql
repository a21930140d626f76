-- Tally's schema. The tables and columns of the design's data contract are the product's public
-- interface; the columns marked "bookkeeping" carry the event versions that make every merge
-- order-independent. A version is "<timestamp, RFC 3339 with 9 fraction digits, UTC>|<messageId>":
-- byte-wise (COLLATE "C") order is event-time order with the messageId as tie-break.

-- +goose Up
CREATE TABLE tally.accounts (
    tenant         text        NOT NULL,
    account_id     text        NOT NULL,
    name           text,
    traits         jsonb       NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    last_seen_at   timestamptz,
    name_version   text COLLATE "C",                 -- bookkeeping: version of the call that set name
    trait_versions jsonb       NOT NULL DEFAULT '{}', -- bookkeeping: trait key -> version that set it
    seen_at        timestamptz,                       -- bookkeeping: newest call about the account itself
    PRIMARY KEY (tenant, account_id)
);

CREATE TABLE tally.users (
    tenant         text        NOT NULL,
    user_id        text        NOT NULL,
    traits         jsonb       NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    last_seen_at   timestamptz,
    trait_versions jsonb       NOT NULL DEFAULT '{}', -- bookkeeping
    seen_at        timestamptz,                       -- bookkeeping
    PRIMARY KEY (tenant, user_id)
);

CREATE TABLE tally.account_users (
    tenant             text        NOT NULL,
    account_id         text        NOT NULL,
    user_id            text        NOT NULL,
    linked             boolean     NOT NULL,
    changed_at         timestamptz NOT NULL,
    last_associated_at timestamptz,
    link_version       text COLLATE "C" NOT NULL, -- bookkeeping: version of the newest link or unlink
    PRIMARY KEY (tenant, account_id, user_id)
);
CREATE INDEX account_users_by_user ON tally.account_users (tenant, user_id);

-- Every link and unlink ever received, so a track's fallback account can be resolved as of the
-- track's own timestamp whatever the arrival order.
CREATE TABLE tally.associations (
    tenant     text             NOT NULL,
    user_id    text             NOT NULL,
    version    text COLLATE "C" NOT NULL,
    account_id text             NOT NULL,
    linked     boolean          NOT NULL,
    at         timestamptz      NOT NULL,
    PRIMARY KEY (tenant, user_id, account_id, version)
);

CREATE TABLE tally.events (
    tenant       text        NOT NULL,
    message_id   text        NOT NULL,
    type         text        NOT NULL,
    event        text,
    user_id      text,
    anonymous_id text,
    account_id   text,
    properties   jsonb       NOT NULL DEFAULT '{}',
    context      jsonb       NOT NULL DEFAULT '{}',
    timestamp    timestamptz NOT NULL,
    received_at  timestamptz NOT NULL,
    source       text        NOT NULL,
    account_from text, -- bookkeeping: context | property | user (resolved from the user's associations)
    PRIMARY KEY (tenant, message_id)
);
CREATE INDEX events_by_user ON tally.events (tenant, user_id, timestamp);
CREATE INDEX events_by_account ON tally.events (tenant, account_id, timestamp);

CREATE TABLE tally.event_catalog (
    tenant        text    NOT NULL,
    event         text    NOT NULL,
    first_seen_at timestamptz,
    last_seen_at  timestamptz,
    count         bigint  NOT NULL DEFAULT 0,
    ignored       boolean NOT NULL DEFAULT false,
    PRIMARY KEY (tenant, event)
);

CREATE TABLE tally.aliases (
    tenant           text        NOT NULL,
    previous_id      text        NOT NULL,
    user_id          text        NOT NULL,
    first_aliased_at timestamptz NOT NULL,
    last_aliased_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant, previous_id, user_id)
);

-- merge_traits keeps, key by key, the value whose version is newest (Segment's merge: a key sent
-- as null becomes null, a key left out keeps its value), so merging is commutative.
-- +goose StatementBegin
CREATE FUNCTION tally.merge_traits(old_traits jsonb, old_versions jsonb, new_traits jsonb, new_versions jsonb)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(jsonb_object_agg(k,
               CASE WHEN coalesce(new_versions ->> k, '') COLLATE "C" > coalesce(old_versions ->> k, '') COLLATE "C"
                    THEN new_traits -> k ELSE old_traits -> k END), '{}'::jsonb)
    FROM (SELECT jsonb_object_keys(old_traits) UNION SELECT jsonb_object_keys(new_traits)) AS keys(k)
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION tally.merge_versions(old_versions jsonb, new_versions jsonb)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(jsonb_object_agg(k,
               CASE WHEN coalesce(new_versions ->> k, '') COLLATE "C" > coalesce(old_versions ->> k, '') COLLATE "C"
                    THEN new_versions -> k ELSE old_versions -> k END), '{}'::jsonb)
    FROM (SELECT jsonb_object_keys(old_versions) UNION SELECT jsonb_object_keys(new_versions)) AS keys(k)
$$;
-- +goose StatementEnd

-- account_at is a user's "most recent association" as of a moment: among the accounts whose newest
-- link or unlink at or before that moment is a link, the one linked most recently. It depends only
-- on the set of associations, never on the order they arrived in. It reads one index entry or so
-- per account the user ever had (account_users), however many identify calls repeated a link.
-- +goose StatementBegin
CREATE FUNCTION tally.account_at(p_tenant text, p_user_id text, p_at timestamptz)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT au.account_id
    FROM tally.account_users au
    CROSS JOIN LATERAL (
        SELECT a.linked, a.version FROM tally.associations a
        WHERE a.tenant = au.tenant AND a.user_id = au.user_id AND a.account_id = au.account_id AND a.at <= p_at
        ORDER BY a.version DESC
        LIMIT 1
    ) latest
    WHERE au.tenant = p_tenant AND au.user_id = p_user_id AND latest.linked
    ORDER BY latest.version DESC
    LIMIT 1
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION tally.account_at(text, text, timestamptz);
DROP FUNCTION tally.merge_versions(jsonb, jsonb);
DROP FUNCTION tally.merge_traits(jsonb, jsonb, jsonb, jsonb);
DROP TABLE tally.aliases, tally.event_catalog, tally.events, tally.associations, tally.account_users,
    tally.users, tally.accounts;
