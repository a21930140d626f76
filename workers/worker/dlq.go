package worker

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tallyhq/tally/workers/stream"
)

// deadLetter publishes msg to the source's dead-letter subject with the reason, waits for the
// PubAck, then acknowledges the original. The dead letter's Nats-Msg-Id is derived from the
// original, so a crash between the two steps cannot store it twice.
func (w *Worker) deadLetter(ctx context.Context, msg jetstream.Msg, reason error) error {
	ctx = context.WithoutCancel(ctx)
	out := stream.NewDeadLetter(w.stream, w.tenant, msg, reason)
	pubCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := w.js.PublishMsg(pubCtx, out); err != nil {
		return fmt.Errorf("dead letter of sequence %s: %w", out.Header.Get(stream.HeaderStreamSequence), err)
	}
	w.metrics.deadLetters.WithLabelValues(w.stream.String()).Inc()
	w.log.Error("message dead-lettered", "sequence", out.Header.Get(stream.HeaderStreamSequence), "subject", msg.Subject(), "reason", reason)
	ackCtx, cancelAck := context.WithTimeout(ctx, 10*time.Second)
	defer cancelAck()
	if err := msg.DoubleAck(ackCtx); err != nil {
		w.log.Warn("ack of a dead letter failed; it will be redelivered and dead-lettered once more under the same id", "err", err)
	}
	return nil
}
