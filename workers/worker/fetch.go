package worker

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tallyhq/tally/workers/segment"
	"github.com/tallyhq/tally/workers/source"
)

// fetched is one part of a pull from the consumer, decoded and folded ahead of its transaction.
type fetched struct {
	items    []item
	bad      []badMessage // messages that do not decode: dead-lettered, never mapped
	lastMeta *jetstream.MsgMetadata
	prepared *preparedFold // fold of all items, made while the previous batch was committing
	err      error         // the pull's own error, after its messages
}

type badMessage struct {
	msg jetstream.Msg
	err error
}

// preparedFold is a fold and the source settings it was made with: a batch whose settings changed
// meanwhile (UpdateSource) is folded again.
type preparedFold struct {
	src    *source.Config
	folded *folded
}

// fetchLoop pulls batches from the consumer and hands their messages over, decoded and folded,
// one part at a time, so the next part is ready when the current transaction commits. A pull
// stays open up to MaxWait to fill a batch, but its messages are handed over as soon as they stop
// arriving (handOverAfter without one), not when the pull ends: under load a part is the whole
// batch; at a trickle each message is mapped at once instead of waiting out the pull. It stops
// when ctx is cancelled or a pull fails, and closes out.
func (w *Worker) fetchLoop(ctx context.Context, consumer jetstream.Consumer, out chan<- fetched) {
	defer close(out)
	idle := false
	for ctx.Err() == nil {
		batch, err := w.pull(consumer, idle)
		if err != nil {
			select {
			case out <- fetched{err: err}:
			case <-ctx.Done():
			}
			return
		}
		got, more := w.handOver(ctx, batch, out)
		if !more {
			return
		}
		idle = got == 0
	}
}

// maxIdleWait bounds how long an idle consumer's one-message pull waits (five times MaxWait,
// so five times fewer requests). It returns as soon as a message arrives, so it adds no latency;
// it bounds how long stopping an idle worker takes.
const maxIdleWait = time.Second

// handOverAfter is the pause in a pull's arrivals after which the messages received so far are
// handed over. JetStream delivers a backlog in one burst, so a pause this long means the pull
// has taken what was waiting.
const handOverAfter = 2 * time.Millisecond

// pull asks for a batch. After an empty pull (idle) it asks for one message only: a full batch's
// pull allocates buffers for all its messages (64 KB for 2,000) every MaxWait, which a pool
// worker's thousand idle members would hold and churn all the time; the next pull is full again.
func (w *Worker) pull(consumer jetstream.Consumer, idle bool) (jetstream.MessageBatch, error) {
	if idle {
		return consumer.Fetch(1, jetstream.FetchMaxWait(min(5*w.maxWait, maxIdleWait)))
	}
	return consumer.Fetch(w.batchSize, jetstream.FetchMaxWait(w.maxWait), jetstream.FetchMaxBytes(w.bounds.batchBytes))
}

// handOver hands a pull's messages over in parts, each when the arrivals pause or the pull ends
// (an empty pull as one empty part, which resets the backlog gauge). It returns how many messages
// the pull brought and whether to pull again: not after the pull failed or ctx was cancelled,
// when what was not handed over is handed back.
func (w *Worker) handOver(ctx context.Context, batch jetstream.MessageBatch, out chan<- fetched) (int, bool) {
	msgs := batch.Messages()
	send := func(f fetched) bool {
		if len(f.items) > 0 {
			src := w.source.Load()
			f.prepared = &preparedFold{src: src, folded: fold(withoutIgnored(messagesOf(f.items), src), src.AccountProperty)}
		}
		select {
		case out <- f:
			return true
		case <-ctx.Done():
			nakAll(f)
			for msg := range msgs { // the rest of the pull, until it ends (at most maxIdleWait or MaxWait)
				_ = msg.NakWithDelay(time.Nanosecond)
			}
			return false
		}
	}
	quiet := time.NewTimer(handOverAfter)
	defer quiet.Stop()
	var part fetched
	got := 0
	for {
		var paused <-chan time.Time
		if part.size() > 0 {
			paused = quiet.C
		}
		select {
		case msg, open := <-msgs:
			if !open {
				if err := batch.Error(); err != nil && !errors.Is(err, context.DeadlineExceeded) {
					part.err = err
				}
				if got > 0 && part.size() == 0 && part.err == nil {
					return got, true // the last part went out already
				}
				return got, send(part) && part.err == nil
			}
			got++
			part.add(msg)
			quiet.Reset(handOverAfter)
		case <-paused:
			if len(msgs) > 0 { // not a pause: this goroutine was not scheduled meanwhile
				continue
			}
			if !send(part) {
				return got, false
			}
			part = fetched{}
		}
	}
}

func (f *fetched) size() int { return len(f.items) + len(f.bad) }

// add decodes one message into the part.
func (f *fetched) add(msg jetstream.Msg) {
	if meta, err := msg.Metadata(); err == nil {
		f.lastMeta = meta
	}
	m, err := segment.ParseNormalized(msg.Data())
	if err != nil {
		f.bad = append(f.bad, badMessage{msg, err})
		return
	}
	f.items = append(f.items, item{msg: msg, m: &m})
}

// nakAll hands back a batch fetched but not mapped (shutdown), so it is redelivered at once.
func nakAll(f fetched) {
	// A Nak with a delay is recorded in the consumer's stored state, so the hand-back survives a
	// server restart right after it (tally local stops its embedded server next); a plain Nak
	// would be forgotten and the messages would wait out the whole ack wait.
	for _, it := range f.items {
		_ = it.msg.NakWithDelay(time.Nanosecond)
	}
	for _, b := range f.bad {
		_ = b.msg.NakWithDelay(time.Nanosecond)
	}
}

func messagesOf(items []item) []*segment.Message {
	msgs := make([]*segment.Message, len(items))
	for i := range items {
		msgs[i] = items[i].m
	}
	return msgs
}
