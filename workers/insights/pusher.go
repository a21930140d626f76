package insights

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tallyhq/tally/workers/source"
)

// Defaults of a pusher's Options.
const (
	// DefaultPageSize is how many accounts or users are read, diffed and delivered at a time.
	DefaultPageSize = 1000
	// DefaultBatchSize is how many messages go in one request (Segment's limit is 500 KB a
	// request; an insight message is a few hundred bytes).
	DefaultBatchSize = 250
	// DefaultRetryBase and DefaultRetryMax shape analytics-go's retries of one request: 1s, 2s,
	// 4s, ... up to 30s, ten attempts, about three minutes in all.
	DefaultRetryBase = time.Second
	DefaultRetryMax  = 30 * time.Second
	// DefaultFailureBackoff is the wait after a failed push, doubled for each failure in a row,
	// never longer than the interval.
	DefaultFailureBackoff = 30 * time.Second
	// DefaultStandbyRecheck is how often a pusher that does not hold the lock tries again (or the
	// interval, when shorter): how long a failover takes at most.
	DefaultStandbyRecheck = 30 * time.Second
	// DefaultStatementTimeout bounds each statement of a push.
	DefaultStatementTimeout = 5 * time.Minute
)

// ErrStandby is Push's answer when another pusher holds the source's lock: it pushes, this one
// does not.
var ErrStandby = errors.New("another pusher holds this source's insights lock")

// Options shape a Pusher.
type Options struct {
	// Source is the pushing source: its tenant, its name, and Insights (endpoint, interval,
	// write key), which must be set.
	Source *source.Config
	// Conn configures the pusher's one Postgres connection, which holds the lock and runs every
	// statement of its pushes: nothing is taken from the workers' pool. A tenant named in the
	// runtime parameter TenantSetting (a pool's login) is checked again before every push (see
	// recheck).
	Conn *pgx.ConnConfig
	// LibraryVersion is context.library.version of the messages (Tally's version).
	LibraryVersion string
	Logger         *slog.Logger
	Metrics        *Metrics
	// Transport makes the HTTP requests; a clone of http.DefaultTransport when nil.
	Transport http.RoundTripper
	// Now is the clock the windows are computed against; time.Now when nil.
	Now func() time.Time

	PageSize         int
	BatchSize        int
	RetryBase        time.Duration
	RetryMax         time.Duration
	FailureBackoff   time.Duration
	StandbyRecheck   time.Duration
	StatementTimeout time.Duration
}

// Pusher pushes one source's insights. Push and Run are not safe for concurrent use; several
// Pushers, in one process or many, coordinate through the lock.
type Pusher struct {
	o        Options
	settings source.InsightsConfig
	tenant   string
	source   string
	lockKey  int64

	conn      *pgx.Conn // while it holds the lock
	plainOnly atomic.Bool
}

// New checks the options and applies defaults; it connects nowhere yet.
func New(o Options) (*Pusher, error) {
	if o.Source == nil || o.Source.Insights == nil {
		return nil, errors.New("insights: the source has no insights settings")
	}
	s := *o.Source.Insights
	switch {
	case s.WriteKey == "":
		return nil, fmt.Errorf("insights of %s: no write key", o.Source)
	case s.Interval <= 0:
		return nil, fmt.Errorf("insights of %s: the interval must be positive", o.Source)
	case o.Conn == nil:
		return nil, errors.New("insights: no database connection configured")
	}
	if s.Endpoint == "" {
		s.Endpoint = source.DefaultInsightsEndpoint
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Metrics == nil {
		return nil, errors.New("insights: no metrics")
	}
	if o.Transport == nil {
		o.Transport = http.DefaultTransport.(*http.Transport).Clone()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defDuration := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&o.PageSize, DefaultPageSize)
	def(&o.BatchSize, DefaultBatchSize)
	defDuration(&o.RetryBase, DefaultRetryBase)
	defDuration(&o.RetryMax, DefaultRetryMax)
	defDuration(&o.FailureBackoff, DefaultFailureBackoff)
	defDuration(&o.StandbyRecheck, DefaultStandbyRecheck)
	defDuration(&o.StatementTimeout, DefaultStatementTimeout)
	if o.LibraryVersion == "" {
		o.LibraryVersion = "dev"
	}
	conn := o.Conn.Copy()
	if conn.RuntimeParams == nil {
		conn.RuntimeParams = map[string]string{}
	}
	conn.RuntimeParams["application_name"] = "tally-insights"
	conn.RuntimeParams["statement_timeout"] = fmt.Sprint(o.StatementTimeout.Milliseconds())
	o.Conn = conn
	return &Pusher{o: o, settings: s, tenant: o.Source.Tenant, source: o.Source.String(), lockKey: LockKey(o.Source.Tenant, o.Source.String())}, nil
}

// LockKey is the advisory lock key of a source's pusher: one per (tenant, source), apart from the
// worker's tenant locks (another prefix).
func LockKey(tenant, source string) int64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte("tally/insights/" + tenant + "/" + source))
	return int64(h.Sum64())
}

