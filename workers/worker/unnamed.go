package worker

import (
	"context"

	"github.com/jackc/pgx/v5/pgxpool"
)

// UnnamedAccounts counts tenant's accounts without a name: created by group calls without name
// and not named by any call since. An account needs a name, so these are worth showing.
func UnnamedAccounts(ctx context.Context, pool *pgxpool.Pool, tenant string) (int64, error) {
	var n int64
	err := pool.QueryRow(ctx, `SELECT count(*) FROM tally.accounts WHERE tenant = $1 AND name IS NULL`, tenant).Scan(&n)
	return n, err
}
