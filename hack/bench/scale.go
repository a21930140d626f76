package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/tallyhq/tally/workers/pool"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
	"github.com/tallyhq/tally/workers/worker"
)

// workerFigures reads what the workers' metrics say about one source since the phase began:
// the lock waits of its transactions and the messages each consumer committed per second.
func (e *env) workerFigures(src *source.Config, elapsed time.Duration, res *Result) error {
	families, err := e.registry.Gather()
	if err != nil {
		return err
	}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			if label(m, "source") != src.String() {
				continue
			}
			switch f.GetName() {
			case "tally_worker_lock_wait_seconds":
				h := m.GetHistogram()
				if h.GetSampleCount() > 0 {
					res.LockWaitMeanMs = h.GetSampleSum() / float64(h.GetSampleCount()) * 1000
					res.LockWaitP99Ms = histogramQuantile(h, 0.99) * 1000
				}
			case "tally_worker_consumer_messages_total":
				if res.ConsumerEventsPerS == nil {
					res.ConsumerEventsPerS = map[string]float64{}
				}
				res.ConsumerEventsPerS[label(m, "consumer")] = m.GetCounter().GetValue() / elapsed.Seconds()
			}
		}
	}
	return nil
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// histogramQuantile is the upper bound of the bucket holding quantile q (Prometheus' buckets
// are cumulative).
func histogramQuantile(h *dto.Histogram, q float64) float64 {
	want := q * float64(h.GetSampleCount())
	for _, b := range h.GetBucket() {
		if float64(b.GetCumulativeCount()) >= want {
			return b.GetUpperBound()
		}
	}
	return h.GetSampleSum() / float64(h.GetSampleCount())
}

