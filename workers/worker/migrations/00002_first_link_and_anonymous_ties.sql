-- A track before a user's first link takes that link's account, and events sent with only an
-- anonymousId are attributed to the user it is tied to (identify with both ids, alias).

-- +goose Up
-- bookkeeping: 'anonymous' when user_id came from the anonymousId's tie, not from the message.
ALTER TABLE tally.events ADD COLUMN user_from text;

-- The events a tie attributes: those of the anonymousId without a userId of their own.
CREATE INDEX events_by_anonymous ON tally.events (tenant, anonymous_id)
    WHERE user_id IS NULL OR user_from = 'anonymous';

-- bookkeeping: each anonymousId's tie to a userId, the one of the oldest version (timestamp, then
-- messageId) of all the ties received, so conflicting ties settle the same way in any order.
CREATE TABLE tally.anonymous_ties (
    tenant       text             NOT NULL,
    anonymous_id text             NOT NULL,
    user_id      text             NOT NULL,
    version      text COLLATE "C" NOT NULL,
    PRIMARY KEY (tenant, anonymous_id)
);

-- account_at as before, and for a moment before the user's first link (no link at or before it):
-- the account of that first link, so the events of a new user's onboarding are not account-less.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION tally.account_at(p_tenant text, p_user_id text, p_at timestamptz)
RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
    op        record;
    unlinked  text[] := '{}';
    seen_link boolean := false;
BEGIN
    -- Usually the newest entry is a link: one index probe, no walk (see also tally.events' insert).
    SELECT a.account_id, a.linked INTO op FROM tally.associations a
    WHERE a.tenant = p_tenant AND a.user_id = p_user_id AND a.at <= p_at
    ORDER BY a.at DESC, a.version DESC, a.account_id DESC
    LIMIT 1;
    IF FOUND AND op.linked THEN
        RETURN op.account_id;
    END IF;
    FOR op IN
        SELECT a.account_id, a.linked FROM tally.associations a
        WHERE a.tenant = p_tenant AND a.user_id = p_user_id AND a.at <= p_at
        ORDER BY a.at DESC, a.version DESC, a.account_id DESC
    LOOP
        seen_link := seen_link OR op.linked;
        IF op.account_id = ANY (unlinked) THEN
            CONTINUE; -- a newer unlink of this account came first in the walk
        END IF;
        IF op.linked THEN
            RETURN op.account_id;
        END IF;
        unlinked := unlinked || op.account_id;
    END LOOP;
    IF seen_link THEN
        RETURN NULL; -- linked before, unlinked since: no account
    END IF;
    -- Before the first link: its account (NULL when the user has none yet).
    RETURN (SELECT a.account_id FROM tally.associations a
        WHERE a.tenant = p_tenant AND a.user_id = p_user_id AND a.at > p_at AND a.linked
        ORDER BY a.at, a.version, a.account_id
        LIMIT 1);
END
$$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION tally.account_at(p_tenant text, p_user_id text, p_at timestamptz)
RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
    op       record;
    unlinked text[] := '{}';
BEGIN
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
            CONTINUE;
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
DROP TABLE tally.anonymous_ties;
DROP INDEX tally.events_by_anonymous;
ALTER TABLE tally.events DROP COLUMN user_from;
