package worker

import (
	"maps"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// Memberships: the history of links and unlinks, the current account_users rows, and the fallback
// events whose account a new link or unlink changes.

func (a *applier) links(b *pgx.Batch, f *folded) error {
	if len(f.Links) == 0 {
		return nil
	}
	n := len(f.Links)
	users, accounts, versions := make([]string, n), make([]string, n), make([]string, n)
	linked, at := make([]bool, n), make([]time.Time, n)
	for i, l := range f.Links {
		users[i], accounts[i], versions[i], linked[i], at[i] = l.UserID, l.AccountID, l.Version, l.Linked, l.At
	}
	b.Queue(`
		INSERT INTO tally.associations (tenant, user_id, version, account_id, linked, at)
		SELECT $1, t.user_id, t.version, t.account_id, t.linked, t.at
		FROM unnest($2::text[], $3::text[], $4::text[], $5::bool[], $6::timestamptz[])
			AS t(user_id, version, account_id, linked, at)
		ON CONFLICT DO NOTHING
		RETURNING user_id, at`, a.tenant, users, versions, accounts, linked, at,
	).Query(func(rows pgx.Rows) error {
		var user string
		var when time.Time
		_, err := pgx.ForEachRow(rows, []any{&user, &when}, func() error {
			a.usersWithNewLinks[user] = minTime(a.usersWithNewLinks[user], when)
			return nil
		})
		return err
	})
	return nil
}

func (a *applier) memberships(b *pgx.Batch, f *folded) error {
	if len(f.Memberships) == 0 {
		return nil
	}
	n := len(f.Memberships)
	accounts, users, versions := make([]string, n), make([]string, n), make([]string, n)
	linked, changed, associated := make([]bool, n), make([]time.Time, n), make([]*time.Time, n)
	for i, m := range f.Memberships {
		accounts[i], users[i], versions[i] = m.AccountID, m.UserID, m.Newest.Version
		linked[i], changed[i] = m.Newest.Linked, m.Newest.At
		if !m.LastAssociatedAt.IsZero() {
			t := m.LastAssociatedAt
			associated[i] = &t
		}
	}
	b.Queue(`
		INSERT INTO tally.account_users AS au
			(tenant, account_id, user_id, linked, changed_at, last_associated_at, link_version)
		SELECT $1, t.account_id, t.user_id, t.linked, t.changed_at, t.associated_at, t.version
		FROM unnest($2::text[], $3::text[], $4::bool[], $5::timestamptz[], $6::timestamptz[], $7::text[])
			AS t(account_id, user_id, linked, changed_at, associated_at, version)
		ORDER BY t.account_id, t.user_id
		ON CONFLICT (tenant, account_id, user_id) DO UPDATE SET
			linked = CASE WHEN EXCLUDED.link_version > au.link_version THEN EXCLUDED.linked ELSE au.linked END,
			changed_at = CASE WHEN EXCLUDED.link_version > au.link_version THEN EXCLUDED.changed_at ELSE au.changed_at END,
			link_version = greatest(au.link_version, EXCLUDED.link_version),
			last_associated_at = greatest(au.last_associated_at, EXCLUDED.last_associated_at)`,
		a.tenant, accounts, users, linked, changed, associated, versions)
	return nil
}

// reresolve gives stored fallback events the account they would have had if this batch's links
// had arrived first: the user's events from the oldest new link or unlink on are resolved again,
// and all of them when the user has no older link (events before the first link take its account,
// and this batch may have added it).
func (a *applier) reresolve(b *pgx.Batch, _ *folded) error {
	if len(a.usersWithNewLinks) == 0 && len(a.forgotten) == 0 {
		return nil
	}
	from := maps.Clone(a.usersWithNewLinks)
	for u := range a.forgotten {
		from[u] = time.Time{} // older than any link: all of the user's fallback events
	}
	users := slices.Sorted(maps.Keys(from))
	since := make([]time.Time, len(users))
	for i, u := range users {
		since[i] = from[u]
	}
	b.Queue(`
		WITH candidates AS MATERIALIZED (
			-- LATERAL ... OFFSET 0 keeps one lookup per user on events_by_user, whatever the statistics say.
			SELECT e.message_id, e.account_id AS old_account, e.timestamp,
				tally.account_at($1, c.user_id, e.timestamp) AS new_account
			FROM unnest($2::text[], $3::timestamptz[]) AS c(user_id, since)
			CROSS JOIN LATERAL (
				SELECT CASE WHEN EXISTS (SELECT 1 FROM tally.associations a
					WHERE a.tenant = $1 AND a.user_id = c.user_id AND a.at < c.since AND a.linked)
					THEN c.since ELSE '-infinity' END AS since
			) s
			CROSS JOIN LATERAL (
				SELECT ev.message_id, ev.account_id, ev.timestamp FROM tally.events ev
				WHERE ev.tenant = $1 AND ev.user_id = c.user_id AND ev.timestamp >= s.since AND ev.account_from = 'user'
				OFFSET 0
			) e
		)
		UPDATE tally.events e SET account_id = c.new_account
		FROM candidates c
		WHERE e.tenant = $1 AND e.message_id = c.message_id AND e.account_id IS DISTINCT FROM c.new_account
		RETURNING c.old_account, c.new_account, c.timestamp`, a.tenant, users, since,
	).Query(func(rows pgx.Rows) error {
		// The account an event moved to takes it into last_seen_at; the one it left is recomputed.
		var oldAccount, newAccount *string
		var at time.Time
		_, err := pgx.ForEachRow(rows, []any{&oldAccount, &newAccount, &at}, func() error {
			if oldAccount != nil {
				a.seen.recomputeAccounts[*oldAccount] = true
			}
			if newAccount != nil {
				a.seen.accountEvent(*newAccount, at)
			}
			return nil
		})
		return err
	})
	return nil
}
