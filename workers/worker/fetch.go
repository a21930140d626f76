package worker

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tallyhq/tally/workers/segment"
	"github.com/tallyhq/tally/workers/source"
)

// fetched is one batch from the consumer, decoded and folded ahead of its transaction.
type fetched struct {
	items    []item
	bad      []badMessage // messages that do not decode: dead-lettered, never mapped
	lastMeta *jetstream.MsgMetadata
	prepared *preparedFold // fold of all items, made while the previous batch was committing
	err      error         // the fetch's own error, after its messages
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

// fetchLoop fetches, decodes and folds batches and hands them over one at a time, so the next
// batch is ready when the current transaction commits. It stops when ctx is cancelled or a fetch
// fails, and closes out.
func (w *Worker) fetchLoop(ctx context.Context, consumer jetstream.Consumer, out chan<- fetched) {
	defer close(out)
	idle := false
	for ctx.Err() == nil {
		f := w.fetch(consumer, idle)
		idle = f.err == nil && len(f.items)+len(f.bad) == 0
		select {
		case out <- f:
		case <-ctx.Done():
			nakAll(f)
			return
		}
		if f.err != nil {
			return
		}
	}
}

// maxIdleWait bounds how long an idle consumer's one-message fetch waits (five times MaxWait,
// so five times fewer requests). It returns as soon as a message arrives, so it adds no latency;
// it bounds how long stopping an idle worker takes.
const maxIdleWait = time.Second

// fetch fetches a batch. After an empty fetch (idle) it asks for one message only: a full batch's
// fetch allocates buffers for all its messages (64 KB for 2,000) every MaxWait, which a pool
// worker's thousand idle members would hold and churn all the time; the next fetch is full again.
func (w *Worker) fetch(consumer jetstream.Consumer, idle bool) fetched {
	var batch jetstream.MessageBatch
	var err error
	if idle {
		batch, err = consumer.Fetch(1, jetstream.FetchMaxWait(min(5*w.maxWait, maxIdleWait)))
	} else {
		batch, err = consumer.Fetch(w.batchSize, jetstream.FetchMaxWait(w.maxWait), jetstream.FetchMaxBytes(w.bounds.batchBytes))
	}
	if err != nil {
		return fetched{err: err}
	}
	var f fetched
	for msg := range batch.Messages() {
		if meta, err := msg.Metadata(); err == nil {
			f.lastMeta = meta
		}
		m, err := segment.ParseNormalized(msg.Data())
		if err != nil {
			f.bad = append(f.bad, badMessage{msg, err})
			continue
		}
		f.items = append(f.items, item{msg: msg, m: &m})
	}
	if err := batch.Error(); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		f.err = err
	}
	if len(f.items) > 0 {
		src := w.source.Load()
		f.prepared = &preparedFold{src: src, folded: fold(withoutIgnored(messagesOf(f.items), src), src.AccountProperty)}
	}
	return f
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
