package worker

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// schemaLockID serialises creating the schema itself, which must exist before goose can keep its
// version table in it.
const schemaLockID int64 = 0x74616c6c79736368 // "tallysch"

// Migrate brings the tally schema of the database at databaseURL up to date. Several processes may
// call it at once: goose holds a Postgres advisory lock while it migrates, and the others wait for
// it and then find nothing left to do. A schema already up to date is only read, so a tenant's
// role (which may not migrate) passes; the manager migrates for them.
func Migrate(ctx context.Context, databaseURL string) error {
	return MigrateWithProgress(ctx, databaseURL, io.Discard)
}

// MigrateWithProgress is Migrate telling progress what it applies, one line per migration as it
// completes (some build indexes over large tables and take a while).
func MigrateWithProgress(ctx context.Context, databaseURL string, progress io.Writer) error {
	return migrateAs(ctx, DatabaseLogin{URL: databaseURL}, progress)
}

// migrateAs is MigrateWithProgress with login (a pool's login only finds the schema current,
// through the tenants' group).
func migrateAs(ctx context.Context, login DatabaseLogin, progress io.Writer) error {
	cfg, err := login.connConfig("")
	if err != nil {
		return err
	}
	db := stdlib.OpenDB(*cfg)
	defer db.Close()
	check, err := newMigrationProvider(db)
	if err != nil {
		return err
	}
	current, target, versionErr := check.GetVersions(ctx)
	if versionErr == nil && current >= target {
		fmt.Fprintf(progress, "the tally schema is up to date (version %d)\n", current)
		return nil
	}
	cannot := func(err error) error {
		if versionErr == nil {
			return fmt.Errorf("the tally schema is at version %d, this build needs %d, and it could not migrate it "+
				"(a tenant's login cannot: the manager migrates): %w", current, target, err)
		}
		return err
	}
	if err := createSchema(ctx, db); err != nil {
		return cannot(fmt.Errorf("create schema tally: %w", err))
	}
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		return err
	}
	provider, err := newMigrationProvider(db, goose.WithSessionLocker(locker))
	if err != nil {
		return err
	}
	// One at a time, so a long one shows which it is.
	pending := 0
	for _, s := range provider.ListSources() {
		if s.Version > current {
			pending++
		}
	}
	fmt.Fprintf(progress, "%d migration(s) to apply\n", pending)
	for done := 1; ; done++ {
		res, err := provider.UpByOne(ctx)
		if errors.Is(err, goose.ErrNoNextVersion) {
			return nil
		}
		if err != nil {
			return cannot(fmt.Errorf("migrate: %w", err))
		}
		fmt.Fprintf(progress, "applied %s (%d of %d) in %s\n", filepath.Base(res.Source.Path), done, pending, res.Duration.Round(time.Millisecond))
	}
}

func newMigrationProvider(db *sql.DB, opts ...goose.ProviderOption) (*goose.Provider, error) {
	migrations, err := fs.Sub(migrationFiles, "migrations")
	if err != nil {
		return nil, err
	}
	return goose.NewProvider(goose.DialectPostgres, db, migrations, append(opts,
		goose.WithTableName("tally.goose_db_version"),
		goose.WithDisableGlobalRegistry(true),
	)...)
}

// createSchema runs CREATE SCHEMA IF NOT EXISTS under a transaction-scoped advisory lock: two such
// statements racing each other would otherwise fail on the catalog's unique index.
func createSchema(ctx context.Context, db *sql.DB) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock($1)", schemaLockID); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, "CREATE SCHEMA IF NOT EXISTS tally"); err != nil {
		// The lock does not always suffice: the statement may still find a stale catalog and
		// collide with the schema another process just created. Then the schema exists.
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && (pgErr.Code == pgerrcode.UniqueViolation || pgErr.Code == pgerrcode.DuplicateSchema) {
			return nil
		}
		return err
	}
	return tx.Commit()
}

// The pgx database/sql driver registers itself as "pgx" when imported.
var _ = stdlib.GetDefaultDriver
