package worker

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tallyhq/tally/workers/stream"
)

// purgeEvery spaces a lane's purges of what it acknowledged (stream.PurgeAcknowledged): a busy
// lane sends two small requests (the consumer's info, the purge) once a second, and the stream
// holds about a second's acknowledged messages beyond its backlog. Seldom, because a purge
// strands the consumer's queued redeliveries until the next ack wait (see PurgeAcknowledged).
const purgeEvery = time.Second

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
	last            time.Time
	failing         bool
}

// acknowledged records that the lane acknowledged messages up to stream sequence seq.
func (p *purger) acknowledged(seq uint64) { p.highest = max(p.highest, seq) }

// maybePurge purges when the lane acknowledged beyond the last purge's floor and purgeEvery has
// passed since the last try. A failure is logged once and tried again later: the messages stay
// in the stream, acknowledged, and take room until a purge succeeds.
func (p *purger) maybePurge(ctx context.Context) {
	if p.highest <= p.purged || time.Since(p.last) < purgeEvery || ctx.Err() != nil {
		return
	}
	p.last = time.Now()
	floor, n, err := stream.PurgeAcknowledged(ctx, p.w.js, p.w.stream, p.consumer)
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
	p.purged = max(p.purged, floor)
	if n > 0 {
		p.w.metrics.purged.WithLabelValues(p.w.stream.String()).Add(float64(n))
	}
}