// Result is what one push delivered.
type Result struct {
	// At is the push's now: the end of its windows.
	At       time.Time
	Accounts int
	Users    int
}

// Entities is the number of accounts and users delivered.
func (r Result) Entities() int { return r.Accounts + r.Users }

// Push takes the source's lock unless it holds it already (ErrStandby when another pusher does),
// computes every account's and user's insights as of now, and delivers those that changed. It
// keeps the lock for the next Push until Close or until its connection fails.
func (p *Pusher) Push(ctx context.Context) (Result, error) {
	if err := p.acquire(ctx); err != nil {
		if errors.Is(err, ErrStandby) {
			p.o.Metrics.push(p.source, resultStandby)
		}
		return Result{}, err
	}
	now := p.o.Now().UTC().Truncate(time.Microsecond)
	res, err := p.push(ctx, now)
	p.o.Metrics.delivered(p.source, res)
	if ctx.Err() != nil {
		return res, err
	}
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	if rerr := recordAttempt(ctx, p.conn, p.tenant, p.source, time.Now().UTC(), int64(res.Entities()), msg); rerr != nil && err == nil {
		err = fmt.Errorf("recording the push: %w", rerr)
	}
	if err != nil {
		p.o.Metrics.push(p.source, resultFailure)
		if p.conn.IsClosed() {
			p.release() // the lock went with the connection
		}
		return res, err
	}
	p.o.Metrics.push(p.source, resultSuccess)
	p.o.Metrics.succeeded(p.source, time.Now())
	return res, nil
}

func (p *Pusher) push(ctx context.Context, now time.Time) (Result, error) {
	res := Result{At: now}
	for _, kind := range []string{KindAccount, KindUser} {
		after := ""
		for {
			page, err := readPage(ctx, p.conn, kind, p.tenant, p.source, now, after, p.o.PageSize)
			if err != nil {
				return res, fmt.Errorf("computing %s insights: %w", kind, err)
			}
			if len(page) == 0 {
				break
			}
			after = page[len(page)-1].id
			var changed []*entity
			ids := map[*entity]string{}
			for _, e := range page {
				if e.changed() {
					changed = append(changed, e)
					ids[e] = e.messageID(p.tenant)
				}
			}
			if len(changed) > 0 {
				delivered, derr := p.deliver(ctx, changed, ids, now)
				// What the endpoint accepted is remembered even when the rest failed.
				if err := markDelivered(ctx, p.conn, p.tenant, p.source, delivered, ids, time.Now().UTC()); err != nil {
					return res, fmt.Errorf("recording delivered insights: %w", err)
				}
				if kind == KindAccount {
					res.Accounts += len(delivered)
				} else {
					res.Users += len(delivered)
				}
				if derr != nil {
					var de *DeliveryError
					if errors.As(derr, &de) {
						p.o.Metrics.failed(p.source, de)
					}
					return res, derr
				}
			}
			if len(page) < p.o.PageSize {
				break
			}
		}
	}
	if err := forgetGone(ctx, p.conn, p.tenant, p.source); err != nil {
		return res, fmt.Errorf("forgetting deleted entities: %w", err)
	}
	return res, nil
}

