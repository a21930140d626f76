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
	maxSeq   uint64        // the highest stream sequence among the part's messages
	prepared *preparedFold // a pull's last part: folded while the previous one commits; else nil, folded by commit
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

// fetchLoop pulls batches from the consumer and hands their messages over, decoded, in parts. A
// pull stays open up to MaxWait to fill a batch, but its messages do not wait for it to end: once
// a part is an eighth of MaxWait old and its arrivals pause (handOverAfter without one: the pull
// has taken what was waiting), it is offered to the committer, and keeps growing until it is
// taken. So the first message after a quiet spell is mapped at once (its one-message pull ends
// with it), a trickle waits an eighth of MaxWait instead of all of it, and under load a part is a
// whole batch, folded ahead while the previous one commits. The eighth keeps a busy tenant's
// transactions few: a small one costs most of a millisecond of Postgres CPU (bench), whatever its
// size. It stops when ctx is cancelled or a pull fails, and closes out.
func (w *Worker) fetchLoop(ctx context.Context, consumer jetstream.Consumer, out chan<- fetched) {
	defer close(out)
	empty := 0 // pulls in a row that came back empty
	for ctx.Err() == nil {
		batch, done, err := w.pull(ctx, consumer, empty)
		if err != nil {
			select {
			case out <- fetched{err: err}:
			case <-ctx.Done():
			}
			return
		}
		got, more := w.handOver(ctx, batch, out)
		done()
		if !more {
			return
		}
		if got > 0 {
			empty = 0
		} else {
			empty++
		}
	}
}

// firstIdleWait bounds the wait of the pull after a lane's first empty one (five times MaxWait):
// a lane that just went quiet looks again soon, and purges what its last batches acknowledged
// once that pull is back empty (see purger).
const firstIdleWait = time.Second

// handOverAfter is the pause in a pull's arrivals after which its part is offered. JetStream
// delivers what is waiting in one burst, so a pause this long means the burst is over.
const handOverAfter = 2 * time.Millisecond

// pull asks for a batch; done releases it once it ended. After an empty pull it asks for one
// message only: a full batch's pull allocates buffers for all its messages (64 KB for 2,000)
// every MaxWait, which a pool worker's thousand idle members would hold and churn all the time;
// the next pull is full again.
//
// A one-message pull returns as soon as a message arrives, so how long it may wait adds no
// latency: it is what an idle lane costs, a pull request and its timeout each time. The first
// waits up to five times MaxWait (firstIdleWait), and the worker's stop waits it out, handing
// back what it brings. The next ones are long: JetStream's default of 30 s, with the server's
// heartbeat every 5 s, so that a pull the server lost (a crash, a reconnect, a clustered
// consumer's server stopping) ends within 10 s and the lane pulls again; a single server that
// shuts down ends them at once. Those end when ctx does, and the server then drops the pull, whose
// reply subject lost its subscriber, instead of delivering to it; only a message it delivers in
// the instant before it learns of that waits out the ack wait. A pool worker with a thousand idle
// members (test/pool's scale test): 0.06 of a core with pulls a second apart, 0.01 with these.
func (w *Worker) pull(ctx context.Context, consumer jetstream.Consumer, empty int) (jetstream.MessageBatch, context.CancelFunc, error) {
	switch empty {
	case 0:
		batch, err := consumer.Fetch(w.batchSize, jetstream.FetchMaxWait(w.maxWait), jetstream.FetchMaxBytes(w.bounds.batchBytes))
		return batch, func() {}, err
	case 1:
		batch, err := consumer.Fetch(1, jetstream.FetchMaxWait(min(5*w.maxWait, firstIdleWait)))
		return batch, func() {}, err
	}
	pullCtx, cancel := context.WithCancel(ctx)
	batch, err := consumer.Fetch(1, jetstream.FetchContext(pullCtx))
	if err != nil {
		cancel()
	}
	return batch, cancel, err
}

