package worker

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tallyhq/tally/workers/insights"
	"github.com/tallyhq/tally/workers/pool"
	"github.com/tallyhq/tally/workers/source"
)

// The files the operator mounts per member in a pool worker's credentials directory.
const (
	databaseURLSuffix      = ".database-url"
	databaseRoleSuffix     = ".database-role"
	insightsWriteKeySuffix = ".insights-write-key"
	// poolDatabaseURLFile is the pool's own login, which members with a database-role use.
	poolDatabaseURLFile = "pool.database-url"
)

// poolWorkers runs one Worker per member of a SegmentSourcePool that is not suspended: a member
// joining starts one, a settings change is applied to it, a member leaving or suspended stops
// it, and none of this touches the other members.
type poolWorkers struct {
	ctx            context.Context // the members' workers run until it ends
	js             jetstream.JetStream
	opts           Options // BatchSize, MaxWait, bounds, Logger, Metrics; Pool and Source per member
	credentialsDir string
	databaseURL    string // when a member has no credentials file of its own
	memberLogin    func(context.Context, *source.Config) (DatabaseLogin, error)
	version        string
	insights       *insights.Metrics
	dbs            *databases
	log            *slog.Logger
	// metrics forgets a member's series when it leaves; nil when the caller made the Metrics.
	metrics *forgetful
	// states counts the members by state (running, waiting, suspended): tally_worker_pool_members.
	states *prometheus.GaugeVec
	// loaded turns true once the bucket's content has arrived.
	loaded atomic.Bool

	mu      sync.Mutex
	members map[string]pool.Member // as the bucket lists them; nil until it has
	running map[string]*memberRun
	// problems holds the last problem logged per member, so each is logged once, until solved.
	problems map[string]string
	// schemaChecked is set once the schema was found current (or migrated).
	schemaChecked bool
}

// memberRun is a member's running worker (and insights pusher).
type memberRun struct {
	src    *source.Config
	login  DatabaseLogin
	cancel context.CancelFunc
	done   chan struct{}
	worker *Worker

	insightsKey  string // the write key the pusher runs with; "" when none runs
	insightsConf source.InsightsConfig
	stopInsights func()
}

// setMembers takes the bucket's current members and brings the running workers in line.
func (p *poolWorkers) setMembers(members map[string]pool.Member) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.members = members
	p.reconcileLocked()
	if !p.loaded.Swap(true) {
		p.log.Info("pool members loaded", "members", len(members), "running", len(p.running))
	}
}

// reconcile runs the members' workers again against the credentials directory (a member waiting
// for its credentials starts; a rotated database login restarts the member's worker).
func (p *poolWorkers) reconcile() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.members != nil {
		p.reconcileLocked()
	}
}

func (p *poolWorkers) reconcileLocked() {
	for key := range p.problems {
		if _, ok := p.members[key]; !ok {
			delete(p.problems, key)
		}
	}
	var stopping []*memberRun
	for key, run := range p.running {
		if m, ok := p.members[key]; !ok || m.Suspended {
			stopping = append(stopping, run)
			delete(p.running, key)
			delete(p.problems, key)
			p.log.Info("pool member stopped", "member", key, "suspended", ok)
		}
	}
	p.stop(stopping...)
	for _, run := range stopping {
		if _, ok := p.members[pool.Key(*run.src)]; !ok && p.metrics != nil { // left: its series go too (a suspended member keeps them)
			p.metrics.forget(run.src.String())
		}
	}

	for key, m := range p.members {
		if m.Suspended {
			continue
		}
		src, err := m.Config()
		if err != nil {
			p.problem(key, "invalid pool member; not running it", err)
			continue
		}
		login, err := p.memberDatabaseLogin(key, src)
		if err != nil || login.URL == "" {
			p.problem(key, "the member has no database credentials yet; it starts when they appear", err)
			continue
		}
		run := p.running[key]
		if run != nil && (run.login != login || run.src.Tenant != src.Tenant) {
			p.log.Info("pool member's database login changed; restarting its worker", "member", key)
			p.stop(run)
			delete(p.running, key)
			run = nil
		}
		if run == nil {
			if run, err = p.start(src, login); err != nil {
				p.problem(key, "cannot start the member's worker", err)
				continue
			}
			p.running[key] = run
			p.log.Info("pool member started", "member", key, "tenant", src.Tenant)
		} else if !sameSettings(run.src, src) {
			ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
			err := run.worker.UpdateSource(ctx, src)
			cancel()
			if err != nil { // tried again at the next reconcile
				p.problem(key, "cannot apply the member's new settings yet", err)
				continue
			}
			run.src = src
			p.log.Info("pool member's settings applied", "member", key)
		}
		if err := p.syncInsights(key, run); err != nil {
			p.problem(key, "cannot push the member's insights", err)
			continue
		}
		delete(p.problems, key)
	}
	suspended := 0
	for _, m := range p.members {
		if m.Suspended {
			suspended++
		}
	}
	p.states.WithLabelValues("running").Set(float64(len(p.running)))
	p.states.WithLabelValues("suspended").Set(float64(suspended))
	p.states.WithLabelValues("waiting").Set(float64(len(p.members) - suspended - len(p.running)))
}

// newPoolStates is the pool's series of tally_worker_pool_members, registered with reg once per
// process (tally local runs several pools).
func newPoolStates(reg prometheus.Registerer, ref pool.Ref) *prometheus.GaugeVec {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "tally", Subsystem: "worker", Name: "pool_members",
		Help: "Members of a SegmentSourcePool by state: running, waiting (for credentials, or failing to start) and suspended.",
	}, []string{"pool", "state"})
	if err := reg.Register(g); err != nil {
		var exists prometheus.AlreadyRegisteredError
		if !errors.As(err, &exists) {
			panic(err)
		}
		g = exists.ExistingCollector.(*prometheus.GaugeVec)
	}
	return g.MustCurryWith(prometheus.Labels{"pool": ref.String()})
}