// acquire makes sure the pusher holds the lock on a live connection that may still reach its
// tenant.
func (p *Pusher) acquire(ctx context.Context) error {
	if p.conn != nil {
		if err := p.recheck(ctx, p.conn); err == nil {
			return nil
		}
		p.release()
	}
	conn, err := pgx.ConnectConfig(ctx, p.o.Conn)
	if err != nil {
		return fmt.Errorf("connecting to Postgres: %w", err)
	}
	if err := p.recheck(ctx, conn); err != nil {
		_ = conn.Close(context.Background())
		return err
	}
	var held bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", p.lockKey).Scan(&held); err != nil {
		_ = conn.Close(context.Background())
		return fmt.Errorf("taking the insights lock: %w", err)
	}
	if !held {
		_ = conn.Close(context.Background())
		return ErrStandby
	}
	p.conn = conn
	p.o.Metrics.lockHeld(p.source, true)
	// The lag counts from the last push of whichever pusher held the lock before.
	if s, ok, err := ReadStatus(ctx, conn, p.tenant, p.source); err == nil && ok && s.LastPushAt != nil {
		p.o.Metrics.succeeded(p.source, *s.LastPushAt)
	}
	p.o.Logger.Info("insights pusher active", "source", p.source, "endpoint", p.settings.Endpoint, "interval", p.settings.Interval)
	return nil
}

// TenantSetting is the Postgres setting in which a pool's login names the member tenant it
// writes for (migration 00012): the row policies honour it only while the login is a member of
// that tenant's role.
const TenantSetting = "tally.tenant"

// recheck asks conn whether it still works and, when it names a tenant (a pool's login acting for
// a member), whether its login may still reach that tenant: a member that left the pool no longer
// grants it. Without it, a connection would keep reading and pushing for as long as it lives.
func (p *Pusher) recheck(ctx context.Context, conn *pgx.Conn) error {
	tenant := p.o.Conn.RuntimeParams[TenantSetting]
	if tenant == "" {
		return conn.Ping(ctx)
	}
	var reached *string
	if err := conn.QueryRow(ctx, `SELECT tally.current_tenant()`).Scan(&reached); err != nil {
		return err
	}
	if reached == nil || *reached != tenant {
		return fmt.Errorf("the pool's login may no longer read tenant %q (has its member left the pool?)", tenant)
	}
	return nil
}

// release closes the connection, which drops the lock.
func (p *Pusher) release() {
	if p.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = p.conn.Close(ctx)
	p.conn = nil
	p.o.Metrics.lockHeld(p.source, false)
}

// Close releases the lock and the connection.
func (p *Pusher) Close() { p.release() }

// Run pushes every interval until ctx ends, while it holds the lock; a standby tries for the
// lock every StandbyRecheck (or interval, when shorter). A failed push is tried again after a
// backoff that doubles up to the interval; after the endpoint refused the insights (4xx), after
// the interval.
func (p *Pusher) Run(ctx context.Context) error {
	defer p.Close()
	failures := 0
	standby := false
	for {
		res, err := p.Push(ctx)
		if ctx.Err() != nil {
			return nil
		}
		wait := p.settings.Interval
		var de *DeliveryError
		switch {
		case err == nil:
			failures = 0
			standby = false
			if res.Entities() > 0 {
				p.o.Logger.Info("insights pushed", "source", p.source, "accounts", res.Accounts, "users", res.Users)
			}
		case errors.Is(err, ErrStandby):
			if !standby {
				p.o.Logger.Info("insights pusher on standby: another replica pushes", "source", p.source)
			}
			standby = true
			wait = min(wait, p.o.StandbyRecheck)
		case errors.As(err, &de) && de.Permanent:
			failures++
			p.o.Logger.Error("insights refused by the endpoint; trying again after the interval", "source", p.source, "err", err)
		default:
			failures++
			backoff := p.o.FailureBackoff
			for i := 1; i < failures && backoff < wait; i++ {
				backoff *= 2
			}
			wait = min(wait, backoff)
			p.o.Logger.Warn("insights push failed", "source", p.source, "err", err, "retry_in", wait)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}
