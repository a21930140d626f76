// Package stream names and sets up the JetStream objects of a SegmentSource. The receiver, the
// workers and the operator all go through it, so the three agree on every name and setting.
package stream

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Defaults for a source's stream. There is no default max age: a message the receiver accepted
// stays until a worker acknowledged it, however long Postgres is down or the source suspended.
const (
	DefaultDuplicateWindow = 10 * time.Minute // covers analytics-go's ~43 s of retries with room to spare
	// MaxMessageBytes is the largest message a source's stream stores, headers included: twice
	// the receiver's 32 KB limit per message, so only a sender that bypasses the receiver meets it,
	// and no worker fetch can be handed a giant.
	MaxMessageBytes = 64 << 10
	// maxDeadLetterBytes leaves room for the reason and origin headers of a dead letter.
	maxDeadLetterBytes = MaxMessageBytes + 8<<10
	WorkerConsumer     = "workers"
	// DefaultAckWait bounds how long a worker may hold a batch before JetStream re-delivers it.
	DefaultAckWait = 60 * time.Second
)

// MessageTypes are the Segment call types a stream carries, one subject each.
var MessageTypes = []string{"identify", "track", "group", "page", "screen", "alias", "delete"}

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

// MessageSubjects matches every message subject of the source, partitioned or not.
func (s Source) MessageSubjects() string { return s.subjectPrefix() + ".msg.>" }

// unpartitionedSubjects matches the message subjects without a partition.
func (s Source) unpartitionedSubjects() string { return s.subjectPrefix() + ".msg.*" }

// DeadLetterSubject is where unmappable messages go, with the reason in a header.
func (s Source) DeadLetterSubject() string { return s.subjectPrefix() + ".dlq" }

// Settings shape a source's streams.
type Settings struct {
	MaxAge          time.Duration
	DuplicateWindow time.Duration
	Replicas        int
	// MaxBytes is the most the source's stream may hold (DefaultMaxBytes when 0): when it is full
	// the stream refuses new messages (the receiver answers 503 and clients retry) while every
	// other tenant's stream flows. The dead-letter stream gets a tenth of it.
	MaxBytes int64
	// Tenant is recorded in the streams' metadata: a stream of another tenant with the same name
	// (a retained one) is refused, never adopted.
	Tenant string
	// SourceUID is the SegmentSource's UID, recorded beside the tenant: which object last owned
	// the stream. A re-created source of the same tenant adopts its retained stream and records
	// its own UID.
	SourceUID string
	// Partitions is how many partition consumers the stream gets besides the unpartitioned one
	// (none for 0 or 1; see Consumers). Consumers are never removed by a smaller count: they keep
	// what was published to their partition, and the workers keep consuming them.
	Partitions int
}

// DefaultMaxBytes is a source stream's size when its SegmentSource and the manager set none.
const DefaultMaxBytes = 1 << 30

// minDeadLetterBytes is the least a dead-letter stream may hold.
const minDeadLetterBytes = 16 << 20

// MetadataTenant is the stream metadata key naming the tenant a stream belongs to.
const MetadataTenant = "tally.dev/tenant"

// MetadataSourceUID is the stream metadata key with the UID of the SegmentSource that owns it.
const MetadataSourceUID = "tally.dev/source-uid"

// ErrOtherTenant refuses a stream that belongs to another tenant.
var ErrOtherTenant = errors.New("the stream belongs to another tenant")

func (st Settings) withDefaults() Settings {
	if st.MaxAge < 0 {
		st.MaxAge = 0
	}
	if st.DuplicateWindow <= 0 {
		st.DuplicateWindow = DefaultDuplicateWindow
	}
	// JetStream refuses a duplicate window longer than a (set) max age.
	if st.MaxAge > 0 && st.DuplicateWindow > st.MaxAge {
		st.DuplicateWindow = st.MaxAge
	}
	if st.Replicas <= 0 {
		st.Replicas = 1
	}
	if st.MaxBytes <= 0 {
		st.MaxBytes = DefaultMaxBytes
	}
	return st
}

