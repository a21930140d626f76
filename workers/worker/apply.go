package worker

import (
	"context"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// applyResult is what a committed batch did, for metrics.
type applyResult struct {
	EventsInserted int
	// UnnamedAccountsCreated: accounts this batch created without a name (a group call without
	// name for an unknown account), each counted once, when its row is inserted.
	UnnamedAccountsCreated int
	// UsersDeleted: deletion requests applied (not those an equal or newer one had applied).
	UsersDeleted int
	// LockWait is how long the transaction waited for its users' slots.
	LockWait time.Duration
}

// apply writes a folded batch in one transaction with one set-based statement per table, sent in
// a few pipelined rounds: a round holds the statements that need nothing from each other's
// results, so a batch costs four round trips or so, not one per statement.
//
// A transaction locks what it touches (see locks.go): the slots of its users first, the accounts
// it writes at its end. Each then sees every commit its cross-row steps depend on (a track's
// fallback account reads associations, its user the anonymousId's tie; re-resolving and
// re-attributing events reads events; last_seen_at of a row created now reads the events stored
// before it), while batches of other users run at once. Sources of different tenants never wait
// for each other. Within a round, statements run in order: re-attributed events already have
// their final account when re-resolution looks at them.
//
// Events go in before accounts and users, so the entity upserts write last_seen_at once, already
// including the events this transaction attributed to them. extra are slots a previous try found
// it needed (errLockSetGrew).
func apply(ctx context.Context, pool *pgxpool.Pool, tenant, source string, f *folded, bounds txBounds, extra lockSet) (applyResult, error) {
	var res applyResult
	ctx, cancel := context.WithTimeout(ctx, bounds.deadline())
	defer cancel()
	err := pgx.BeginTxFunc(ctx, pool, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, func(tx pgx.Tx) error {
		a := newApplier(tenant, source, bounds)
		if err := a.lockUsers(ctx, tx, f, extra); err != nil {
			return err
		}
		res.LockWait = a.lockWait
		// Deletions first: the tombstones in force (read with the locks), the batch's own
		// deletions applied to the stored rows, and the batch folded again without the messages
		// they void.
		if err := a.send(ctx, tx, f, a.forget); err != nil {
			return err
		}
		if a.void.voidsAny(f.messages) {
			f = foldWithout(f.messages, f.accountProperty, a.void)
		}
		rounds := [][]func(*pgx.Batch, *folded) error{
			{a.links, a.memberships, a.ties},
			{a.restitch, a.reresolve, a.events}, // needs the new links and ties
		}
		for _, round := range rounds {
			if err := a.send(ctx, tx, f, round...); err != nil {
				return err
			}
		}
		if more := a.missingSlots(); len(more.slots) > 0 {
			return &errLockSetGrew{more: more}
		}
		rounds = [][]func(*pgx.Batch, *folded) error{
			// needs the inserted events
			{a.users, a.raiseUserLastSeen, a.aliases, a.catalog, a.lockAccounts, a.accounts, a.raiseAccountLastSeen},
			{a.settleAccounts},    // needs the created accounts and those the raise missed
			{a.recomputeLastSeen}, // under those locks
		}
		for _, round := range rounds {
			if err := a.send(ctx, tx, f, round...); err != nil {
				return err
			}
		}
		res.EventsInserted, res.UnnamedAccountsCreated, res.UsersDeleted = a.inserted, a.unnamedCreated, a.usersDeleted
		return nil
	})
	return res, err
}

// lockUsers sets the transaction's bounds and locks the slots of the batch's users: those its
// messages name, with extra, and those the stored ties add (read before locking, read again
// under the locks: a tie that moved in between rolls the transaction back for another try). The
// tombstones in force are read in the same round trip.
func (a *applier) lockUsers(ctx context.Context, tx pgx.Tx, f *folded, extra lockSet) error {
	locks := baseLocks(f).merge(extra)
	lookups := tieLookups(f)
	before := map[string]storedTie{}
	if len(lookups) > 0 && !locks.all {
		b := &pgx.Batch{}
		queueTieLookup(b, a.tenant, lookups, before)
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return err
		}
		locks = locks.merge(tieLocks(f, before))
	}
	a.locks = locks
	b := &pgx.Batch{}
	b.Queue("SELECT set_config('jit', 'off', true), set_config('statement_timeout', $1, true), set_config('lock_timeout', $2, true)",
		a.bounds.statementSetting(), a.bounds.lockSetting())
	queueLockRows(b, a.tenant, locks.keys())
	after := map[string]storedTie{}
	if len(lookups) > 0 && !locks.all {
		queueTieLookup(b, a.tenant, lookups, after)
	}
	if err := a.lookUpTombstones(b, f); err != nil {
		return err
	}
	start := time.Now()
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return err
	}
	a.lockWait = time.Since(start)
	if needed := tieLocks(f, after); !locks.all {
		more := newLockSet()
		for s := range needed.slots {
			if !locks.slots[s] {
				more.slots[s] = true
			}
		}
		if len(more.slots) > 0 {
			return &errLockSetGrew{more: more}
		}
	}
	return nil
}

