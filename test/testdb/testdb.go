// Package testdb gives each test suite a fresh database on the local Postgres server and drops it
// afterwards, so suites never see each other's rows.
package testdb

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// AdminURL is the server the databases are created on: TALLY_TEST_DATABASE_URL, or the machine's
// local Postgres with trust auth.
func AdminURL() string {
	if u := os.Getenv("TALLY_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

// Fresh creates an empty database named after prefix and returns its URL and a func that drops it.
func Fresh(ctx context.Context, prefix string) (string, func(), error) {
	return FreshOn(ctx, AdminURL(), prefix)
}

// FreshOn is Fresh on the server at adminURL.
func FreshOn(ctx context.Context, adminURL, prefix string) (string, func(), error) {
	admin, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return "", nil, fmt.Errorf("local Postgres not reachable at %s (start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start): %w", adminURL, err)
	}
	defer admin.Close(ctx)
	name := fmt.Sprintf("tally_%s_%d_%d", sanitize(prefix), os.Getpid(), time.Now().UnixNano()%1e9)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", nil, err
	}
	u, err := url.Parse(adminURL)
	if err != nil {
		return "", nil, err
	}
	u.Path = "/" + name
	drop := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		roles := tenantRoles(ctx, u.String())
		if c, err := pgx.Connect(ctx, adminURL); err == nil {
			_, _ = c.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
			for _, role := range roles { // roles are the server's, not the database's
				_, _ = c.Exec(ctx, "DROP ROLE IF EXISTS "+pgx.Identifier{role}.Sanitize())
			}
			_ = c.Close(ctx)
		}
	}
	return u.String(), drop, nil
}

// tenantRoles lists the login roles the database's tenants and pools were given (none when it
// has no tally schema).
func tenantRoles(ctx context.Context, databaseURL string) []string {
	c, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		return nil
	}
	defer c.Close(ctx)
	var all []string
	for _, table := range []string{"tally.tenant_roles", "tally.pool_logins"} {
		rows, err := c.Query(ctx, "SELECT role_name FROM "+table)
		if err != nil {
			continue // a schema from before the table
		}
		roles, _ := pgx.CollectRows(rows, pgx.RowTo[string])
		all = append(all, roles...)
	}
	return all
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			return r
		}
		return '_'
	}, strings.ToLower(s))
}
