package worker

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tallyhq/tally/workers/insights"
	"github.com/tallyhq/tally/workers/pool"
	"github.com/tallyhq/tally/workers/source"
)

// PoolOptions configure PoolWorkers.
type PoolOptions struct {
	Pool      pool.Ref
	JetStream jetstream.JetStream
	// Worker shapes every member's Worker (batch size, waits, bounds, Logger, Metrics); its Pool
	// and Source are set per member.
	Worker Options
	// DatabaseURL is the login of members without one of their own; given, it also migrates the
	// schema when it is behind (the owner's login).
	DatabaseURL string
	// CredentialsDir holds, per member, <namespace>.<name>.database-url (its tenant's own login)
	// and <namespace>.<name>.insights-write-key, as the operator mounts them; re-read every
	// ReloadInterval.
	CredentialsDir string
	// MemberDatabaseLogin, when set, gives a member's login instead of CredentialsDir (tally
	// local: the pool's login, granted the member tenant's role); no URL when it has none.
	MemberDatabaseLogin func(ctx context.Context, src *source.Config) (DatabaseLogin, error)
	// ReloadInterval is how often the credentials are read again; 10s when 0.
	ReloadInterval time.Duration
	// MaxConnsPerLogin and MaxConns bound the Postgres connections of one login and of all;
	// DefaultPoolMaxConns and DefaultPoolMaxConnsTotal when 0.
	MaxConnsPerLogin, MaxConns int
	// Version is context.library.version of the insights pushed.
	Version string
	// Registerer takes the pool's own metrics (members by state, insights pushes).
	Registerer prometheus.Registerer
	// InsightsMetrics, when set, are the insights metrics to use instead of registering new ones
	// (a process that registered them already).
	InsightsMetrics *insights.Metrics
}

// PoolWorkers runs the workers of a SegmentSourcePool in this process: one Worker per member
// that is not suspended, as the pool's bucket lists them.
type PoolWorkers struct {
	o PoolOptions
	p *poolWorkers
}

// NewPool checks the options; Run starts the members.
func NewPool(o PoolOptions) (*PoolWorkers, error) {
	if o.JetStream == nil || o.Registerer == nil {
		return nil, errors.New("pool workers: JetStream and a Registerer are required")
	}
	if o.ReloadInterval <= 0 {
		o.ReloadInterval = 10 * time.Second
	}
	if o.Worker.Logger == nil {
		o.Worker.Logger = slog.Default()
	}
	var metrics *forgetful
	if o.Worker.Metrics == nil {
		metrics = &forgetful{Registerer: o.Registerer}
		o.Worker.Metrics = NewMetrics(metrics)
	}
	if o.InsightsMetrics == nil {
		o.InsightsMetrics = insights.NewMetrics(o.Registerer)
	}
	return &PoolWorkers{o: o, p: &poolWorkers{js: o.JetStream, opts: o.Worker, credentialsDir: o.CredentialsDir,
		databaseURL: o.DatabaseURL, memberLogin: o.MemberDatabaseLogin, version: o.Version, insights: o.InsightsMetrics,
		dbs: newDatabases(o.MaxConnsPerLogin, o.MaxConns), log: o.Worker.Logger,
		running: map[string]*memberRun{}, problems: map[string]string{}, states: newPoolStates(o.Registerer, o.Pool),
		metrics: metrics}}, nil
}

// Loaded reports whether the members have arrived from the bucket.
func (w *PoolWorkers) Loaded() bool { return w.p.loaded.Load() }

// Run migrates when DatabaseURL is given and the schema is behind, then runs the members until
// ctx ends; it then stops them all, each after its batch in hand.
func (w *PoolWorkers) Run(ctx context.Context) error {
	p := w.p
	p.ctx = ctx
	if w.o.DatabaseURL != "" {
		if err := Migrate(ctx, w.o.DatabaseURL); err != nil {
			return err
		}
		p.schemaChecked = true
	}
	defer p.stopAll()
	go func() {
		t := time.NewTicker(w.o.ReloadInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				p.reconcile()
			}
		}
	}()
	log := p.log
	pool.Follow(ctx, w.o.JetStream, w.o.Pool, p.setMembers, func(key string, err error) {
		log.Error("a pool member's entry does not decode; not running it", "member", key, "error", err)
	}, func(err error) {
		log.Warn("cannot watch the pool's members; keeping the running ones", "bucket", w.o.Pool.Bucket(), "error", err)
	})
	return nil
}