// send queues a round of statements that need nothing from each other's results and sends them
// in one round trip.
func (a *applier) send(ctx context.Context, tx pgx.Tx, f *folded, round ...func(*pgx.Batch, *folded) error) error {
	b := &pgx.Batch{}
	for _, queue := range round {
		if err := queue(b, f); err != nil {
			return err
		}
	}
	if b.Len() == 0 {
		return nil
	}
	return tx.SendBatch(ctx, b).Close()
}

// txBounds bound a batch transaction: each statement and lock wait (Postgres enforces them),
// and the whole transaction (a context deadline, for a server that stops answering at all).
type txBounds struct {
	statement, lock time.Duration
	batchBytes      int // of a fetch; not the transaction's, but the same worker setting
}

// deadline is the whole transaction's: its rounds of statements, each bounded, with room to spare.
func (t txBounds) deadline() time.Duration { return 4*t.statement + t.lock }

// statementSetting and lockSetting are the bounds as Postgres settings (milliseconds).
func (t txBounds) statementSetting() string { return strconv.FormatInt(t.statement.Milliseconds(), 10) }
func (t txBounds) lockSetting() string      { return strconv.FormatInt(t.lock.Milliseconds(), 10) }

// The transaction's bounds are set with its first locks (lockUsers). JIT is off for the
// transaction: its statements each touch a batch's rows through indexes, and compiling them
// (which stale statistics on a growing table can trigger) costs more than it saves.

// applier holds what the statements of one transaction learn from each other's results.
type applier struct {
	tenant, source string
	bounds         txBounds
	// locks: the slots this transaction holds; lockWait: how long it waited for them.
	locks    lockSet
	lockWait time.Duration
	// insertedAccounts: the accounts this transaction created; missingAccounts: those its raise
	// of last_seen_at found no row for (see settleAccounts).
	insertedAccounts, missingAccounts map[string]bool

	// usersWithNewLinks maps a user to the oldest link or unlink this batch added for them: their
	// stored fallback events from then on may have a different account now.
	usersWithNewLinks map[string]time.Time
	// tiedAnonymous: the anonymousIds whose tie this batch set; their stored events are
	// attributed again.
	tiedAnonymous map[string]bool
	// void: the deletions in force; forgotten: the users this batch deleted, whose remaining
	// fallback events are all resolved again (the links they had may be gone).
	void           tombstones
	forgotten      map[string]bool
	usersDeleted   int
	seen           lastSeenChanges
	catalogRows    map[string]*catalogRow
	inserted       int
	unnamedCreated int
}

func newApplier(tenant, source string, bounds txBounds) *applier {
	return &applier{tenant: tenant, source: source, bounds: bounds,
		usersWithNewLinks: map[string]time.Time{}, tiedAnonymous: map[string]bool{}, forgotten: map[string]bool{},
		insertedAccounts: map[string]bool{}, missingAccounts: map[string]bool{},
		seen: newLastSeenChanges(), catalogRows: map[string]*catalogRow{}}
}

type catalogRow struct {
	first, last time.Time
	count       int64
}

// markIgnored keeps event_catalog.ignored equal to the source's ignoredEvents: the receiver drops
// those events, so this is the only place they show up. It takes no slot: its two statements each
// settle their rows under the rows' own locks, and a batch's catalog upsert never writes the
// ignored flag. (Every worker runs it when it starts; a pool worker starts a thousand at once.)
func markIgnored(ctx context.Context, pool *pgxpool.Pool, tenant string, ignored []string, bounds txBounds) error {
	names := slices.Sorted(slices.Values(ignored))
	ctx, cancel := context.WithTimeout(ctx, bounds.deadline())
	defer cancel()
	return pgx.BeginTxFunc(ctx, pool, pgx.TxOptions{}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT set_config('statement_timeout', $1, true), set_config('lock_timeout', $2, true)",
			bounds.statementSetting(), bounds.lockSetting()); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `
			INSERT INTO tally.event_catalog AS c (tenant, event, ignored)
			SELECT $1, t.event, true FROM unnest($2::text[]) AS t(event) ORDER BY t.event
			ON CONFLICT (tenant, event) DO UPDATE SET ignored = true WHERE NOT c.ignored`, tenant, names); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `
			UPDATE tally.event_catalog SET ignored = false
			WHERE tenant = $1 AND ignored AND NOT (event = ANY($2::text[]))`, tenant, names)
		return err
	})
}
