package receiver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/tallyhq/tally/workers/source"
)

// outgoing is one accepted message on its way to JetStream.
type outgoing struct {
	source    *source.Config
	subject   string
	messageID string
	data      []byte
}

var errNotConnected = errors.New("nats: not connected")

// Atomic batch publishing (ADR-50, nats-server 2.12 and later): every message of a batch carries
// the batch's id and its 1-based position, the last one also the commit header. The server stages
// the batch and stores all of it or none of it when the commit arrives, with a single fsync in
// sync-always mode instead of one per message.
const (
	hdrBatchID     = "Nats-Batch-Id"
	hdrBatchSeq    = "Nats-Batch-Sequence"
	hdrBatchCommit = "Nats-Batch-Commit"

	// defaultMaxAtomicBatch is the server's default limit on messages per batch
	// (jetstream.limits.batch.max_msgs). Larger requests are split into several batches.
	defaultMaxAtomicBatch = 1000
	// atomicRetryAfter is how long a stream that refused atomic batches is sent per-message
	// publishes before atomic batches are tried again (the operator may enable them meanwhile).
	atomicRetryAfter = time.Minute
)

// JetStream error codes of atomic batch publishing.
const (
	errCodeDuplicateInProcess = 10158 // a Nats-Msg-Id of the batch is being stored right now
	errCodeAtomicDisabled     = 10174 // the stream was created without AllowAtomicPublish
	errCodeBatchIncomplete    = 10176 // the server dropped the batch, e.g. its first message was refused as one too many in flight
	errCodeBatchTooLarge      = 10199 // more messages than the server's limit; the description ends with the limit
	errCodeBatchDuplicate     = 10201 // a Nats-Msg-Id of the batch is already stored, so the whole batch was refused
	errCodeTooManyInflight    = 10210 // the stream (or server) has its maximum of batches in flight
)

// errAtomicUnsupported means the commit was acknowledged as a plain message: the server predates
// atomic batches and stored each message on its own.
var errAtomicUnsupported = errors.New("nats: server does not support atomic batch publish")

// batchAck is the commit's PubAck: it names the batch and counts its messages.
type batchAck struct {
	Error    *jetstream.APIError `json:"error,omitempty"`
	Sequence uint64              `json:"seq"`
	BatchID  string              `json:"batch"`
	Count    int                 `json:"count"`
}

// atomicState remembers what the server taught us about atomic batches.
type atomicState struct {
	// maxBatch is the largest batch the server accepts; lowered if it refuses a batch as too
	// large (a server configured below the default).
	maxBatch atomic.Int64
	// off maps a stream name to the time until which it gets per-message publishes, because it
	// refused atomic batches.
	off sync.Map
	// committers maps a stream name to its *committer (group commit).
	committers sync.Map
}

// publish stores a request's messages in JetStream, message by message or in atomic batches
// shared with concurrent requests (Options.AtomicBatches, group commit), and returns once every
// message was acknowledged. Any failure, or the publish deadline passing, fails the whole
// request; the client retries, and the Nats-Msg-Id header makes the retry harmless for what was
// already stored.
func (r *Receiver) publish(ctx context.Context, msgs []outgoing) error {
	if !r.opts.Conn.IsConnected() {
		return errNotConnected
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, r.opts.PublishTimeout)
	defer cancel()
	publishAll := r.publishEach
	if r.opts.AtomicBatches {
		publishAll = r.publishGrouped
	}
	if err := publishAll(ctx, msgs); err != nil {
		return err
	}
	r.metrics.publishDuration.Observe(time.Since(start).Seconds())
	return nil
}

// publishBatches publishes the batches of a request concurrently, so a request split into several
// batches costs about one commit round trip, and fails on the first error.
func (r *Receiver) publishBatches(ctx context.Context, msgs []outgoing) error {
	batches := splitBatches(msgs, r.maxAtomicBatch())
	if len(batches) == 1 {
		return r.publishBatch(ctx, batches[0])
	}
	errs := make(chan error, len(batches)) // buffered: nobody waits for the rest after an error
	for _, b := range batches {
		go func() { errs <- r.publishBatch(ctx, b) }()
	}
	for range batches {
		if err := <-errs; err != nil {
			return err
		}
	}
	return nil
}

