package local

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tallyhq/tally/workers/pool"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/worker"
)

// StartPool serves members through a SegmentSourcePool's runtime, as the pool's pods do in a
// cluster: their entries (key digests, never keys) go into the pool's bucket, and one pool worker
// runs them all, each on its tenant's login. The pipeline's receiver serves them already (it
// serves every source by key). Insights are left out of the entries: tally local pushes every
// source's insights itself (StartInsights). It runs until Stop.
func (p *Pipeline) StartPool(ctx context.Context, ref pool.Ref, members []*source.Config) error {
	kv, err := pool.EnsureBucket(ctx, p.js, ref, 1)
	if err != nil {
		return err
	}
	for _, src := range members {
		m := pool.Member{Source: *src, WriteKeyDigests: pool.DigestKeys(src.WriteKeys)}
		m.Source.Insights = nil
		if _, err := pool.Put(ctx, kv, m); err != nil {
			return err
		}
	}
	js := p.js
	if p.opts.PoolWorkerConn != nil {
		nc, err := p.opts.PoolWorkerConn(ref)
		if err == nil {
			js, err = jetstream.New(nc)
		}
		if err != nil {
			return err
		}
	}
	o := worker.PoolOptions{Pool: ref, JetStream: js, Registerer: p.opts.Registry, InsightsMetrics: p.insights,
		Worker: worker.Options{BatchSize: p.opts.BatchSize, MaxWait: p.opts.MaxWait, Logger: p.opts.Logger, Metrics: p.metrics}}
	if logins := p.opts.PoolLogins; logins != nil {
		if err := logins.KeepMembers(ctx, ref, members); err != nil {
			return err
		}
		o.MemberDatabaseLogin = func(ctx context.Context, src *source.Config) (worker.DatabaseLogin, error) {
			return logins.MemberLogin(ctx, ref, src)
		}
	}
	pw, err := worker.NewPool(o)
	if err != nil {
		return err
	}
	run := &runningWorkers{}
	runCtx, cancel := context.WithCancel(context.Background())
	run.cancel = cancel
	run.done.Go(func() {
		if err := pw.Run(runCtx); err != nil {
			p.fail(fmt.Errorf("pool %s: %w", ref, err))
		}
	})
	p.mu.Lock()
	p.workers = append(p.workers, run)
	p.mu.Unlock()
	return nil
}