// StreamConfig is the desired configuration of the source's message stream. A message leaves the
// stream once a worker consumer acknowledged it (it is in Postgres) and a worker purged it
// (PurgeAcknowledged: limits retention, purged in bulk, instead of a work queue's removal one by
// one), and never before, unless the user set a max age. When a server limit is hit the stream
// refuses new messages (DiscardNew), so the receiver answers an error and the client retries,
// instead of JetStream dropping accepted ones.
func StreamConfig(src Source, st Settings) jetstream.StreamConfig {
	st = st.withDefaults()
	return jetstream.StreamConfig{
		Name:        src.StreamName(),
		Description: "Segment messages of SegmentSource " + src.String(),
		Subjects:    []string{src.MessageSubjects()},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardNew,
		MaxAge:      st.MaxAge,
		Duplicates:  st.DuplicateWindow,
		Replicas:    st.Replicas,
		MaxMsgSize:  MaxMessageBytes,
		MaxBytes:    st.MaxBytes,
		Metadata:    ownerMetadata(st),
		// The receiver stores a multi-message request as atomic batches: a few fsyncs per batch
		// instead of one per message when JetStream syncs every write. Servers before 2.12
		// ignore it, and the receiver then publishes message by message.
		AllowAtomicPublish: true,
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
		Discard:     jetstream.DiscardNew, // a full dead-letter stream holds the worker back; it never drops a letter
		Replicas:    st.Replicas,
		MaxMsgSize:  maxDeadLetterBytes,
		MaxBytes:    max(st.MaxBytes/10, minDeadLetterBytes),
		Metadata:    ownerMetadata(st),
	}
}

// ConsumerConfig is the durable pull consumer the source's workers share for its unpartitioned
// subjects: every message of a source with one partition.
func ConsumerConfig(src Source) jetstream.ConsumerConfig { return consumerConfig(src, WorkerConsumer) }

// PartitionConsumerConfig is the durable pull consumer of one partition's subjects.
func PartitionConsumerConfig(src Source, partition int) jetstream.ConsumerConfig {
	return consumerConfig(src, PartitionConsumer(partition))
}

// NamedConsumerConfig is ConsumerConfig or PartitionConsumerConfig by the consumer's name (one of
// Consumers): what a worker recreates when the server has forgotten its consumer.
func NamedConsumerConfig(src Source, name string) jetstream.ConsumerConfig {
	return consumerConfig(src, name)
}

// consumerConfig keeps the consumer's state in memory (MemoryStorage). A file-stored consumer
// rewrites its state file (a temporary file, then a rename) after deliveries and acks, at most ten
// times a second each: nothing for a busy source, but for a pool's thousand mostly idle members
// that is two file writes per event, the largest cost of a small tenant's event (bench). The
// state is nearly redundant: the stream, stored on disk, holds the messages not yet acknowledged
// and those acknowledged since the workers' last purge (ten seconds' at most). A single
// server forgets a memory-stored consumer when it restarts (a replicated one lives on in its
// other replicas); the worker then creates it again (Worker.bind), and it delivers everything the
// stream holds, which Postgres takes once.
func consumerConfig(src Source, name string) jetstream.ConsumerConfig {
	description, filter := "Workers of SegmentSource "+src.String(), src.unpartitionedSubjects()
	if p := consumerPartition(name); p >= 0 {
		description, filter = description+", partition "+strconv.Itoa(p), src.partitionFilter(p)
	}
	return jetstream.ConsumerConfig{
		Durable:       name,
		Description:   description,
		FilterSubject: filter,
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckWait:       DefaultAckWait,
		MaxDeliver:    -1, // poison messages go to the dead-letter stream explicitly, never dropped
		MaxAckPending: 20000,
		MaxWaiting:    512,
		MemoryStorage: true,
	}
}

// Ensure creates or updates the source's streams and worker consumer so that they match the
// desired configuration. It is idempotent and recreates anything deleted behind our back.
func Ensure(ctx context.Context, js jetstream.JetStream, src Source, st Settings) error {
	var existing *jetstream.StreamConfig
	if s, err := js.Stream(ctx, src.StreamName()); err == nil {
		existing = &s.CachedInfo().Config
	} else if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("stream %s: %w", src.StreamName(), err)
	}
	if existing != nil && !sameTenant(existing.Metadata, st.Tenant) {
		return fmt.Errorf("stream %s: %w", src.StreamName(), ErrOtherTenant)
	}
	if _, err := js.CreateOrUpdateStream(ctx, desiredStreamConfig(src, st, existing)); err != nil {
		return fmt.Errorf("stream %s: %w", src.StreamName(), err)
	}
	if _, err := js.CreateOrUpdateStream(ctx, DeadLetterStreamConfig(src, st)); err != nil {
		return fmt.Errorf("stream %s: %w", src.DeadLetterStreamName(), err)
	}
	for _, name := range Consumers(st.Partitions) {
		if err := ensureConsumer(ctx, js, src, name); err != nil {
			return fmt.Errorf("consumer %s on %s: %w", name, src.StreamName(), err)
		}
	}
	return nil
}

