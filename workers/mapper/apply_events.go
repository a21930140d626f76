package mapper

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/jackc/pgx/v5"
)

// Events, the event catalog and last_seen_at, which is derived from both.

// events inserts tracks, pages and screens once per messageId; a redelivered message inserts
// nothing, and only inserted rows count in the catalog and in last_seen_at.
func (a *applier) events(ctx context.Context, f *folded) error {
	a.catalogRows = map[string]*catalogRow{}
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
	rows, err := a.tx.Query(ctx, `
		INSERT INTO tally.events AS ev (tenant, message_id, type, event, user_id, anonymous_id, account_id,
			properties, context, timestamp, received_at, source, account_from)
		SELECT $1, t.message_id, t.type, t.event, t.user_id, t.anonymous_id,
			CASE WHEN t.account_id IS NOT NULL THEN t.account_id
			     WHEN t.user_id IS NOT NULL THEN tally.account_at($1, t.user_id, t.ts) END,
			t.properties::jsonb, t.context::jsonb, t.ts, t.received_at, $2,
			CASE WHEN t.account_id IS NOT NULL THEN t.account_from
			     WHEN t.user_id IS NOT NULL THEN 'user' END
		FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[],
			$10::text[], $11::text[], $12::timestamptz[], $13::timestamptz[])
			AS t(message_id, type, event, user_id, anonymous_id, account_id, account_from, properties, context, ts, received_at)
		ORDER BY t.message_id
		ON CONFLICT (tenant, message_id) DO NOTHING
		RETURNING ev.type, ev.event, ev.timestamp, ev.user_id, ev.account_id`,
		a.tenant, a.source, ids, types, events, users, anons, accounts, froms, props, ctxs, ts, received)
	if err != nil {
		return err
	}
	var typ string
	var event, user, account *string
	var at time.Time
	_, err = pgx.ForEachRow(rows, []any{&typ, &event, &at, &user, &account}, func() error {
		a.inserted++
		if user != nil {
			a.touchedUsers[*user] = true
		}
		if account != nil {
			a.touchedAccounts[*account] = true
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
func (a *applier) catalog(ctx context.Context) error {
	if len(a.catalogRows) > 0 {
		names := make([]string, 0, len(a.catalogRows))
		for name := range a.catalogRows {
			names = append(names, name)
		}
		sort.Strings(names)
		first, last, counts := make([]time.Time, len(names)), make([]time.Time, len(names)), make([]int64, len(names))
		for i, name := range names {
			c := a.catalogRows[name]
			first[i], last[i], counts[i] = c.first, c.last, c.count
		}
		if _, err := a.tx.Exec(ctx, `
			INSERT INTO tally.event_catalog AS c (tenant, event, first_seen_at, last_seen_at, count)
			SELECT $1, t.event, t.first_at, t.last_at, t.n
			FROM unnest($2::text[], $3::timestamptz[], $4::timestamptz[], $5::bigint[]) AS t(event, first_at, last_at, n)
			ORDER BY t.event
			ON CONFLICT (tenant, event) DO UPDATE SET
				first_seen_at = least(c.first_seen_at, EXCLUDED.first_seen_at),
				last_seen_at = greatest(c.last_seen_at, EXCLUDED.last_seen_at),
				count = c.count + EXCLUDED.count`,
			a.tenant, names, first, last, counts); err != nil {
			return err
		}
	}
	return nil
}

// lastSeen recomputes last_seen_at of every account and user the batch touched: the newest of
// their own activity calls and of the events attributed to them. Recomputing instead of taking a
// running maximum keeps it right when a re-resolved event moves to another account.
func (a *applier) lastSeen(ctx context.Context) error {
	if len(a.touchedAccounts) > 0 {
		if _, err := a.tx.Exec(ctx, `
			UPDATE tally.accounts acc SET last_seen_at = s.seen
			FROM (
				SELECT acc2.account_id, greatest(acc2.seen_at,
					(SELECT max(e.timestamp) FROM tally.events e WHERE e.tenant = $1 AND e.account_id = acc2.account_id)) AS seen
				FROM tally.accounts acc2
				WHERE acc2.tenant = $1 AND acc2.account_id = ANY($2::text[])
			) s
			WHERE acc.tenant = $1 AND acc.account_id = s.account_id AND acc.last_seen_at IS DISTINCT FROM s.seen`,
			a.tenant, sortedKeys(a.touchedAccounts)); err != nil {
			return fmt.Errorf("accounts last_seen_at: %w", err)
		}
	}
	if len(a.touchedUsers) > 0 {
		if _, err := a.tx.Exec(ctx, `
			UPDATE tally.users u SET last_seen_at = s.seen
			FROM (
				SELECT u2.user_id, greatest(u2.seen_at,
					(SELECT max(e.timestamp) FROM tally.events e WHERE e.tenant = $1 AND e.user_id = u2.user_id)) AS seen
				FROM tally.users u2
				WHERE u2.tenant = $1 AND u2.user_id = ANY($2::text[])
			) s
			WHERE u.tenant = $1 AND u.user_id = s.user_id AND u.last_seen_at IS DISTINCT FROM s.seen`,
			a.tenant, sortedKeys(a.touchedUsers)); err != nil {
			return fmt.Errorf("users last_seen_at: %w", err)
		}
	}
	return nil
}
