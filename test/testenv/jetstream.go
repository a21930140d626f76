package testenv

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// Acknowledged is nil once the durable consumer has acknowledged everything the stream ever
// stored. The stream's last sequence is final once its PubAck came back, while the consumer's
// pending count may lag behind it, so the ack floor is compared with the stream instead.
func Acknowledged(ctx context.Context, js jetstream.JetStream, streamName, consumer string) error {
	s, err := js.Stream(ctx, streamName)
	if err != nil {
		return err
	}
	sinfo, err := s.Info(ctx)
	if err != nil {
		return err
	}
	c, err := s.Consumer(ctx, consumer)
	if err != nil {
		return err
	}
	info, err := c.Info(ctx)
	if err != nil {
		return err
	}
	if info.AckFloor.Stream < sinfo.State.LastSeq || info.NumAckPending > 0 {
		return fmt.Errorf("stream %s: acknowledged up to %d of %d, %d in flight",
			streamName, info.AckFloor.Stream, sinfo.State.LastSeq, info.NumAckPending)
	}
	return nil
}

// Drained is nil once a source's stream holds no message: its workers acknowledged every one, by
// whichever of its consumers (a partitioned source has one per partition), and purged it.
func Drained(ctx context.Context, js jetstream.JetStream, streamName string) error {
	s, err := js.Stream(ctx, streamName)
	if err != nil {
		return err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return err
	}
	if info.State.Msgs > 0 {
		return fmt.Errorf("stream %s: %d messages not acknowledged and purged yet", streamName, info.State.Msgs)
	}
	return nil
}
