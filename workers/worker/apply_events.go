package worker

import (
	"maps"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// Events and the event catalog.

// events inserts tracks, pages and screens once per messageId; a redelivered message inserts
// nothing, and only inserted rows count in the catalog. The inserted rows' users and accounts
// are noted for last_seen_at.
func (a *applier) events(b *pgx.Batch, f *folded) error {
	if len(f.Events) == 0 {
		return nil
	}
	n := len(f.Events)
	ids, types, props, ctxs := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	events, users, anons, accounts, froms := make([]*string, n), make([]*string, n), make([]*string, n), make([]*string, n), make([]*string, n)
	ts, received := make([]time.Time, n), make([]time.Time, n)
	for i, e := range f.Events {
		ids[i], types[i], props[i], ctxs[i] = e.MessageID, e.Type, e.Properties, e.Context
		events[i], users[i], anons[i], accounts[i], froms[i] = e.Event, e.UserID, e.AnonymousID, e.AccountID, e.AccountFrom
		ts[i], received[i] = e.Timestamp, e.ReceivedAt
	}
	b.Queue(`
		-- An event without a userId belongs to the user its anonymousId is tied to. Resolved first,
		-- in a step of its own, so the lookups below compare plain columns: under row-level security
		-- (a tenant's login) a condition holding a subquery cannot use an index.
		WITH t AS MATERIALIZED (
			SELECT t.*, coalesce(t.user_id, (SELECT ti.user_id FROM tally.anonymous_ties ti
				WHERE t.user_id IS NULL AND ti.tenant = $1 AND ti.anonymous_id = t.anonymous_id)) AS resolved_user
			FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[],
				$10::text[], $11::text[], $12::timestamptz[], $13::timestamptz[])
				AS t(message_id, type, event, user_id, anonymous_id, account_id, account_from, properties, context, ts, received_at)
		)
		INSERT INTO tally.events AS ev (tenant, message_id, type, event, user_id, anonymous_id, account_id,
			properties, context, timestamp, received_at, source, account_from, user_from)
		SELECT $1, t.message_id, t.type, t.event, u.user_id, t.anonymous_id,
			CASE WHEN t.account_id IS NOT NULL THEN t.account_id
			     WHEN newest.linked THEN newest.account_id
			     WHEN newest.account_id IS NULL THEN first_link.account_id
			     ELSE tally.account_at($1, u.user_id, t.ts) END,
			t.properties::jsonb, t.context::jsonb, t.ts, t.received_at, $2,
			CASE WHEN t.account_id IS NOT NULL THEN t.account_from
			     WHEN u.user_id IS NOT NULL THEN 'user' END,
			CASE WHEN t.user_id IS NULL AND u.user_id IS NOT NULL THEN 'anonymous' END
		FROM t CROSS JOIN LATERAL (SELECT t.resolved_user AS user_id) u
		-- tally.account_at's first steps inline, the cheap common cases: the user's newest link or
		-- unlink at the event's time; when it is a link, that is the account; when there is none,
		-- the event precedes the user's first link, whose account it takes (if any yet).
		LEFT JOIN LATERAL (
			SELECT a.account_id, a.linked FROM tally.associations a
			WHERE t.account_id IS NULL AND a.tenant = $1 AND a.user_id = u.user_id AND a.at <= t.ts
			ORDER BY a.at DESC, a.version DESC, a.account_id DESC
			LIMIT 1
		) newest ON true
		LEFT JOIN LATERAL (
			SELECT a.account_id FROM tally.associations a
			WHERE t.account_id IS NULL AND newest.account_id IS NULL AND a.tenant = $1 AND a.user_id = u.user_id AND a.linked
			ORDER BY a.at, a.version, a.account_id
			LIMIT 1
		) first_link ON true
		ORDER BY t.message_id
		ON CONFLICT (tenant, message_id) DO NOTHING
		RETURNING ev.type, ev.event, ev.timestamp, ev.user_id, ev.account_id`,
		a.tenant, a.source, ids, types, events, users, anons, accounts, froms, props, ctxs, ts, received,
	).Query(a.collectInsertedEvents)
	return nil
}

// collectInsertedEvents notes what the inserted events mean for the catalog and last_seen_at.
func (a *applier) collectInsertedEvents(rows pgx.Rows) error {
	var typ string
	var event, user, account *string
	var at time.Time
	_, err := pgx.ForEachRow(rows, []any{&typ, &event, &at, &user, &account}, func() error {
		a.inserted++
		if user != nil {
			a.seen.userEvent(*user, at)
		}
		if account != nil {
			a.seen.accountEvent(*account, at)
		}
		if typ == "track" && event != nil {
			c, ok := a.catalogRows[*event]
			if !ok {
				c = &catalogRow{first: at, last: at}
				a.catalogRows[*event] = c
			}
			c.first, c.last, c.count = minTime(c.first, at), maxTime(c.last, at), c.count+1
		}
		return nil
	})
	return err
}

// catalog counts the track events this transaction inserted, per name.
func (a *applier) catalog(b *pgx.Batch, _ *folded) error {
	if len(a.catalogRows) > 0 {
		names := slices.Sorted(maps.Keys(a.catalogRows))
		first, last, counts := make([]time.Time, len(names)), make([]time.Time, len(names)), make([]int64, len(names))
		for i, name := range names {
			c := a.catalogRows[name]
			first[i], last[i], counts[i] = c.first, c.last, c.count
		}
		b.Queue(`
			INSERT INTO tally.event_catalog AS c (tenant, event, first_seen_at, last_seen_at, count)
			SELECT $1, t.event, t.first_at, t.last_at, t.n
			FROM unnest($2::text[], $3::timestamptz[], $4::timestamptz[], $5::bigint[]) AS t(event, first_at, last_at, n)
			ORDER BY t.event
			ON CONFLICT (tenant, event) DO UPDATE SET
				first_seen_at = least(c.first_seen_at, EXCLUDED.first_seen_at),
				last_seen_at = greatest(c.last_seen_at, EXCLUDED.last_seen_at),
				count = c.count + EXCLUDED.count`,
			a.tenant, names, first, last, counts)
	}
	return nil
}
