-- Insights back to Segment (package insights): what each source's pusher last delivered per account
-- and user, so that only changes are sent and a restart sends nothing new, and how its pushes went,
-- which the operator reports in status.insights.

-- +goose Up
-- One row per entity a source's pusher delivered: the insight traits Segment has, as last answered
-- 200. source is the pushing SegmentSource ("namespace/name"): two sources of one tenant may push
-- to two Segment sources, each remembering its own deliveries.
CREATE TABLE tally.insights_delivered (
    tenant       text        NOT NULL,
    source       text        NOT NULL,
    kind         text        NOT NULL CHECK (kind IN ('account', 'user')),
    id           text        NOT NULL, -- account_id or user_id
    hash         text        NOT NULL, -- of traits, compared with the values computed at push time
    traits       jsonb       NOT NULL, -- the delivered insight traits
    message_id   text        NOT NULL, -- of the message that delivered them
    delivered_at timestamptz NOT NULL,
    PRIMARY KEY (tenant, source, kind, id)
);

-- One row per pushing source: its latest attempt and its latest complete push.
CREATE TABLE tally.insights_pushes (
    tenant          text        NOT NULL,
    source          text        NOT NULL,
    last_attempt_at timestamptz NOT NULL,
    last_push_at    timestamptz,                -- the latest push that delivered every change
    entities_pushed bigint      NOT NULL DEFAULT 0, -- accounts and users that push delivered
    last_error      text,                       -- of the latest attempt; NULL when it succeeded
    PRIMARY KEY (tenant, source)
);

-- +goose Down
DROP TABLE tally.insights_pushes, tally.insights_delivered;