// ensureConsumer creates or updates one worker consumer. JetStream cannot change a consumer's
// storage in place, so one stored in a file (by an earlier version) is deleted and created again:
// nothing is lost, the new consumer delivers every message still in the stream,
// and a message a worker holds meanwhile is delivered again, which Postgres takes once.
func ensureConsumer(ctx context.Context, js jetstream.JetStream, src Source, name string) error {
	want := consumerConfig(src, name)
	existing, err := js.Consumer(ctx, src.StreamName(), name)
	switch {
	case err == nil && existing.CachedInfo().Config.MemoryStorage != want.MemoryStorage:
		if err := js.DeleteConsumer(ctx, src.StreamName(), name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return err
		}
	case err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound):
		return err
	}
	_, err = js.CreateOrUpdateConsumer(ctx, src.StreamName(), want)
	return err
}

// desiredStreamConfig is StreamConfig for a stream that may exist already. JetStream cannot turn
// a work queue into a stream with limits retention in place (nor back), so a work queue created by
// an earlier version stays one: its acknowledged messages leave one by one, as before, and the
// workers' purges find nothing to do. Everything else is applied. Moving it to limits retention
// needs it drained and re-created.
func desiredStreamConfig(src Source, st Settings, existing *jetstream.StreamConfig) jetstream.StreamConfig {
	cfg := StreamConfig(src, st)
	if existing != nil && existing.Retention == jetstream.WorkQueuePolicy {
		cfg.Retention = jetstream.WorkQueuePolicy
	}
	return cfg
}

// InSync reports whether the configurations Inspect found are the ones Ensure would write. Only
// the fields Tally sets are compared: the server fills in the rest. Anything missing is not in
// sync, so the operator calls Ensure exactly when there is something to create or correct, also
// after a hand edit or an earlier refused update.
func InSync(src Source, st Settings, state State) bool {
	if state.StreamConfig == nil || state.DeadLetterStreamConfig == nil {
		return false
	}
	for _, name := range Consumers(st.Partitions) {
		got, ok := state.Consumers[name]
		if !ok || !consumerConfigEqual(*got, consumerConfig(src, name)) {
			return false
		}
	}
	return streamConfigEqual(*state.StreamConfig, desiredStreamConfig(src, st, state.StreamConfig)) &&
		streamConfigEqual(*state.DeadLetterStreamConfig, DeadLetterStreamConfig(src, st))
}

func streamConfigEqual(got, want jetstream.StreamConfig) bool {
	return got.Description == want.Description &&
		slices.Equal(got.Subjects, want.Subjects) &&
		got.Storage == want.Storage &&
		got.Retention == want.Retention &&
		got.Discard == want.Discard &&
		got.MaxAge == want.MaxAge &&
		(want.Duplicates == 0 || got.Duplicates == want.Duplicates) &&
		got.Replicas == want.Replicas &&
		got.MaxMsgSize == want.MaxMsgSize &&
		got.MaxBytes == want.MaxBytes &&
		got.Metadata[MetadataTenant] == want.Metadata[MetadataTenant] &&
		got.Metadata[MetadataSourceUID] == want.Metadata[MetadataSourceUID] &&
		got.AllowAtomicPublish == want.AllowAtomicPublish
}

func consumerConfigEqual(got, want jetstream.ConsumerConfig) bool {
	return got.Description == want.Description &&
		got.FilterSubject == want.FilterSubject &&
		got.AckPolicy == want.AckPolicy &&
		got.DeliverPolicy == want.DeliverPolicy &&
		got.AckWait == want.AckWait &&
		got.MaxDeliver == want.MaxDeliver &&
		got.MaxAckPending == want.MaxAckPending &&
		got.MaxWaiting == want.MaxWaiting &&
		got.MemoryStorage == want.MemoryStorage
}

