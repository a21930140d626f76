package insights

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"time"

	"github.com/jackc/pgx/v5"
)

// Entity kinds, as stored in tally.insights_delivered.kind.
const (
	KindAccount = "account"
	KindUser    = "user"
)

// Trait names of the insights.
const (
	TraitUsers         = "tally_users"
	TraitActiveUsers7d = "tally_active_users_7d"
	TraitActiveUsers30 = "tally_active_users_30d"
	TraitEvents7d      = "tally_events_7d"
	TraitEvents30d     = "tally_events_30d"
	TraitLastSeenAt    = "tally_last_seen_at"
	TraitAccounts      = "tally_accounts"
)

// timeLayout is ISO-8601 in UTC with milliseconds, the form Segment's own libraries send.
const timeLayout = "2006-01-02T15:04:05.000Z"

// entity is one account or user with the insight traits computed at push time and the hash of
// the traits last delivered for it ("" when never).
type entity struct {
	kind      string
	id        string
	traits    map[string]any
	encoded   []byte // traits as JSON, keys sorted: what the hash and the message id cover
	hash      string
	delivered string
}

func newEntity(kind, id string, traits map[string]any, delivered *string) (*entity, error) {
	encoded, err := json.Marshal(traits) // maps encode with sorted keys: a canonical form
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(encoded)
	e := &entity{kind: kind, id: id, traits: traits, encoded: encoded, hash: hex.EncodeToString(sum[:16])}
	if delivered != nil {
		e.delivered = *delivered
	}
	return e, nil
}

// changed reports whether Segment lacks these traits.
func (e *entity) changed() bool { return e.hash != e.delivered }

// messageID is deterministic for (tenant, entity, traits, traits replaced): see the package doc.
func (e *entity) messageID(tenant string) string {
	h := sha256.New()
	for _, part := range []string{e.kind, tenant, e.id, e.delivered} {
		h.Write([]byte(part))
		h.Write([]byte{0})
	}
	h.Write(e.encoded)
	return "tally-insights-" + hex.EncodeToString(h.Sum(nil)[:16])
}

func lastSeen(t *time.Time) any {
	if t == nil {
		return nil
	}
	return t.UTC().Format(timeLayout)
}

// accountsPage computes the insights of up to limit accounts after the id after, in id order, with
// the hash last delivered for each by this source. Every count goes through an index: events by
// account or by user and time, memberships by account.
const accountsPage = `
SELECT a.account_id, a.last_seen_at, m.users, m.active_7d, m.active_30d, ev.events_7d, ev.events_30d, d.hash
FROM tally.accounts a
CROSS JOIN LATERAL (
    SELECT count(*) AS users,
           count(*) FILTER (WHERE u.latest > $3::timestamptz - interval '168 hours') AS active_7d,
           count(*) FILTER (WHERE u.latest > $3::timestamptz - interval '720 hours') AS active_30d
    FROM tally.account_users au
    CROSS JOIN LATERAL (
        SELECT max(e.timestamp) AS latest FROM tally.events e
        WHERE e.tenant = au.tenant AND e.user_id = au.user_id AND e.timestamp <= $3) u
    WHERE au.tenant = a.tenant AND au.account_id = a.account_id AND au.linked) m
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE e.timestamp > $3::timestamptz - interval '168 hours') AS events_7d,
           count(*) AS events_30d
    FROM tally.events e
    WHERE e.tenant = a.tenant AND e.account_id = a.account_id
      AND e.timestamp > $3::timestamptz - interval '720 hours' AND e.timestamp <= $3) ev
LEFT JOIN tally.insights_delivered d
    ON d.tenant = a.tenant AND d.source = $2 AND d.kind = 'account' AND d.id = a.account_id
WHERE a.tenant = $1 AND a.account_id > $4
ORDER BY a.account_id
LIMIT $5`

// usersPage is accountsPage for users.
const usersPage = `
SELECT u.user_id, u.last_seen_at,
    (SELECT count(*) FROM tally.events e
     WHERE e.tenant = u.tenant AND e.user_id = u.user_id
       AND e.timestamp > $3::timestamptz - interval '720 hours' AND e.timestamp <= $3) AS events_30d,
    (SELECT count(*) FROM tally.account_users au
     WHERE au.tenant = u.tenant AND au.user_id = u.user_id AND au.linked) AS accounts,
    d.hash
FROM tally.users u
LEFT JOIN tally.insights_delivered d
    ON d.tenant = u.tenant AND d.source = $2 AND d.kind = 'user' AND d.id = u.user_id
WHERE u.tenant = $1 AND u.user_id > $4
ORDER BY u.user_id
LIMIT $5`

