package worker

import (
	"context"
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
	// last purge reached.
	highest, purged uint64
	// tried is the last look at the consumer; since is the last purge, or the lane's start.
	tried, since time.Time
	failing      bool
}

func newPurger(w *Worker, consumer jetstream.Consumer, name string) *purger {
	return &purger{w: w, consumer: consumer, name: name, since: time.Now()}
}

// acknowledged records that the lane acknowledged messages up to stream sequence seq.
func (p *purger) acknowledged(seq uint64) { p.highest = max(p.highest, seq) }

// maybePurge purges when the lane acknowledged beyond the last purge's floor, purgeEvery has
// passed since the last look, and the consumer's redelivery queue is empty, which a purge would
// clear: the lane's own pull just came back empty (idle: it would have taken a queued message)
// or another pull waits on the consumer. During a backlog neither holds, so it purges anyway
// every purgeAnyway. A failure is logged once and tried again later: the messages stay in the
// stream, acknowledged, and take room until a purge succeeds.
//
// The waiting pull alone is not enough: right after a lane's pull ends, its next one has often
// not reached the server yet, and an idle lane looks only then.
func (p *purger) maybePurge(ctx context.Context, idle bool) {
	if p.highest <= p.purged || time.Since(p.tried) < purgeEvery || ctx.Err() != nil {
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
	p.purged, p.since = max(p.purged, info.AckFloor.Stream), time.Now()
	if n > 0 {
		p.w.metrics.purged.WithLabelValues(p.w.stream.String()).Add(float64(n))
	}
}
