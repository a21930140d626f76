package worker

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Defaults of a pool worker's Postgres connections.
const (
	// DefaultPoolMaxConns bounds the connections of one tenant's own login in a pool worker (a
	// source naming a database Secret of its own): a member's worker runs one transaction at a
	// time per consumer, and most members are idle. The pool's own login is bounded by the total.
	DefaultPoolMaxConns = 4
	// DefaultPoolMaxConnsTotal bounds a pool worker's connections over all logins (Postgres
	// allows 100 by default, and the manager and others need some).
	DefaultPoolMaxConnsTotal = 40
	// poolApplicationName names a pool worker's connections in pg_stat_activity, unless the URL
	// names them.
	poolApplicationName = "tally-pool-worker"
	// poolConnIdleTime closes a connection unused for this long, so idle tenants hold none.
	poolConnIdleTime = 30 * time.Second
)

// databases shares one small, lazy connection pool per database URL among a pool worker's
// members: the members of one tenant log in with the same URL, and a thousand mostly idle
// members must not hold a thousand connections.
type databases struct {
	// maxConns bounds a tenant's own login; a pool's login, which every member shares, may use
	// all maxTotal.
	maxConns, maxTotal int32
	limit              *connLimit
	mu                 sync.Mutex
	pools              map[string]*sharedDatabase
}

type sharedDatabase struct {
	pool  *pgxpool.Pool
	users int
}

// newDatabases shares pools of at most maxConns connections each and maxTotal in all.
func newDatabases(maxConns, maxTotal int) *databases {
	if maxConns <= 0 {
		maxConns = DefaultPoolMaxConns
	}
	if maxTotal <= 0 {
		maxTotal = DefaultPoolMaxConnsTotal
	}
	d := &databases{maxConns: int32(min(maxConns, maxTotal, 1<<15)), maxTotal: int32(min(maxTotal, 1<<15)), pools: map[string]*sharedDatabase{}}
	d.limit = newConnLimit(maxTotal, d.closeIdle)
	return d
}

// closeIdle closes every idle connection of every login.
func (d *databases) closeIdle() {
	d.mu.Lock()
	pools := make([]*pgxpool.Pool, 0, len(d.pools))
	for _, db := range d.pools {
		pools = append(pools, db.pool)
	}
	d.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for _, p := range pools {
		for _, c := range p.AcquireAllIdle(ctx) {
			_ = c.Hijack().Close(ctx)
		}
	}
}

// acquire returns the pool of login's URL, creating it without connecting; release it when done.
// A pool login's connections name the tenant of each acquire's context (nameTenant).
func (d *databases) acquire(login DatabaseLogin) (*pgxpool.Pool, error) {
	url := login.URL
	d.mu.Lock()
	defer d.mu.Unlock()
	if db := d.pools[url]; db != nil {
		db.users++
		return db.pool, nil
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, errors.New("the database URL does not parse") // never the URL: it holds a password
	}
	cfg.MinConns = 0
	cfg.MaxConns = d.maxConns
	cfg.MaxConnIdleTime = poolConnIdleTime
	cfg.HealthCheckPeriod = poolConnIdleTime / 2
	cfg.ConnConfig.DialFunc = d.limit.dial(cfg.ConnConfig.DialFunc)
	if login.Role != "" {
		cfg.MaxConns = d.maxTotal
		cfg.PrepareConn = nameTenant
		// Every member's statements are the same few dozen, with a member's handful of rows
		// each: a plan made once per connection serves them all. Left to itself, Postgres plans
		// most of them again at every execution (a custom plan): in the bench's many-tenants
		// phase the small tenants' freshness p50 was 0.6-0.8 s with custom plans, 0.05-0.13 s
		// with generic ones. A URL that sets plan_cache_mode (as a parameter or in options) keeps
		// its own.
		params := cfg.ConnConfig.RuntimeParams
		if params["plan_cache_mode"] == "" && !strings.Contains(params["options"], "plan_cache_mode") {
			params["plan_cache_mode"] = "force_generic_plan"
		}
	}
	if cfg.ConnConfig.RuntimeParams["application_name"] == "" { // what pg_stat_activity shows
		cfg.ConnConfig.RuntimeParams["application_name"] = poolApplicationName
	}
	p, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, errors.New("the database URL is not usable")
	}
	d.pools[url] = &sharedDatabase{pool: p, users: 1}
	return p, nil
}

// release gives a pool back; the last user closes it.
func (d *databases) release(url string) {
	d.mu.Lock()
	db := d.pools[url]
	if db == nil {
		d.mu.Unlock()
		return
	}
	db.users--
	if db.users > 0 {
		d.mu.Unlock()
		return
	}
	delete(d.pools, url)
	d.mu.Unlock()
	db.pool.Close()
}