// publishBatch stores one stream's batch, atomically if the stream allows it.
func (r *Receiver) publishBatch(ctx context.Context, msgs []outgoing) error {
	return r.publishBatchOf(ctx, msgs, false)
}

// publishBatchOf is publishBatch; for a batch shared by several requests (group commit), a
// refusal for a duplicate Nats-Msg-Id returns a *sharedDuplicateError instead of publishing all of
// it message by message, so that only the retried request that holds the duplicate pays for it.
func (r *Receiver) publishBatchOf(ctx context.Context, msgs []outgoing, shared bool) error {
	// One message is stored all or nothing anyway, and an atomic batch costs the server a staging
	// store of its own (a directory and files created, fsynced and removed: a few milliseconds on
	// the stream's single ingest goroutine), so single calls stay plain publishes.
	if len(msgs) == 1 {
		return r.publishEach(ctx, msgs)
	}
	name := msgs[0].source.Stream().StreamName()
	if until, ok := r.batching.off.Load(name); ok && time.Now().Before(until.(time.Time)) {
		return r.publishEach(ctx, msgs)
	}
	for {
		err := r.publishAtomic(ctx, msgs)
		if err == nil {
			return nil
		}
		var apiErr *jetstream.APIError
		if !errors.As(err, &apiErr) {
			if errors.Is(err, errAtomicUnsupported) {
				r.atomicUnavailable(name, err)
				return r.publishEach(ctx, msgs)
			}
			return err
		}
		switch apiErr.ErrorCode {
		case errCodeAtomicDisabled:
			r.atomicUnavailable(name, err)
			return r.publishEach(ctx, msgs)
		case errCodeBatchDuplicate, errCodeDuplicateInProcess:
			if shared {
				return &sharedDuplicateError{err}
			}
			// A retried request some of whose messages an earlier attempt stored. Published one
			// by one, those are acknowledged as duplicates and only the rest are stored.
			return r.publishEach(ctx, msgs)
		case errCodeBatchTooLarge:
			if limit := trailingInt(apiErr.Description); limit > 0 && limit < len(msgs) {
				r.batching.maxBatch.Store(int64(limit))
				return r.publishBatches(ctx, msgs)
			}
			return err
		case errCodeTooManyInflight, errCodeBatchIncomplete:
			// Other publishers hold the stream's batch slots (or the batch lost a message on
			// the way); nothing of it was stored, so send it again under a new id.
			select {
			case <-time.After(time.Duration(5+rand.IntN(20)) * time.Millisecond):
			case <-ctx.Done():
				return fmt.Errorf("%w (last: %w)", ctx.Err(), err)
			}
		default:
			return err
		}
	}
}

// publishAtomic sends msgs as one atomic batch. Only the commit carries a reply subject: the
// server refuses a broken batch in the commit's PubAck, so the other messages need no answer.
func (r *Receiver) publishAtomic(ctx context.Context, msgs []outgoing) error {
	nc := r.opts.JetStream.Conn()
	id := nuid.Next()
	last := len(msgs) - 1
	for i, m := range msgs {
		nm := &nats.Msg{Subject: m.subject, Data: m.data, Header: nats.Header{
			jetstream.MsgIDHeader: []string{m.messageID},
			hdrBatchID:            []string{id},
			hdrBatchSeq:           []string{strconv.Itoa(i + 1)},
		}}
		if i < last {
			if err := nc.PublishMsg(nm); err != nil {
				return err
			}
			continue
		}
		nm.Header[hdrBatchCommit] = []string{"1"}
		resp, err := nc.RequestMsgWithContext(ctx, nm)
		if err != nil {
			return err
		}
		var ack batchAck
		if err := json.Unmarshal(resp.Data, &ack); err != nil {
			return fmt.Errorf("nats: invalid commit acknowledgement %q: %w", resp.Data, err)
		}
		if ack.Error != nil {
			return ack.Error
		}
		if ack.BatchID != id || ack.Count != len(msgs) {
			return errAtomicUnsupported
		}
	}
	return nil
}