// manyTenants runs --tenants sources at once on one receiver, each with its own worker, as a pool
// serves them: one big tenant sends closed-loop batches as fast as it can (saturating its worker,
// or, with --big-tenant-limit, its rate limit, whose 429s its clients wait out) while the others
// share an open-loop rate of single track calls, and the small tenants' freshness (send to row
// visible) is measured.
func (e *env) manyTenants(ctx context.Context, res *Result) error {
	n := e.cfg.settings.Tenants
	if n < 2 {
		return fmt.Errorf("--tenants must be at least 2")
	}
	sources := make([]*source.Config, n)
	for i := range sources {
		src := &source.Config{Namespace: "many", Name: "t" + strconv.Itoa(i), Tenant: "many-t" + strconv.Itoa(i),
			WriteKeys: []string{e.writeKey + "-many-" + strconv.Itoa(i)}, StreamMaxBytes: 8 << 20,
			StreamReplicas: e.cfg.settings.NATSNodes}
		if i == 0 {
			src.StreamMaxBytes, src.Partitions = 256<<20, e.cfg.settings.Partitions
			if limit := e.cfg.settings.BigTenantLimit; limit != 0 {
				if limit < 0 { // half the traffic, as the skew has it
					limit = e.cfg.settings.SmallTenantsRate
				}
				src.RateLimit = &source.RateLimit{EventsPerSecond: limit}
			}
		}
		if err := stream.Ensure(ctx, e.js, src.Stream(), src.StreamSettings()); err != nil {
			return err
		}
		sources[i] = src
	}
	defer func() {
		for _, src := range sources {
			_ = stream.Delete(context.WithoutCancel(ctx), e.js, src.Stream())
		}
	}()
	if err := e.pipeline.Serve(ctx, sources); err != nil {
		return err
	}
	// The big tenant's workers, on a connection pool of their own (a dedicated source, or a pool
	// of its tier); the small ones in a pool worker (smallTenantsPool). Both fetch with a longer
	// wait than the other phases' (a thousand idle fetch loops).
	bigPool, err := e.connections(ctx, 8)
	if err != nil {
		return err
	}
	defer bigPool.Close()
	metrics := worker.NewMetrics(prometheus.NewRegistry())
	wctx, stopWorkers := context.WithCancel(ctx)
	var workers sync.WaitGroup
	defer func() { stopWorkers(); workers.Wait() }()
	var started []*worker.Worker
	for range e.cfg.settings.WorkerReplicas {
		w, err := worker.New(worker.Options{Pool: bigPool, JetStream: e.js, Source: sources[0], MaxWait: manyMaxWait,
			BatchSize: e.cfg.settings.WorkerBatchSize, Logger: e.cfg.log, Metrics: metrics})
		if err != nil {
			return err
		}
		workers.Go(func() { _ = w.Run(wctx) })
		started = append(started, w)
	}
	sessionsBefore, err := e.sessions(ctx)
	if err != nil {
		return err
	}
	stopSmall, err := e.smallTenantsPool(ctx, sources[1:])
	if err != nil {
		return err
	}
	defer stopSmall()
	// Measure a running pool, not its start: every worker bound to its consumers first.
	for _, w := range started {
		for !w.Ready() {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	// What a thousand members cost while none of them sends: the pool worker's idle fetch
	// loops, and NATS answering them. After a settling time: each member's start (its
	// transaction that marks the ignored events, its first pulls) is not idle.
	idle, err := idleCPU(ctx, manyIdleSettle, manyIdleWindow)
	if err != nil {
		return err
	}

	watch := newTenantsWatch(e)
	pollCtx, stopPoll := context.WithCancel(ctx)
	polled := make(chan error, 1)
	go func() { polled <- watch.poll(pollCtx) }()
	defer stopPoll()

	// The small ones: an open loop of single tracks over every other tenant, for d. Before the
	// measured phase, a warm-up of --many-warm-up: a pool worker that just started makes its
	// connections and their plans in the first seconds of load, which a running one has made.
	client := e.client()
	rng := rand.New(rand.NewPCG(8, 8))
	var sends sync.WaitGroup
	var sent, refused atomic.Int64
	var acksMu sync.Mutex
	var acks []time.Duration
	seq := 0
	sendSmall := func(d time.Duration, measured bool) {
		const tick = 20 * time.Millisecond
		perTick := max(1, e.cfg.settings.SmallTenantsRate*int(tick)/int(time.Second))
		ticker := time.NewTicker(tick)
		defer ticker.Stop()
		deadline := time.Now().Add(d)
		for now := range ticker.C {
			if now.After(deadline) {
				return
			}
			for range perTick {
				seq++
				src := sources[1+rng.IntN(n-1)]
				id := fmt.Sprintf("small-%d", seq)
				body := []byte(`{"type":"track","userId":"u` + strconv.Itoa(seq%50) + `","event":"Small","messageId":"` + id + `"}`)
				watch.sent(src.Tenant, id, time.Now(), measured)
				sends.Go(func() {
					start := time.Now()
					ok, _, _ := e.post(client, src, "/v1/track", body)
					switch {
					case !ok:
						watch.forget(src.Tenant, id)
						if measured {
							refused.Add(1)
						}
					case measured:
						took := time.Since(start)
						acksMu.Lock()
						acks = append(acks, took)
						acksMu.Unlock()
						sent.Add(1)
					}
				})
			}
		}
	}
	sendSmall(e.cfg.manyWarmUp, false)

	// The big tenant: a closed loop for the phase's length, or --big-tenant-rate events/s.
	var big loadRun
	var bigDone sync.WaitGroup
	templates := batchTemplates(7, 64, e.cfg.settings.BatchSize)
	cpuBefore, err := sampleCPU()
	if err != nil {
		return err
	}
	measuredFrom, watchBefore := time.Now(), watch.pace.busyTime()
	bigDone.Go(func() {
		if rate := e.cfg.settings.BigTenantRate; rate > 0 {
			big = e.openLoop(ctx, sources[0], templates, e.cfg.settings.BatchSize, rate)
		} else {
			big = e.closedLoop(ctx, sources[0], templates, e.cfg.settings.BatchSize)
		}
	})
	sendSmall(e.phaseLength(), true)
	sends.Wait()
	bigDone.Wait()
	cpuAfter, err := sampleCPU()
	if err != nil {
		return err
	}
	measured := time.Since(measuredFrom)
	busy := cpuAfter.busyPercent(cpuBefore, measured)
	watching := 100 * float64(watch.pace.busyTime()-watchBefore) / float64(measured)
	// What the big tenant's workers had not applied when the load stopped: above zero, it
	// sent more than they could take (saturated).
	bigState, err := stream.Inspect(ctx, e.js, sources[0].Stream())
	if err != nil {
		return err
	}
	for _, src := range sources {
		if err := e.drained(ctx, src, 10*time.Minute); err != nil {
			return err
		}
	}
	lat, err := awaitVisible(watch.finish, polled, watch.latencies)
	if err != nil {
		return err
	}
	sessionsAfter, err := e.sessions(ctx)
	if err != nil {
		return err
	}
	res.ManyTenants = &ManyTenantsResult{SessionsOpened: sessionsAfter - sessionsBefore,
		Tenants: n, BigEventsPerS: big.eventsPerSecond(), SmallEventsPerS: float64(sent.Load()) / e.phaseLength().Seconds(),
		SmallFreshnessP50Ms: percentileMs(lat, 50), SmallFreshnessP99Ms: percentileMs(lat, 99),
		SmallWarmUpFreshnessP99Ms: percentileMs(watch.warmUpLatencies(), 99),
		SmallAckP50Ms:             percentileMs(acks, 50), SmallAckP99Ms: percentileMs(acks, 99),
		BigBacklogAtEnd: bigState.Backlog, Rejected: big.rejected + refused.Load(), IdleCPUPercent: idle,
		MachineBusyPercent: busy, WatchLookUpPercent: watching,
	}
	return nil
}

// sessions is how many sessions Postgres has opened on the bench's database so far.
func (e *env) sessions(ctx context.Context) (int64, error) {
	var n int64
	err := e.pool.QueryRow(ctx, `SELECT sessions FROM pg_stat_database WHERE datname = current_database()`).Scan(&n)
	return n, err
}

// manyIdleSettle and manyIdleWindow: how long the many-tenants phase waits before it measures
// its idle CPU, and how long it measures.
// The window is one idle worker's long pull (30 s), so it holds each member's renewal once.
const manyIdleSettle, manyIdleWindow = 10 * time.Second, 30 * time.Second

// idleCPU is this process's CPU time (user and system) over d after settle, in percent of one
// core.
func idleCPU(ctx context.Context, settle, d time.Duration) (float64, error) {
	if sleepUntil(ctx, time.Now().Add(settle)); ctx.Err() != nil {
		return 0, ctx.Err()
	}
	before, err := cpuTime()
	if err != nil {
		return 0, err
	}
	start := time.Now()
	if sleepUntil(ctx, time.Now().Add(d)); ctx.Err() != nil {
		return 0, ctx.Err()
	}
	after, err := cpuTime()
	if err != nil {
		return 0, err
	}
	return 100 * float64(after-before) / float64(time.Since(start)), nil
}

// manyMaxWait is the fetch wait of the many-tenants phase's workers.
const manyMaxWait = 200 * time.Millisecond

// smallTenantsPool runs the small tenants' workers in one pool worker (worker.NewPool), as a
// SegmentSourcePool's worker runs its members, with --small-tenants-login: the pool's login,
// naming each member's tenant (as the operator sets it up), or each tenant's own login
// (one connection per tenant that has work, within the pool worker's 40). It returns once every
// member runs.
func (e *env) smallTenantsPool(ctx context.Context, members []*source.Config) (stop func(), err error) {
	ref := pool.Ref{Namespace: "bench", Name: "small"}
	kv, err := pool.EnsureBucket(ctx, e.js, ref, e.cfg.settings.NATSNodes)
	if err != nil {
		return nil, err
	}
	roles := worker.NewTenantRoles(e.pool, e.dbURL)
	poolURL, err := roles.EnsurePoolLogin(ctx, ref.String())
	if err != nil {
		return nil, err
	}
	logins := make(map[string]worker.DatabaseLogin, len(members))
	for _, src := range members {
		url, err := roles.Ensure(ctx, src.Tenant, "")
		if err != nil {
			return nil, err
		}
		login := worker.DatabaseLogin{URL: url}
		if e.cfg.settings.SmallTenantsLogin != "tenant" {
			role, err := roles.GrantPoolMember(ctx, ref.String(), src.Namespace+"/"+src.Name, src.Tenant)
			if err != nil {
				return nil, err
			}
			login = worker.DatabaseLogin{URL: poolURL, Role: role}
		}
		logins[src.Tenant] = login
		if _, err := pool.Put(ctx, kv, pool.Member{Source: *src, WriteKeyDigests: pool.DigestKeys(src.WriteKeys)}); err != nil {
			return nil, err
		}
	}
	reg := prometheus.NewRegistry()
	pw, err := worker.NewPool(worker.PoolOptions{Pool: ref, JetStream: e.js, Registerer: reg,
		Worker: worker.Options{MaxWait: manyMaxWait, BatchSize: e.cfg.settings.WorkerBatchSize, Logger: e.cfg.log},
		MemberDatabaseLogin: func(_ context.Context, src *source.Config) (worker.DatabaseLogin, error) {
			return logins[src.Tenant], nil
		}})
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	var runErr error
	go func() { runErr = pw.Run(runCtx); close(done) }()
	stop = func() {
		cancel()
		<-done
		_ = pool.DeleteBucket(context.WithoutCancel(ctx), e.js, ref)
	}
	deadline := time.After(2 * time.Minute)
	for running(reg) < len(members) {
		select {
		case <-done:
			cancel()
			return nil, fmt.Errorf("the small tenants' pool worker stopped: %w", runErr)
		case <-deadline:
			stop()
			return nil, fmt.Errorf("the small tenants' pool worker runs %d of %d members after 2 minutes", running(reg), len(members))
		case <-ctx.Done():
			stop()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return stop, nil
}

// running is the pool worker's count of running members (tally_worker_pool_members).
func running(reg *prometheus.Registry) int {
	families, _ := reg.Gather()
	for _, f := range families {
		if f.GetName() != "tally_worker_pool_members" {
			continue
		}
		for _, m := range f.GetMetric() {
			if label(m, "state") == "running" {
				return int(m.GetGauge().GetValue())
			}
		}
	}
	return 0
}

// tenantsWatch is visibilityWatch over many tenants: it records when each sent row became
// visible, looking the oldest pending ones up by (tenant, messageId).
type tenantsWatch struct {
	e       *env
	mu      sync.Mutex
	pending map[[2]string]sentRow
	// found: the measured rows' latencies; warmUp: those sent during the warm-up.
	found, warmUp []time.Duration
	done          chan struct{}
	pace          pollPacer
}

type sentRow struct {
	at       time.Time
	measured bool
}

func newTenantsWatch(e *env) *tenantsWatch {
	return &tenantsWatch{e: e, pending: map[[2]string]sentRow{}, done: make(chan struct{})}
}

func (w *tenantsWatch) sent(tenant, id string, at time.Time, measured bool) {
	w.mu.Lock()
	w.pending[[2]string{tenant, id}] = sentRow{at: at, measured: measured}
	w.mu.Unlock()
}

func (w *tenantsWatch) forget(tenant, id string) {
	w.mu.Lock()
	delete(w.pending, [2]string{tenant, id})
	w.mu.Unlock()
}

func (w *tenantsWatch) finish() { close(w.done) }

func (w *tenantsWatch) latencies() []time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]time.Duration(nil), w.found...)
}

func (w *tenantsWatch) warmUpLatencies() []time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]time.Duration(nil), w.warmUp...)
}

