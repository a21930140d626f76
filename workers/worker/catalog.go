package worker

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// CatalogEntry is one event name a tenant received (tally.event_catalog).
type CatalogEntry struct {
	Event       string     `json:"event"`
	FirstSeenAt *time.Time `json:"firstSeenAt,omitempty"`
	LastSeenAt  *time.Time `json:"lastSeenAt,omitempty"`
	Count       int64      `json:"count"`
	Ignored     bool       `json:"ignored"`
}

// Catalog lists the tenant's event names, the busiest first.
func Catalog(ctx context.Context, pool *pgxpool.Pool, tenant string) ([]CatalogEntry, error) {
	rows, err := pool.Query(ctx, `
		SELECT event, first_seen_at, last_seen_at, count, ignored FROM tally.event_catalog
		WHERE tenant = $1 ORDER BY count DESC, event`, tenant)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByPos[CatalogEntry])
}

// CatalogSummary is the short view of a tenant's catalog that a SegmentSource's status carries.
type CatalogSummary struct {
	Events      int64 // distinct event names received
	Ignored     int64 // names in ignoredEvents
	SeenLastDay int64 // names received in the 24 hours before now
}

// SummarizeCatalog counts the tenant's event names.
func SummarizeCatalog(ctx context.Context, pool *pgxpool.Pool, tenant string, now time.Time) (CatalogSummary, error) {
	var s CatalogSummary
	err := pool.QueryRow(ctx, `
		SELECT count(*) FILTER (WHERE count > 0), count(*) FILTER (WHERE ignored),
			count(*) FILTER (WHERE last_seen_at > $2::timestamptz - interval '24 hours')
		FROM tally.event_catalog WHERE tenant = $1`, tenant, now).Scan(&s.Events, &s.Ignored, &s.SeenLastDay)
	return s, err
}