// atomicUnavailable sends the stream's messages one by one for a while, so a stream without
// AllowAtomicPublish, or a NATS server older than 2.12, keeps working.
func (r *Receiver) atomicUnavailable(name string, err error) {
	if _, loaded := r.batching.off.Swap(name, time.Now().Add(atomicRetryAfter)); !loaded {
		r.log.Info("stream refuses atomic batches; publishing message by message", "stream", name, "error", err)
	}
}

func (r *Receiver) maxAtomicBatch() int {
	if n := r.batching.maxBatch.Load(); n > 0 {
		return int(n)
	}
	return defaultMaxAtomicBatch
}

// publishEach sends every message with asynchronous publishes, keeping at most MaxPending of
// them unacknowledged at a time, and returns once JetStream has acknowledged all of them. A
// duplicate (a Nats-Msg-Id JetStream already holds) is an acknowledgement too: the message is
// stored.
func (r *Receiver) publishEach(ctx context.Context, msgs []outgoing) error {
	deadline, _ := ctx.Deadline()
	window := r.opts.MaxPending
	natsMsgs := make([]nats.Msg, len(msgs))
	futures := make([]jetstream.PubAckFuture, len(msgs))
	for i, m := range msgs {
		if i >= window {
			if err := awaitAck(ctx, futures[i-window]); err != nil {
				return err
			}
		}
		nm := &natsMsgs[i]
		nm.Subject = m.subject
		nm.Data = m.data
		nm.Header = nats.Header{jetstream.MsgIDHeader: []string{m.messageID}}
		// Wait for room in the connection's global window until our own deadline, not the
		// library's 200 ms default, so a burst queues instead of failing.
		stall := time.Until(deadline)
		if stall <= 0 {
			return context.DeadlineExceeded
		}
		f, err := r.opts.JetStream.PublishMsgAsync(nm, jetstream.WithStallWait(stall))
		if err != nil {
			return err
		}
		futures[i] = f
	}
	for i := max(0, len(msgs)-window); i < len(msgs); i++ {
		if err := awaitAck(ctx, futures[i]); err != nil {
			return err
		}
	}
	return nil
}

func awaitAck(ctx context.Context, f jetstream.PubAckFuture) error {
	select {
	case <-f.Ok():
		return nil
	case err := <-f.Err():
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// splitBatches cuts a request's messages into batches of at most limit messages for one stream
// each: a batch cannot span streams, and a request may carry several sources' write keys. Each
// stream's messages keep their order.
func splitBatches(msgs []outgoing, limit int) [][]outgoing {
	groups := [][]outgoing{msgs}
	for _, m := range msgs {
		if m.source != msgs[0].source {
			groups = groupBySource(msgs)
			break
		}
	}
	var out [][]outgoing
	for _, g := range groups {
		for len(g) > limit {
			out = append(out, g[:limit])
			g = g[limit:]
		}
		out = append(out, g)
	}
	return out
}

func groupBySource(msgs []outgoing) [][]outgoing {
	index := map[*source.Config]int{}
	var groups [][]outgoing
	for _, m := range msgs {
		i, ok := index[m.source]
		if !ok {
			i = len(groups)
			index[m.source] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], m)
	}
	return groups
}

// trailingInt reads the number an error description ends with ("... too large: 500"), or 0.
func trailingInt(s string) int {
	n, err := strconv.Atoi(strings.TrimSpace(s[strings.LastIndexByte(s, ':')+1:]))
	if err != nil {
		return 0
	}
	return n
}