func (w *tenantsWatch) poll(ctx context.Context) error {
	for ctx.Err() == nil {
		w.mu.Lock()
		var tenants, ids []string
		for k := range w.pending {
			tenants, ids = append(tenants, k[0]), append(ids, k[1])
			if len(ids) == 5000 {
				break
			}
		}
		w.mu.Unlock()
		if len(ids) == 0 {
			select {
			case <-w.done:
				return nil
			case <-time.After(5 * time.Millisecond):
				continue
			}
		}
		start := time.Now()
		rows, err := w.e.pool.Query(ctx, `SELECT e.tenant, e.message_id FROM unnest($1::text[], $2::text[]) AS t(tenant, id)
			JOIN tally.events e ON e.tenant = t.tenant AND e.message_id = t.id`, tenants, ids)
		if err != nil {
			return err
		}
		seenAt := time.Now()
		var visible [][2]string
		for rows.Next() {
			var k [2]string
			if err := rows.Scan(&k[0], &k[1]); err != nil {
				rows.Close()
				return err
			}
			visible = append(visible, k)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		took := time.Since(start)
		w.mu.Lock()
		for _, k := range visible {
			if row, ok := w.pending[k]; ok {
				if row.measured {
					w.found = append(w.found, seenAt.Sub(row.at))
				} else {
					w.warmUp = append(w.warmUp, seenAt.Sub(row.at))
				}
				delete(w.pending, k)
			}
		}
		w.mu.Unlock()
		w.pace.wait(ctx, took)
	}
	return ctx.Err()
}

// connections is a Postgres pool of its own on the bench's database.
func (e *env) connections(ctx context.Context, maxConns int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(e.dbURL)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = maxConns
	return pgxpool.NewWithConfig(ctx, cfg)
}

// openLoop sends batches of perRequest messages to src at rate events/s for the phase's length,
// whatever the answers' latency.
func (e *env) openLoop(ctx context.Context, src *source.Config, templates []template, perRequest, rate int) loadRun {
	client := e.client()
	ticker := time.NewTicker(time.Duration(float64(time.Second) * float64(perRequest) / float64(rate)))
	defer ticker.Stop()
	deadline := time.Now().Add(e.phaseLength())
	start := time.Now()
	var sends sync.WaitGroup
	var accepted, rejected atomic.Int64
	var n int64
	for now := range ticker.C {
		if now.After(deadline) || ctx.Err() != nil {
			break
		}
		n++
		body, _ := templates[n%int64(len(templates))].instantiate(n + 2e7)
		sends.Go(func() {
			if ok, _, _ := e.post(client, src, "/v1/batch", body); ok {
				accepted.Add(int64(perRequest))
			} else {
				rejected.Add(1)
			}
		})
	}
	sends.Wait()
	return loadRun{accepted: accepted.Load(), rejected: rejected.Load(), elapsed: time.Since(start)}
}
