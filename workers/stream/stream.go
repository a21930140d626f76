// Package stream names and sets up the JetStream objects of a SegmentSource. The receiver, the
// workers and the operator all go through it, so the three agree on every name and setting.
package stream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Defaults for a source's stream.
const (
	DefaultMaxAge          = 7 * 24 * time.Hour
	DefaultDuplicateWindow = 10 * time.Minute // covers analytics-go's ~43 s of retries with room to spare
	WorkerConsumer         = "workers"
	// DefaultAckWait bounds how long a worker may hold a batch before JetStream re-delivers it.
	DefaultAckWait = 60 * time.Second
)

// MessageTypes are the Segment call types a stream carries, one subject each.
var MessageTypes = []string{"identify", "track", "group", "page", "screen", "alias"}

// Source identifies a SegmentSource: its namespace and name. Both are DNS labels, so they contain
// neither '.' nor '_', which keeps the names below unambiguous.
type Source struct {
	Namespace string
	Name      string
}

func (s Source) String() string { return s.Namespace + "/" + s.Name }

// StreamName is the JetStream stream holding the source's accepted messages.
func (s Source) StreamName() string { return "TALLY_" + s.Namespace + "_" + s.Name }

// DeadLetterStreamName is the stream holding messages a worker could not map.
func (s Source) DeadLetterStreamName() string { return s.StreamName() + "_DLQ" }

func (s Source) subjectPrefix() string { return "tally." + s.Namespace + "." + s.Name }

// Subject is where a message of the given Segment type is published.
func (s Source) Subject(messageType string) string {
	return s.subjectPrefix() + ".msg." + messageType
}

// MessageSubjects matches every message subject of the source.
func (s Source) MessageSubjects() string { return s.subjectPrefix() + ".msg.*" }

// DeadLetterSubject is where unmappable messages go, with the reason in a header.
func (s Source) DeadLetterSubject() string { return s.subjectPrefix() + ".dlq" }

// Settings shape a source's streams.
type Settings struct {
	MaxAge          time.Duration
	DuplicateWindow time.Duration
	Replicas        int
}

func (st Settings) withDefaults() Settings {
	if st.MaxAge <= 0 {
		st.MaxAge = DefaultMaxAge
	}
	if st.DuplicateWindow <= 0 {
		st.DuplicateWindow = DefaultDuplicateWindow
	}
	if st.DuplicateWindow > st.MaxAge {
		st.DuplicateWindow = st.MaxAge
	}
	if st.Replicas <= 0 {
		st.Replicas = 1
	}
	return st
}

// StreamConfig is the desired configuration of the source's message stream.
func StreamConfig(src Source, st Settings) jetstream.StreamConfig {
	st = st.withDefaults()
	return jetstream.StreamConfig{
		Name:        src.StreamName(),
		Description: "Segment messages of SegmentSource " + src.String(),
		Subjects:    []string{src.MessageSubjects()},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      st.MaxAge,
		Duplicates:  st.DuplicateWindow,
		Replicas:    st.Replicas,
	}
}

// DeadLetterStreamConfig keeps dead letters without an age limit: they leave only when re-driven
// or purged by a person.
func DeadLetterStreamConfig(src Source, st Settings) jetstream.StreamConfig {
	st = st.withDefaults()
	return jetstream.StreamConfig{
		Name:        src.DeadLetterStreamName(),
		Description: "Dead letters of SegmentSource " + src.String(),
		Subjects:    []string{src.DeadLetterSubject()},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Replicas:    st.Replicas,
	}
}

// ConsumerConfig is the durable pull consumer the source's workers share.
func ConsumerConfig(src Source) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       WorkerConsumer,
		Description:   "Workers of SegmentSource " + src.String(),
		FilterSubject: src.MessageSubjects(),
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckWait:       DefaultAckWait,
		MaxDeliver:    -1, // poison messages go to the dead-letter stream explicitly, never dropped
		MaxAckPending: 20000,
		MaxWaiting:    512,
	}
}

// Ensure creates or updates the source's streams and worker consumer so that they match the
// desired configuration. It is idempotent and recreates anything deleted behind our back.
func Ensure(ctx context.Context, js jetstream.JetStream, src Source, st Settings) error {
	if _, err := js.CreateOrUpdateStream(ctx, StreamConfig(src, st)); err != nil {
		return fmt.Errorf("stream %s: %w", src.StreamName(), err)
	}
	if _, err := js.CreateOrUpdateStream(ctx, DeadLetterStreamConfig(src, st)); err != nil {
		return fmt.Errorf("stream %s: %w", src.DeadLetterStreamName(), err)
	}
	if _, err := js.CreateOrUpdateConsumer(ctx, src.StreamName(), ConsumerConfig(src)); err != nil {
		return fmt.Errorf("consumer %s on %s: %w", WorkerConsumer, src.StreamName(), err)
	}
	return nil
}

// Delete removes the source's consumer and streams. Missing objects are not an error.
func Delete(ctx context.Context, js jetstream.JetStream, src Source) error {
	err := js.DeleteConsumer(ctx, src.StreamName(), WorkerConsumer)
	if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("consumer %s: %w", WorkerConsumer, err)
	}
	for _, name := range []string{src.StreamName(), src.DeadLetterStreamName()} {
		if err := js.DeleteStream(ctx, name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("stream %s: %w", name, err)
		}
	}
	return nil
}

// State is what the operator reports about a source's stream.
type State struct {
	Messages       uint64
	FirstMessageAt time.Time // zero when nothing ever arrived
	LastMessageAt  time.Time
	// Backlog counts messages not yet acknowledged by a worker: pending plus in flight.
	Backlog        uint64
	DeadLetters    uint64
	ConsumerExists bool
	// DeadLetterStreamExists tells the operator whether the dead-letter stream needs re-creating.
	DeadLetterStreamExists bool
}

// Inspect reads the source's stream and consumer state. A missing stream is ErrStreamNotFound.
func Inspect(ctx context.Context, js jetstream.JetStream, src Source) (State, error) {
	var state State
	s, err := js.Stream(ctx, src.StreamName())
	if err != nil {
		return state, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return state, err
	}
	state.Messages = info.State.Msgs
	// FirstTime moves as MaxAge trims, so "first message" is the first sequence ever stored.
	if info.State.LastSeq > 0 {
		state.LastMessageAt = info.State.LastTime
		if first, err := s.GetMsg(ctx, 1); err == nil {
			state.FirstMessageAt = first.Time
		} else {
			state.FirstMessageAt = info.State.FirstTime
		}
	}
	c, err := s.Consumer(ctx, WorkerConsumer)
	switch {
	case err == nil:
		ci, err := c.Info(ctx)
		if err != nil {
			return state, err
		}
		state.ConsumerExists = true
		state.Backlog = ci.NumPending + uint64(ci.NumAckPending)
	case errors.Is(err, jetstream.ErrConsumerNotFound):
	default:
		return state, err
	}
	if dlq, err := js.Stream(ctx, src.DeadLetterStreamName()); err == nil {
		state.DeadLetterStreamExists = true
		if di, err := dlq.Info(ctx); err == nil {
			state.DeadLetters = di.State.Msgs
		}
	}
	return state, nil
}
