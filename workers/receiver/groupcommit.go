package receiver

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// Group commit. With atomic batches on, a request does not send batches of its own: it hands its
// messages to its stream's committer, which sends the messages of concurrent requests together as
// shared atomic batches, so that under load one commit (one fsync when NATS syncs every write)
// stores the messages of many requests.
//
// There is no linger timer. A batch leaves as soon as fewer than maxCommitsInFlight of the
// stream's batches await their commit acknowledgement; while that many do, messages gather, and
// the next batch takes everything gathered, up to the server's batch limit. A lone request is
// therefore sent at once, exactly as without group commit, and batches grow only when commits are
// the bottleneck. Two in flight let the next batch travel and be staged while the previous one
// commits; more only split the same load into smaller batches, each paying the server's fixed
// cost of a batch on the stream's one goroutine (bench, sync always, 100-message requests from
// 16 clients: 1 and 2 in flight about equal, 4 half as fast).
const maxCommitsInFlight = 2

// minAtomicBatch is the fewest messages sent as an atomic batch. Smaller requests (single calls,
// mostly) are published message by message at once, without waiting for a slot, and so is a
// smaller remainder of gathered messages. On a single node the server stages each batch in a
// file store of its own (created, fsynced and removed), which costs about as much as a dozen
// fsynced single messages (bench, sync always: ~4 ms a batch, ~0.27 ms a message), so gathering
// single calls into small batches made them slower, not faster.
const minAtomicBatch = 16

// committer gathers the messages of one stream. It keeps no goroutine: sending starts from
// submit or from the completion of a batch, whichever finds a free slot.
type committer struct {
	r *Receiver

	mu       sync.Mutex
	queue    []queued // requests' messages not yet sent, in arrival order
	inFlight int      // batches sent whose commit is not yet acknowledged
}

// queued is one request's messages for the stream; a full batch may take only part of them.
type queued struct {
	w    *waiter
	msgs []outgoing
}

// waiter is one request waiting for all of its messages to be acknowledged.
type waiter struct {
	mu        sync.Mutex
	remaining int
	err       error
	done      chan struct{}
	// queuedAt are the committers holding the request's messages, which drop those not yet sent
	// when the request gives up, so that what the receiver holds stays within the admission
	// bounds.
	queuedAt []*committer
}

func newWaiter(n int) *waiter { return &waiter{remaining: n, done: make(chan struct{})} }

// acked counts n of the request's messages as stored; the last one answers it.
func (w *waiter) acked(n int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.finishedLocked() {
		return
	}
	w.remaining -= n
	if w.remaining <= 0 {
		close(w.done)
	}
}

// fail answers the request with err, unless it was answered already.
func (w *waiter) fail(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.finishedLocked() {
		return
	}
	w.err = err
	close(w.done)
}

func (w *waiter) finishedLocked() bool {
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}

// finished reports whether the request has its answer (or gave up): its messages not yet sent
// need not be.
func (w *waiter) finished() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.finishedLocked()
}