// readPage reads the next page of one kind of entity, computed as of now.
func readPage(ctx context.Context, conn *pgx.Conn, kind, tenant, source string, now time.Time, after string, limit int) ([]*entity, error) {
	query := accountsPage
	if kind == KindUser {
		query = usersPage
	}
	rows, err := conn.Query(ctx, query, tenant, source, now, after, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var page []*entity
	for rows.Next() {
		var (
			id        string
			seen      *time.Time
			delivered *string
			traits    map[string]any
		)
		if kind == KindAccount {
			var users, active7, active30, events7, events30 int64
			if err := rows.Scan(&id, &seen, &users, &active7, &active30, &events7, &events30, &delivered); err != nil {
				return nil, err
			}
			traits = map[string]any{
				TraitUsers: users, TraitActiveUsers7d: active7, TraitActiveUsers30: active30,
				TraitEvents7d: events7, TraitEvents30d: events30, TraitLastSeenAt: lastSeen(seen),
			}
		} else {
			var events30, accounts int64
			if err := rows.Scan(&id, &seen, &events30, &accounts, &delivered); err != nil {
				return nil, err
			}
			traits = map[string]any{TraitEvents30d: events30, TraitLastSeenAt: lastSeen(seen), TraitAccounts: accounts}
		}
		e, err := newEntity(kind, id, traits, delivered)
		if err != nil {
			return nil, err
		}
		page = append(page, e)
	}
	return page, rows.Err()
}

// markDelivered remembers what Segment accepted, after its 200.
func markDelivered(ctx context.Context, conn *pgx.Conn, tenant, source string, delivered []*entity, ids map[*entity]string, at time.Time) error {
	if len(delivered) == 0 {
		return nil
	}
	kinds := make([]string, len(delivered))
	entityIDs := make([]string, len(delivered))
	hashes := make([]string, len(delivered))
	traits := make([]string, len(delivered))
	messageIDs := make([]string, len(delivered))
	for i, e := range delivered {
		kinds[i], entityIDs[i], hashes[i], traits[i], messageIDs[i] = e.kind, e.id, e.hash, string(e.encoded), ids[e]
	}
	_, err := conn.Exec(ctx, `
		INSERT INTO tally.insights_delivered AS d (tenant, source, kind, id, hash, traits, message_id, delivered_at)
		SELECT $1, $2, t.kind, t.id, t.hash, t.traits::jsonb, t.message_id, $3
		FROM unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::text[]) AS t(kind, id, hash, traits, message_id)
		ON CONFLICT (tenant, source, kind, id) DO UPDATE
		SET hash = excluded.hash, traits = excluded.traits, message_id = excluded.message_id, delivered_at = excluded.delivered_at`,
		tenant, source, at, kinds, entityIDs, hashes, traits, messageIDs)
	return err
}

// forgetGone drops the deliveries of accounts and users that no longer exist, so a re-created one
// is sent again in full.
func forgetGone(ctx context.Context, conn *pgx.Conn, tenant, source string) error {
	_, err := conn.Exec(ctx, `
		DELETE FROM tally.insights_delivered d
		WHERE d.tenant = $1 AND d.source = $2 AND (
		    (d.kind = 'account' AND NOT EXISTS (SELECT 1 FROM tally.accounts a WHERE a.tenant = d.tenant AND a.account_id = d.id))
		 OR (d.kind = 'user' AND NOT EXISTS (SELECT 1 FROM tally.users u WHERE u.tenant = d.tenant AND u.user_id = d.id)))`,
		tenant, source)
	return err
}

// Querier is what ReadStatus reads through: a pgx connection or pool.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Status is how a source's pushes went, as the operator reports it in status.insights.
type Status struct {
	// LastAttemptAt is when the latest push ended, delivered or not.
	LastAttemptAt time.Time
	// LastPushAt is when the latest push that delivered every change ended; nil before the first.
	LastPushAt *time.Time
	// EntitiesPushed is the number of accounts and users that push delivered (0: nothing changed).
	EntitiesPushed int64
	// LastError is why the latest attempt failed; empty when it succeeded.
	LastError string
}

// ReadStatus reads how the source's pushes went; false when it has not pushed yet.
func ReadStatus(ctx context.Context, db Querier, tenant, source string) (Status, bool, error) {
	var s Status
	var lastError *string
	err := db.QueryRow(ctx, `
		SELECT last_attempt_at, last_push_at, entities_pushed, last_error
		FROM tally.insights_pushes WHERE tenant = $1 AND source = $2`, tenant, source).
		Scan(&s.LastAttemptAt, &s.LastPushAt, &s.EntitiesPushed, &lastError)
	if err == pgx.ErrNoRows {
		return Status{}, false, nil
	}
	if err != nil {
		return Status{}, false, err
	}
	if lastError != nil {
		s.LastError = *lastError
	}
	return s, true, nil
}

// recordAttempt writes the outcome of a push: a success sets last_push_at and the count, a failure
// only the attempt and its error.
func recordAttempt(ctx context.Context, conn *pgx.Conn, tenant, source string, at time.Time, pushed int64, pushErr string) error {
	if pushErr == "" {
		_, err := conn.Exec(ctx, `
			INSERT INTO tally.insights_pushes (tenant, source, last_attempt_at, last_push_at, entities_pushed, last_error)
			VALUES ($1, $2, $3, $3, $4, NULL)
			ON CONFLICT (tenant, source) DO UPDATE
			SET last_attempt_at = $3, last_push_at = $3, entities_pushed = $4, last_error = NULL`,
			tenant, source, at, pushed)
		return err
	}
	_, err := conn.Exec(ctx, `
		INSERT INTO tally.insights_pushes (tenant, source, last_attempt_at, last_error)
		VALUES ($1, $2, $3, $4)
		ON CONFLICT (tenant, source) DO UPDATE SET last_attempt_at = $3, last_error = $4`,
		tenant, source, at, pushErr)
	return err
}
