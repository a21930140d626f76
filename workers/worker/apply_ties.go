package worker

import (
	"maps"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// Identity stitching: an event sent with only an anonymousId belongs to the user that anonymousId
// is tied to. Each anonymousId keeps the tie of the oldest version; a batch that adds or changes a
// tie re-attributes the anonymousId's stored events, so a late tie acts as if it had come first.

// ties stores the batch's ties, an older one replacing a newer, and notes the anonymousIds whose
// tie this batch set: their stored events may belong to another user now.
func (a *applier) ties(b *pgx.Batch, f *folded) error {
	if len(f.Ties) == 0 {
		return nil
	}
	n := len(f.Ties)
	anons, users, versions := make([]string, n), make([]string, n), make([]string, n)
	for i, t := range f.Ties {
		anons[i], users[i], versions[i] = t.AnonymousID, t.UserID, t.Version
	}
	b.Queue(`
		INSERT INTO tally.anonymous_ties AS r (tenant, anonymous_id, user_id, version)
		SELECT $1, t.anonymous_id, t.user_id, t.version
		FROM unnest($2::text[], $3::text[], $4::text[]) AS t(anonymous_id, user_id, version)
		ORDER BY t.anonymous_id
		ON CONFLICT (tenant, anonymous_id) DO UPDATE SET user_id = EXCLUDED.user_id, version = EXCLUDED.version
		WHERE EXCLUDED.version < r.version
		RETURNING r.anonymous_id`, a.tenant, anons, users, versions,
	).Query(func(rows pgx.Rows) error {
		var anon string
		_, err := pgx.ForEachRow(rows, []any{&anon}, func() error {
			a.tiedAnonymous[anon] = true
			return nil
		})
		return err
	})
	return nil
}

// restitch gives the stored events of the newly tied anonymousIds their tied user, and the
// account that user had at each event's time (unless the event named its own account).
func (a *applier) restitch(b *pgx.Batch, _ *folded) error {
	if len(a.tiedAnonymous) == 0 {
		return nil
	}
	b.Queue(`
		WITH moved AS MATERIALIZED (
			SELECT e.message_id, e.user_id AS old_user, ti.user_id AS new_user, e.account_id AS old_account,
				CASE WHEN e.account_from IN ('context', 'property') THEN e.account_id
				     ELSE tally.account_at($1, ti.user_id, e.timestamp) END AS new_account,
				e.timestamp
			FROM tally.anonymous_ties ti
			CROSS JOIN LATERAL (
				SELECT ev.message_id, ev.user_id, ev.account_id, ev.account_from, ev.timestamp FROM tally.events ev
				WHERE ev.tenant = $1 AND ev.anonymous_id = ti.anonymous_id AND (ev.user_id IS NULL OR ev.user_from = 'anonymous')
				OFFSET 0
			) e
			WHERE ti.tenant = $1 AND ti.anonymous_id = ANY($2::text[]) AND e.user_id IS DISTINCT FROM ti.user_id
		)
		UPDATE tally.events e SET user_id = m.new_user, user_from = 'anonymous', account_id = m.new_account,
			account_from = coalesce(e.account_from, 'user')
		FROM moved m
		WHERE e.tenant = $1 AND e.message_id = m.message_id
		RETURNING m.old_user, m.new_user, m.old_account, m.new_account, m.timestamp`,
		a.tenant, slices.Sorted(maps.Keys(a.tiedAnonymous)),
	).Query(a.collectMoves)
	return nil
}

// collectMoves notes for last_seen_at what re-attributed events did: the user and account an
// event moved to take it in; the ones it left are recomputed (it may have been their newest).
func (a *applier) collectMoves(rows pgx.Rows) error {
	var oldUser, newUser, oldAccount, newAccount *string
	var at time.Time
	_, err := pgx.ForEachRow(rows, []any{&oldUser, &newUser, &oldAccount, &newAccount, &at}, func() error {
		if oldUser != nil {
			a.seen.recomputeUsers[*oldUser] = true
		}
		if newUser != nil {
			a.seen.userEvent(*newUser, at)
		}
		if oldAccount != nil && (newAccount == nil || *oldAccount != *newAccount) {
			a.seen.recomputeAccounts[*oldAccount] = true
		}
		if newAccount != nil {
			a.seen.accountEvent(*newAccount, at)
		}
		return nil
	})
	return err
}
