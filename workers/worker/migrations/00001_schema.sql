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
    -- bookkeeping: oldest and newest version of the calls that sent traits; when a batch's oldest
    -- is newer than the row's newest, its traits simply overwrite (the merge's fast path).
    traits_oldest  text COLLATE "C",
    traits_newest  text COLLATE "C",
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
    traits_oldest  text COLLATE "C",                  -- bookkeeping
    traits_newest  text COLLATE "C",                  -- bookkeeping
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
-- track's own timestamp whatever the arrival order. The key is in (at, version) order, which is
-- version order (at is the version's timestamp), so account_at walks a user's history newest
-- first from any moment. at is a function of version: the key is as unique as (user, account,
-- version).
CREATE TABLE tally.associations (
    tenant     text             NOT NULL,
    user_id    text             NOT NULL,
    version    text COLLATE "C" NOT NULL,
    account_id text             NOT NULL,
    linked     boolean          NOT NULL,
    at         timestamptz      NOT NULL,
    PRIMARY KEY (tenant, user_id, at, version, account_id)
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

-- account_at is a user's "most recent association" as of a moment: among the accounts whose newest
-- link or unlink at or before that moment is a link, the one linked most recently. It depends only
-- on the set of associations, never on the order they arrived in. It walks the user's history
-- newest first from that moment: the first link whose account was not unlinked later (in the
-- walk) is the answer, which usually is the first entry read, however long the history.
-- +goose StatementBegin
CREATE FUNCTION tally.account_at(p_tenant text, p_user_id text, p_at timestamptz)
RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
    op       record;
    unlinked text[] := '{}';
BEGIN
    -- Usually the newest entry is a link: one index probe, no walk (see also tally.events' insert).
    SELECT a.account_id, a.linked INTO op FROM tally.associations a
    WHERE a.tenant = p_tenant AND a.user_id = p_user_id AND a.at <= p_at
    ORDER BY a.at DESC, a.version DESC, a.account_id DESC
    LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    ELSIF op.linked THEN
        RETURN op.account_id;
    END IF;
    FOR op IN
        SELECT a.account_id, a.linked FROM tally.associations a
        WHERE a.tenant = p_tenant AND a.user_id = p_user_id AND a.at <= p_at
        ORDER BY a.at DESC, a.version DESC, a.account_id DESC
    LOOP
        IF op.account_id = ANY (unlinked) THEN
            CONTINUE; -- a newer unlink of this account came first in the walk
        END IF;
        IF op.linked THEN
            RETURN op.account_id;
        END IF;
        unlinked := unlinked || op.account_id;
    END LOOP;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION tally.account_at(text, text, timestamptz);
DROP TABLE tally.aliases, tally.event_catalog, tally.events, tally.associations, tally.account_users,
    tally.users, tally.accounts;
