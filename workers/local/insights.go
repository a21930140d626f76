package local

import (
	"context"
	"fmt"

	"github.com/tallyhq/tally/workers/insights"
	"github.com/tallyhq/tally/workers/source"
)

// StartInsights pushes src's insights (src.Insights, with its write key) until Stop or the
// returned stop, on a Postgres connection of its own (the pool's settings), as `tally worker`
// does in a cluster. version is context.library.version of the messages.
func (p *Pipeline) StartInsights(src *source.Config, version string) (stop func(), err error) {
	pusher, err := insights.New(insights.Options{Source: src, Conn: p.opts.Pool.Config().ConnConfig,
		LibraryVersion: version, Logger: p.opts.Logger, Metrics: p.insights})
	if err != nil {
		return nil, err
	}
	run := &runningWorkers{}
	ctx, cancel := context.WithCancel(context.Background())
	run.cancel = cancel
	run.done.Go(func() {
		if err := pusher.Run(ctx); err != nil {
			p.fail(fmt.Errorf("insights of %s: %w", src, err))
		}
	})
	p.mu.Lock()
	p.workers = append(p.workers, run)
	p.mu.Unlock()
	return run.stop, nil
}
