package worker

import (
	"errors"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"
)

// errorKind says what a failed batch transaction means for its messages.
type errorKind int

const (
	// infrastructure: Postgres unreachable, restarting, out of connections or disk, or set up
	// wrong (a missing table, a revoked grant). Keep the messages, back off and try again, however
	// long it takes: JetStream still holds them, and waiting never loses one.
	infrastructure errorKind = iota
	// contention: a deadlock, a serialization failure or a lock wait past lock_timeout between
	// concurrent transactions; retry now.
	contention
	// badData: Postgres refused a value of some message (a number out of range, a key too long
	// for an index). Retrying cannot help: find the message and dead-letter it.
	badData
	// unexplained: anything else (a statement past statement_timeout, an internal error). It may
	// be the data or a passing state: retry a few times, then treat it as bad data, so one message
	// cannot stall its source forever.
	unexplained
)

// errLocalData marks a message the worker itself could not encode for Postgres.
var errLocalData = errors.New("message cannot be encoded")

func classify(err error) errorKind {
	if errors.Is(err, errLocalData) {
		return badData
	}
	var connectErr *pgconn.ConnectError
	var pgErr *pgconn.PgError
	if errors.As(err, &connectErr) || !errors.As(err, &pgErr) {
		return infrastructure // no connection (whatever the server said), or the connection failed
	}
	code := pgErr.Code
	switch {
	case code == pgerrcode.SerializationFailure || code == pgerrcode.DeadlockDetected || code == pgerrcode.LockNotAvailable:
		return contention
	case pgerrcode.IsDataException(code), // invalid text, untranslatable character, numeric out of range...
		pgerrcode.IsIntegrityConstraintViolation(code),
		pgerrcode.IsProgramLimitExceeded(code): // a value too large for an index row, too deep a jsonb...
		return badData
	case pgerrcode.IsConnectionException(code),
		pgerrcode.IsInsufficientResources(code), // disk full, out of memory, too many connections
		pgerrcode.IsSystemError(code),           // I/O errors
		code == pgerrcode.AdminShutdown || code == pgerrcode.CrashShutdown || code == pgerrcode.CannotConnectNow || code == pgerrcode.DatabaseDropped,
		code == pgerrcode.ReadOnlySQLTransaction,           // a failover in progress
		pgerrcode.IsSyntaxErrororAccessRuleViolation(code), // schema or grants not as the worker expects
		pgerrcode.IsInvalidAuthorizationSpecification(code),
		pgerrcode.IsInvalidCatalogName(code), pgerrcode.IsInvalidSchemaName(code):
		return infrastructure
	}
	return unexplained
}
