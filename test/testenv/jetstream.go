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

// Drained is nil once the workers acknowledged every message of a source's stream, by whichever
// of its consumers (a partitioned source has one per partition): none has a message waiting or
// in flight, and the stream's last message is below one's ack floor. The stream may still hold
// acknowledged messages: a quiet lane purges them later.
func Drained(ctx context.Context, js jetstream.JetStream, streamName string) error {
	s, err := js.Stream(ctx, streamName)
	if err != nil {
		return err
	}
	sinfo, err := s.Info(ctx)
	if err != nil {
		return err
	}
	var floor uint64
	consumers := s.ListConsumers(ctx)
	for info := range consumers.Info() {
		if info.NumPending > 0 || info.NumAckPending > 0 {
			return fmt.Errorf("stream %s: consumer %s has %d messages waiting, %d in flight",
				streamName, info.Name, info.NumPending, info.NumAckPending)
		}
		floor = max(floor, info.AckFloor.Stream)
	}
	if err := consumers.Err(); err != nil {
		return err
	}
	if floor < sinfo.State.LastSeq {
		return fmt.Errorf("stream %s: its last message, %d, not acknowledged yet", streamName, sinfo.State.LastSeq)
	}
	return nil
}
