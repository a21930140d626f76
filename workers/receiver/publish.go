package receiver

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// outgoing is one accepted message on its way to JetStream.
type outgoing struct {
	subject   string
	messageID string
	data      []byte
}

var errNotConnected = errors.New("nats: not connected")

// publish sends every message with asynchronous publishes, keeping at most MaxPending of this
// request unacknowledged at a time, and returns once JetStream has acknowledged all of them. A
// duplicate (a Nats-Msg-Id JetStream already holds) is an acknowledgement too: the message is
// stored. Any failure, or the deadline passing, fails the whole request; the client retries and
// the Nats-Msg-Id header makes the retry harmless for what was already stored.
func (r *Receiver) publish(ctx context.Context, msgs []outgoing) error {
	if !r.opts.Conn.IsConnected() {
		return errNotConnected
	}
	start := time.Now()
	deadline := start.Add(r.opts.PublishTimeout)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()

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
		f, err := r.opts.JetStream.PublishMsgAsync(nm, jetstream.WithStallWait(time.Until(deadline)))
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
	publishDuration.Observe(time.Since(start).Seconds())
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