// start runs a worker for src with login.
func (p *poolWorkers) start(src *source.Config, login DatabaseLogin) (*memberRun, error) {
	if !p.schemaChecked {
		// Once per process: the owner login migrates when the schema is behind, a tenant login
		// only finds it current (the manager migrates).
		if err := migrateAs(p.ctx, login, io.Discard); err != nil {
			return nil, err
		}
		p.schemaChecked = true
	}
	db, err := p.dbs.acquire(login)
	if err != nil {
		return nil, err
	}
	o := p.opts
	o.Pool, o.DatabaseRole, o.JetStream, o.Source = db, login.Role, p.js, src
	w, err := New(o)
	if err != nil {
		p.dbs.release(login.URL)
		return nil, err
	}
	ctx, cancel := context.WithCancel(p.ctx)
	run := &memberRun{src: src, login: login, cancel: cancel, done: make(chan struct{}), worker: w}
	go func() {
		defer close(run.done)
		_ = w.Run(ctx) // waits out lost connections; returns when ctx ends
	}()
	return run, nil
}

// stop stops the runs at once and waits for each to finish its batch in hand.
func (p *poolWorkers) stop(runs ...*memberRun) {
	for _, run := range runs {
		run.cancel()
		if run.stopInsights != nil {
			run.stopInsights()
		}
	}
	for _, run := range runs {
		<-run.done
		p.dbs.release(run.login.URL)
	}
}

// stopAll stops every member's worker (shutdown).
func (p *poolWorkers) stopAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	runs := make([]*memberRun, 0, len(p.running))
	for _, run := range p.running {
		runs = append(runs, run)
	}
	p.running = map[string]*memberRun{}
	p.members = nil // nothing starts again
	p.stop(runs...)
}

// syncInsights runs the member's insights pusher when its settings ask for one and its write key
// is mounted, restarting it when either changes.
func (p *poolWorkers) syncInsights(key string, run *memberRun) error {
	var conf source.InsightsConfig
	writeKey := ""
	if run.src.Insights != nil {
		conf = *run.src.Insights
		k, err := p.readCredential(key + insightsWriteKeySuffix)
		if err != nil {
			return err
		}
		if keys := source.ParseWriteKeys(k); len(keys) > 0 {
			writeKey = keys[0]
		} else {
			return errors.New("the member has insights but no insights write key is mounted yet")
		}
	}
	if writeKey == run.insightsKey && conf == run.insightsConf {
		return nil
	}
	if run.stopInsights != nil {
		run.stopInsights()
		run.stopInsights, run.insightsKey, run.insightsConf = nil, "", source.InsightsConfig{}
	}
	if writeKey == "" {
		return nil
	}
	stop, err := startPusher(p.ctx, run.src, run.login, writeKey, p.version, p.insights, p.log)
	if err != nil {
		return err
	}
	run.stopInsights, run.insightsKey, run.insightsConf = stop, writeKey, conf
	return nil
}

// memberDatabaseLogin is the member's database login: from MemberDatabaseLogin, else from the
// credentials directory (its own login, or its tenant's role on the pool's login), else the
// worker's --database-url; no URL when none.
func (p *poolWorkers) memberDatabaseLogin(key string, src *source.Config) (DatabaseLogin, error) {
	if p.memberLogin != nil {
		login, err := p.memberLogin(p.ctx, src)
		if err != nil || login.URL != "" {
			return login, err
		}
		return DatabaseLogin{URL: p.databaseURL}, nil
	}
	url, err := p.readCredential(key + databaseURLSuffix)
	if err != nil {
		return DatabaseLogin{}, err
	}
	if url = strings.TrimSpace(url); url != "" {
		return DatabaseLogin{URL: url}, nil
	}
	role, err := p.readCredential(key + databaseRoleSuffix)
	if err != nil {
		return DatabaseLogin{}, err
	}
	if role = strings.TrimSpace(role); role != "" {
		url, err := p.readCredential(poolDatabaseURLFile)
		if err != nil {
			return DatabaseLogin{}, err
		}
		if url = strings.TrimSpace(url); url == "" {
			return DatabaseLogin{}, errors.New("the pool's own database login is not mounted yet")
		}
		return DatabaseLogin{URL: url, Role: role}, nil
	}
	return DatabaseLogin{URL: p.databaseURL}, nil
}

// readCredential reads a file of the credentials directory; a missing one is "".
func (p *poolWorkers) readCredential(name string) (string, error) {
	if p.credentialsDir == "" {
		return "", nil
	}
	data, err := os.ReadFile(filepath.Join(p.credentialsDir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", errors.New("cannot read " + name) // never the content
	}
	return string(data), nil
}

// problem logs a member's problem once, until it changes or is solved.
func (p *poolWorkers) problem(key, msg string, err error) {
	text := msg
	if err != nil {
		text += ": " + err.Error()
	}
	if p.problems[key] == text {
		return
	}
	p.problems[key] = text
	if err == nil {
		p.log.Warn(msg, "member", key)
		return
	}
	p.log.Warn(msg, "member", key, "error", err)
}

// sameSettings compares what a worker applies of a source (its encoded settings; keys are not
// part of them).
func sameSettings(a, b *source.Config) bool {
	ea, errA := source.EncodeConfig(a)
	eb, errB := source.EncodeConfig(b)
	return errA == nil && errB == nil && bytes.Equal(ea, eb)
}