// wait returns once every message was acknowledged, one failed, or ctx ended. A request that
// stops waiting is failed, so that its messages not yet sent are dropped from the queue.
func (w *waiter) wait(ctx context.Context) error {
	select {
	case <-w.done:
	case <-ctx.Done():
		w.fail(ctx.Err())
		for _, c := range w.queuedAt {
			c.drop(w)
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// batchPart is the part of a shared batch that belongs to one request.
type batchPart struct {
	w *waiter
	n int
}

// committerFor returns the stream's committer, creating it on first use.
func (r *Receiver) committerFor(stream string) *committer {
	if c, ok := r.batching.committers.Load(stream); ok {
		return c.(*committer)
	}
	c, _ := r.batching.committers.LoadOrStore(stream, &committer{r: r})
	return c.(*committer)
}

// publishGrouped hands a request's messages to their streams' committers and waits until all of
// them are acknowledged, or one failed, or ctx ends.
func (r *Receiver) publishGrouped(ctx context.Context, msgs []outgoing) error {
	groups := splitBatches(msgs, len(msgs))
	if len(groups) == 1 && !r.batched(groups[0]) {
		return r.publishEach(ctx, msgs) // the common single call: no waiter, no goroutine
	}
	w := newWaiter(len(msgs))
	for _, group := range groups {
		if !r.batched(group) {
			go func() { w.settle(group, r.publishEach(ctx, group)) }()
			continue
		}
		name := group[0].source.Stream().StreamName()
		c := r.committerFor(name)
		w.queuedAt = append(w.queuedAt, c)
		c.submit(w, group)
	}
	return w.wait(ctx)
}

// batched reports whether one stream's messages of a request go through its committer: enough
// of them for an atomic batch, and a stream that takes atomic batches.
func (r *Receiver) batched(group []outgoing) bool {
	if len(group) < minAtomicBatch {
		return false
	}
	until, off := r.batching.off.Load(group[0].source.Stream().StreamName())
	return !off || !time.Now().Before(until.(time.Time))
}

// settle records the outcome of sending msgs, all of the request's.
func (w *waiter) settle(msgs []outgoing, err error) {
	if err != nil {
		w.fail(err)
		return
	}
	w.acked(len(msgs))
}

func (c *committer) submit(w *waiter, msgs []outgoing) {
	c.mu.Lock()
	c.queue = append(c.queue, queued{w: w, msgs: msgs})
	c.mu.Unlock()
	c.sendWhileFree()
}

// drop removes the messages of a request that gave up from the queue.
func (c *committer) drop(w *waiter) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.queue = slices.DeleteFunc(c.queue, func(q queued) bool { return q.w == w })
}

// sendWhileFree sends batches while a slot is free and messages wait.
func (c *committer) sendWhileFree() {
	for {
		c.mu.Lock()
		if c.inFlight >= maxCommitsInFlight {
			c.mu.Unlock()
			return
		}
		msgs, parts := c.takeLocked(c.r.maxAtomicBatch())
		if len(msgs) == 0 {
			c.mu.Unlock()
			return
		}
		c.inFlight++
		c.mu.Unlock()
		go c.commit(msgs, parts)
	}
}

// takeLocked takes up to limit queued messages, skipping those of requests that already have
// their answer (they gave up, or another of their batches failed).
func (c *committer) takeLocked(limit int) ([]outgoing, []batchPart) {
	var msgs []outgoing
	var parts []batchPart
	for len(c.queue) > 0 && len(msgs) < limit {
		q := &c.queue[0]
		if q.w.finished() {
			c.queue[0] = queued{}
			c.queue = c.queue[1:]
			continue
		}
		n := min(len(q.msgs), limit-len(msgs))
		if msgs == nil && n == len(q.msgs) && (len(c.queue) == 1 || n == limit) {
			msgs = q.msgs[:n:n] // one request's messages alone: no copy
		} else {
			if msgs == nil {
				msgs = make([]outgoing, 0, min(limit, c.queuedLocked()))
			}
			msgs = append(msgs, q.msgs[:n]...)
		}
		parts = append(parts, batchPart{w: q.w, n: n})
		if n == len(q.msgs) {
			c.queue[0] = queued{}
			c.queue = c.queue[1:]
		} else {
			q.msgs = q.msgs[n:]
		}
	}
	if len(c.queue) == 0 {
		c.queue = nil // let the backing array go
	}
	return msgs, parts
}

func (c *committer) queuedLocked() int {
	n := 0
	for _, q := range c.queue {
		n += len(q.msgs)
	}
	return n
}

// commit stores one shared batch and answers its requests: each request's part is acknowledged,
// or every request in the batch fails with the batch.
func (c *committer) commit(msgs []outgoing, parts []batchPart) {
	defer func() {
		c.mu.Lock()
		c.inFlight--
		c.mu.Unlock()
		c.sendWhileFree()
	}()
	c.r.metrics.batchRequests.Observe(float64(len(parts)))
	c.r.metrics.batchMessages.Observe(float64(len(msgs)))
	// The batch's own deadline: its requests may have different ones, and one of them giving up
	// must not fail the others.
	ctx, cancel := context.WithTimeout(context.Background(), c.r.opts.PublishTimeout)
	defer cancel()
	defer c.r.cancelOnDisconnect(cancel)()
	var err error
	if len(msgs) < minAtomicBatch {
		err = c.r.publishEach(ctx, msgs)
	} else {
		err = c.r.publishBatchOf(ctx, msgs, len(parts) > 1)
	}
	var dup *sharedDuplicateError
	if errors.As(err, &dup) {
		c.commitEachRequest(ctx, msgs, parts)
		return
	}
	for _, p := range parts {
		if err != nil {
			p.w.fail(err)
		} else {
			p.w.acked(p.n)
		}
	}
}

// cancelOnDisconnect calls cancel when the NATS connection is lost, and returns the func that
// stops watching. A commit whose server went away is never acknowledged: without this its
// requests would wait for the publish timeout, while per-message publishes fail at once (the
// JetStream client fails pending acks on a disconnect).
func (r *Receiver) cancelOnDisconnect(cancel context.CancelFunc) (stop func()) {
	nc := r.opts.JetStream.Conn()
	lost := nc.StatusChanged(nats.DISCONNECTED, nats.RECONNECTING, nats.CLOSED)
	if !nc.IsConnected() {
		cancel()
	}
	done := make(chan struct{})
	go func() {
		select {
		case <-lost:
			cancel()
		case <-done:
		}
	}()
	return func() {
		close(done)
		nc.RemoveStatusListener(lost)
	}
}

// commitEachRequest sends the requests of a shared batch that was refused for a duplicate as
// batches of their own, at once: the retried request that holds the duplicate is published
// message by message (its stored messages acknowledged as duplicates), and the others are not
// slowed down or failed by it.
func (c *committer) commitEachRequest(ctx context.Context, msgs []outgoing, parts []batchPart) {
	var wg sync.WaitGroup
	for _, p := range parts {
		own := msgs[:p.n]
		msgs = msgs[p.n:]
		wg.Go(func() {
			if err := c.r.publishBatch(ctx, own); err != nil {
				p.w.fail(err)
				return
			}
			p.w.acked(p.n)
		})
	}
	wg.Wait()
}

// sharedDuplicateError is a shared batch refused because one of its Nats-Msg-Ids is stored or
// being stored: a retried request is in it.
type sharedDuplicateError struct{ err error }

func (e *sharedDuplicateError) Error() string { return e.err.Error() }
func (e *sharedDuplicateError) Unwrap() error { return e.err }