// ownerMetadata records the tenant and the owning source's UID, those that are known.
func ownerMetadata(st Settings) map[string]string {
	m := map[string]string{}
	if st.Tenant != "" {
		m[MetadataTenant] = st.Tenant
	}
	if st.SourceUID != "" {
		m[MetadataSourceUID] = st.SourceUID
	}
	if len(m) == 0 {
		return nil
	}
	return m
}

// sameTenant reports whether a stream with metadata may serve tenant: it names the same tenant,
// or none (a stream made before tenants were recorded is claimed by the first to ensure it).
func sameTenant(metadata map[string]string, tenant string) bool {
	owner := metadata[MetadataTenant]
	return owner == "" || tenant == "" || owner == tenant
}

// Delete removes the source's streams (and with them their consumers). Missing objects are not
// an error.
func Delete(ctx context.Context, js jetstream.JetStream, src Source) error {
	for _, name := range []string{src.StreamName(), src.DeadLetterStreamName()} {
		if err := js.DeleteStream(ctx, name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("stream %s: %w", name, err)
		}
	}
	return nil
}

// State is what the operator reports about a source's stream.
type State struct {
	Messages uint64
	// Bytes is what the stream holds, against its MaxBytes.
	Bytes    uint64
	MaxBytes int64
	// LastSequence is the stream's last sequence: above 0 once anything ever arrived, even when
	// the workers have consumed and purged every message since.
	LastSequence uint64
	// FirstMessageAt is the oldest message time the stream still knows: the first sequence if it
	// is still stored, else the oldest message in it, else zero. It moves as messages are
	// consumed; the operator keeps the earliest value it ever saw.
	FirstMessageAt time.Time
	LastMessageAt  time.Time
	// Backlog counts messages not yet acknowledged by a worker, over every worker consumer:
	// pending plus in flight.
	Backlog     uint64
	DeadLetters uint64
	// ConsumerExists: the unpartitioned worker consumer exists.
	ConsumerExists bool
	// Partitions is one more than the highest partition consumer's partition (0 when there is
	// none): the workers consume every partition below it.
	Partitions int
	// DeadLetterStreamExists tells the operator whether the dead-letter stream needs re-creating.
	DeadLetterStreamExists bool
	// StreamConfig, DeadLetterStreamConfig and Consumers (the worker consumers by name) are what
	// the server has, nil or absent when missing; InSync compares them with the desired ones.
	StreamConfig           *jetstream.StreamConfig
	DeadLetterStreamConfig *jetstream.StreamConfig
	Consumers              map[string]*jetstream.ConsumerConfig
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
	state.StreamConfig = &info.Config
	state.Messages = info.State.Msgs
	state.Bytes, state.MaxBytes = info.State.Bytes, info.Config.MaxBytes
	state.LastSequence = info.State.LastSeq
	if info.State.LastSeq > 0 {
		state.LastMessageAt = info.State.LastTime
		if first, err := s.GetMsg(ctx, 1); err == nil {
			state.FirstMessageAt = first.Time
		} else if info.State.Msgs > 0 {
			state.FirstMessageAt = info.State.FirstTime
		}
	}
	if err := inspectConsumers(ctx, s, &state); err != nil {
		return state, err
	}
	state.DeadLetterStreamConfig, state.DeadLetters, state.DeadLetterStreamExists, err = deadLetterStream(ctx, js, src)
	return state, err
}

// inspectConsumers reads every worker consumer of the stream: their configurations, the summed
// backlog and the partitions they cover. Consumers of other names (a person's) are left out.
func inspectConsumers(ctx context.Context, s jetstream.Stream, state *State) error {
	state.Consumers = map[string]*jetstream.ConsumerConfig{}
	list := s.ListConsumers(ctx)
	for ci := range list.Info() {
		name := ci.Name
		p := consumerPartition(name)
		if name != WorkerConsumer && p < 0 {
			continue
		}
		cfg := ci.Config
		state.Consumers[name] = &cfg
		state.Backlog += ci.NumPending + uint64(ci.NumAckPending)
		if name == WorkerConsumer {
			state.ConsumerExists = true
		}
		state.Partitions = max(state.Partitions, p+1)
	}
	return list.Err()
}