// handOver hands one pull's messages over in parts. It returns how many messages the pull brought
// and whether to pull again: not after the pull failed or ctx was cancelled, when what was not
// handed over is handed back.
func (w *Worker) handOver(ctx context.Context, batch jetstream.MessageBatch, out chan<- fetched) (int, bool) {
	msgs := batch.Messages()
	quiet := time.NewTimer(handOverAfter)
	defer quiet.Stop()
	var part fetched
	var started time.Time // the part's first arrival
	ready := false        // the part is old enough and its arrivals paused: it is offered
	got := 0
	for {
		var offer chan<- fetched
		var paused <-chan time.Time
		if part.size() > 0 {
			if ready {
				offer = out
			} else {
				paused = quiet.C
			}
		}
		select {
		case msg, open := <-msgs:
			if !open {
				return got, w.endPull(ctx, batch, part, got > part.size(), out)
			}
			if part.size() == 0 {
				started = time.Now()
			}
			got++
			part.add(msg)
			if !ready {
				quiet.Reset(max(handOverAfter, time.Until(started.Add(w.maxWait/8))))
			}
		case <-paused:
			ready = len(msgs) == 0 // else not a pause: this goroutine was not scheduled meanwhile
		case offer <- part: // the committer folds it (commit)
			part, ready = fetched{}, false
		case <-ctx.Done():
			nakAll(part)
			for msg := range msgs { // the rest of the pull, until it ends (at most MaxWait)
				_ = msg.NakWithDelay(time.Nanosecond)
			}
			return got, false
		}
	}
}

// endPull hands over the last part of a pull that ended, folded while the previous part commits
// (under load, the whole batch), with the pull's error. An empty pull is handed over as an empty
// part (it resets the backlog gauge) unless parts of it went out already.
func (w *Worker) endPull(ctx context.Context, batch jetstream.MessageBatch, part fetched, sentParts bool, out chan<- fetched) bool {
	if err := batch.Error(); !pullEndedNormally(err) {
		part.err = err
	}
	if sentParts && part.size() == 0 && part.err == nil {
		return true
	}
	if len(part.items) > 0 {
		src := w.source.Load()
		part.prepared = &preparedFold{src: src, folded: fold(withoutIgnored(messagesOf(part.items), src), src.AccountProperty)}
	}
	select {
	case out <- part:
		return part.err == nil
	case <-ctx.Done():
		nakAll(part)
		return false
	}
}

// pullEndedNormally tells a pull that simply ended from a consumer that failed (and is bound
// again, a second later). A pull ends at its MaxWait (without an error); a long idle one when
// the worker stops (cancelled) or when the server's heartbeats stopped coming (the server lost
// the pull: if it lost the consumer too, the next pull fails with no responders and the lane
// binds again; every idle lane of a pool binding again after a reconnect would be a thousand
// warnings and requests at once); and when the server counts its batch
// delivered while bytes remain it ends it with a "batch completed" status: as a Fetch stops
// reading at its count, that status reaches it only when some of the batch's messages did not
// (on a busy cluster, seen in the bench with R3 streams). Those are redelivered after the ack
// wait; the consumer itself is fine, so the lane pulls again at once, as nats.go's own Consume
// does on that status.
func pullEndedNormally(err error) bool {
	return err == nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.Is(err, jetstream.ErrNoHeartbeat) || errors.Is(err, jetstream.ErrBatchCompleted)
}

func (f *fetched) size() int { return len(f.items) + len(f.bad) }

// add decodes one message into the part.
func (f *fetched) add(msg jetstream.Msg) {
	if meta, err := msg.Metadata(); err == nil {
		f.lastMeta = meta
		f.maxSeq = max(f.maxSeq, meta.Sequence.Stream)
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
	// A Nak with a delay is recorded in the consumer's state, which a replicated consumer keeps
	// through a node's restart; a plain Nak is not, and the messages would wait out the whole ack
	// wait there. (A single server forgets the memory-stored consumer itself when it restarts; the
	// one the worker creates again delivers everything at once.)
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
