package worker

import (
	"errors"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"
)

// errorKind says what a failed batch transaction means for its messages.
type errorKind int

const (
	// infrastructure: Postgres unreachable, restarting, out of connections... Keep the messages,
	// back off and try again; JetStream still holds them.
	infrastructure errorKind = iota
	// contention: a deadlock or serialization failure between concurrent transactions; retry now.
	contention
	// badData: Postgres refused a value of some message (a \u0000, a number out of range, a key
	// too long for an index). Retrying cannot help: find the message and dead-letter it.
	badData
)

// errLocalData marks a message the worker itself could not encode for Postgres.
var errLocalData = errors.New("message cannot be encoded")

func classify(err error) errorKind {
	if errors.Is(err, errLocalData) {
		return badData
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return infrastructure
	}
	switch {
	case pgErr.Code == pgerrcode.SerializationFailure || pgErr.Code == pgerrcode.DeadlockDetected:
		return contention
	case pgerrcode.IsDataException(pgErr.Code), // invalid text, untranslatable character, numeric out of range...
		pgerrcode.IsIntegrityConstraintViolation(pgErr.Code),
		pgerrcode.IsProgramLimitExceeded(pgErr.Code): // a value too large for an index row, too many columns...
		return badData
	}
	return infrastructure
}
