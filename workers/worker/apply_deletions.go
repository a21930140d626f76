package worker

import (
	"github.com/jackc/pgx/v5"
)

// User deletions (Segment's privacy requests). A deletion of a user at version D voids every
// message about the user of version D or older, whenever it arrives: the stored rows are trimmed
// to what newer messages wrote (tally.forget_user), and a tombstone (tally.deletions) keeps the
// void messages of later batches out (foldWithout). Both run under the tenant's lock, so a
// deletion and the messages it voids settle the same way in any order.

// lookUpTombstones reads the tombstones of the batch's ids.
func (a *applier) lookUpTombstones(b *pgx.Batch, f *folded) error {
	if len(f.UserIDs) == 0 && len(f.AnonymousIDs) == 0 {
		return nil
	}
	b.Queue(`
		SELECT d.kind, d.id, d.version FROM tally.deletions d
		WHERE d.tenant = $1 AND ((d.kind = 'user' AND d.id = ANY($2::text[])) OR (d.kind = 'anonymous' AND d.id = ANY($3::text[])))`,
		a.tenant, f.UserIDs, f.AnonymousIDs,
	).Query(func(rows pgx.Rows) error {
		var kind, id, version string
		_, err := pgx.ForEachRow(rows, []any{&kind, &id, &version}, func() error {
			a.void.raise(kind, id, version)
			return nil
		})
		return err
	})
	return nil
}

// forget applies the batch's deletions that no equal or newer deletion applied already, and
// notes what they leave to settle: last_seen_at of the rows that lost events, the user's
// remaining fallback events, and the anonymousIds whose events are void with the user's.
func (a *applier) forget(b *pgx.Batch, f *folded) error {
	for _, d := range f.Deletes {
		if stored, ok := a.void.users[d.UserID]; ok && stored >= d.Version {
			continue
		}
		a.void.raise("user", d.UserID, d.Version)
		a.forgotten[d.UserID] = true
		a.usersDeleted++
		b.Queue(`SELECT f.kind, f.id FROM tally.forget_user($1, $2, $3, $4, $5) AS f`,
			a.tenant, d.UserID, d.Version, d.At, d.MessageID,
		).Query(func(rows pgx.Rows) error {
			var kind, id string
			_, err := pgx.ForEachRow(rows, []any{&kind, &id}, func() error {
				switch kind {
				case "account":
					a.seen.recomputeAccounts[id] = true
				case "user":
					a.seen.recomputeUsers[id] = true
				case "anonymous":
					a.void.raise("anonymous", id, d.Version)
				}
				return nil
			})
			return err
		})
	}
	return nil
}
