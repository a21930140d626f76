package worker

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tallyhq/tally/workers/stream"
)

const (
	// purgeEvery spaces a lane's purges of what it acknowledged (stream.PurgeBelowFloor): a busy
	// lane asks for its consumer's info at most once a second and purges when the redelivery
	// queue is known to be empty (see maybePurge).
	purgeEvery = time.Second
	// purgeAnyway is how long a lane goes without purging while its consumer never has a pull
	// request waiting (a backlog fills every pull at once). A purge then may strand a queued
	// redelivery until the next ack wait (see stream.PurgeBelowFloor); not purging would fill the
	// stream, up to its byte limit, with what a long backlog's batches acknowledged.
	purgeAnyway = 10 * time.Second
	// purgeBatch and purgeQuiet: a lane that acknowledged fewer than purgeBatch messages since
	// its last purge waits until purgeQuiet has passed since it. A purge costs a consumer info
	// request, a purge request and a flush of the stream (an fsync with sync_interval: always),
	// which a pool's quiet members paid about once per event (bench, many-tenants phase, default
	// sync: the small tenants' freshness medians of six runs went from 477 ms / 1.4 s p50 / p99
	// to 98 ms / 680 ms). A quiet lane keeps fewer than purgeBatch acknowledged messages
	// meanwhile; a busy one purges every purgeEvery as before. Each wait is drawn between half
	// of purgeQuiet and all of it, so the lanes a pool worker started together do not all purge
	// at one moment.
	purgeBatch = 1000
	purgeQuiet = 30 * time.Second
)

// purger purges a lane's acknowledged messages from the source's stream. It purges only after
// acknowledgements, and again until the consumer's ack floor has reached the highest message the
// lane acknowledged (acks travel without waiting for JetStream, and a worker replica sharing the
// consumer may still hold messages below it), so an idle lane (most of a pool's members) sends
// nothing.
type purger struct {
	w        *Worker
	consumer jetstream.Consumer
	name     string
	// highest is the highest stream sequence the lane acknowledged; purged is the ack floor the
	// last purge reached; unpurged counts the messages acknowledged since the last purge.
	highest, purged uint64
	unpurged        int
	// tried is the last look at the consumer; since is the last purge, or the lane's start.
	tried, since time.Time
	// quiet is how long a quiet lane waits after since (see purgeQuiet).
	quiet   time.Duration
	failing bool
	// timer wakes a lane that waits in a long idle pull when a purge is due (see due); it is
	// set for dueAt.
	timer *time.Timer
	dueAt time.Time
}

func newPurger(w *Worker, consumer jetstream.Consumer, name string) *purger {
	p := &purger{w: w, consumer: consumer, name: name, since: time.Now()}
	p.drawQuiet()
	return p
}

// drawQuiet draws the next quiet wait, between half of the worker's purgeQuiet and all of it.
func (p *purger) drawQuiet() {
	p.quiet = p.w.purgeQuiet
	if half := p.w.purgeQuiet / 2; half > 0 {
		p.quiet = half + rand.N(half)
	}
}

// acknowledged records that the lane acknowledged n messages, up to stream sequence seq.
func (p *purger) acknowledged(seq uint64, n int) {
	p.highest = max(p.highest, seq)
	p.unpurged += n
}

// maybePurge purges when the lane acknowledged beyond the last purge's floor, purgeEvery has
// passed since the last look, the lane is not quiet (purgeBatch messages acknowledged, or
// purgeQuiet passed, since the last purge), and the consumer's redelivery queue is empty, which
// a purge would clear: the lane's own pull just came back empty (idle: it would have taken a
// queued message) or another pull waits on the consumer. During a backlog neither holds, so it
// purges anyway every purgeAnyway. A failure is logged once and tried again later: the messages
// stay in the stream, acknowledged, and take room until a purge succeeds.
//
// The waiting pull alone is not enough: right after a lane's pull ends, its next one has often
// not reached the server yet. An idle lane looks then, and while it waits in a long pull, when
// due fires.
func (p *purger) maybePurge(ctx context.Context, idle bool) {
	if p.highest <= p.purged || time.Since(p.tried) < purgeEvery || ctx.Err() != nil {
		return
	}
	if p.unpurged < purgeBatch && time.Since(p.since) < p.quiet {
		return
	}
	p.tried = time.Now()
	info, err := p.consumer.Info(ctx)
	if err == nil && !idle && info.NumWaiting == 0 && time.Since(p.since) < purgeAnyway {
		return
	}
	var n uint64
	if err == nil {
		n, err = stream.PurgeBelowFloor(ctx, p.w.js, p.w.stream, info)
	}
	if err != nil {
		if !p.failing && ctx.Err() == nil {
			p.w.log.Warn("purging acknowledged messages failed; they stay in the stream until a purge succeeds", "consumer", p.name, "err", err)
		}
		p.failing = true
		return
	}
	if p.failing {
		p.w.log.Info("purging acknowledged messages works again", "consumer", p.name)
		p.failing = false
	}
	p.purged, p.since, p.unpurged = max(p.purged, info.AckFloor.Stream), time.Now(), 0
	p.drawQuiet()
	if n > 0 {
		p.w.metrics.purged.WithLabelValues(p.w.stream.String()).Add(float64(n))
	}
}

// due fires when maybePurge would next look, or never when nothing acknowledged awaits a purge.
// A lane long idle waits in one long pull (see Worker.pull) rather than in a pull after pull, so
// what its last batches acknowledged is purged on this schedule instead: a purge then finds its
// pull waiting on the consumer.
func (p *purger) due() <-chan time.Time {
	if p.highest <= p.purged {
		return nil
	}
	at := p.tried.Add(purgeEvery)
	if p.unpurged < purgeBatch {
		at = later(at, p.since.Add(p.quiet))
	}
	if p.timer == nil {
		p.timer = time.NewTimer(time.Until(at))
	} else if !at.Equal(p.dueAt) {
		p.timer.Reset(time.Until(at))
	}
	p.dueAt = at
	return p.timer.C
}

// stop releases the timer.
func (p *purger) stop() {
	if p.timer != nil {
		p.timer.Stop()
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
