package stream

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Headers of a dead letter. Its data is the original message, byte for byte.
const (
	HeaderReason          = "Tally-Error"
	HeaderOriginalSubject = "Tally-Original-Subject"
	HeaderTenant          = "Tally-Tenant"
	HeaderStreamSequence  = "Tally-Stream-Sequence"
	HeaderOriginalMsgID   = "Tally-Original-Msg-Id"
)

// NewDeadLetter builds the dead letter of msg, a message of src's stream that its worker could
// not map: the original data with the reason and origin in headers. Its Nats-Msg-Id comes from
// the original stream sequence and data, so publishing it twice (a crash between publishing it
// and acknowledging the original) stores it once.
func NewDeadLetter(src Source, tenant string, msg jetstream.Msg, reason error) *nats.Msg {
	var seq uint64
	if meta, err := msg.Metadata(); err == nil {
		seq = meta.Sequence.Stream
	}
	out := nats.NewMsg(src.DeadLetterSubject())
	out.Data = msg.Data()
	out.Header.Set(HeaderReason, headerValue(reason.Error()))
	out.Header.Set(HeaderOriginalSubject, msg.Subject())
	out.Header.Set(HeaderTenant, tenant)
	out.Header.Set(HeaderStreamSequence, strconv.FormatUint(seq, 10))
	if id := msg.Headers().Get(nats.MsgIdHdr); id != "" {
		out.Header.Set(HeaderOriginalMsgID, id)
	}
	// Sequence plus a hash of the data: a recreated stream reuses sequences.
	h := fnv.New64a()
	_, _ = h.Write(msg.Data())
	out.Header.Set(nats.MsgIdHdr, fmt.Sprintf("dlq-%d-%x", seq, h.Sum64()))
	return out
}

// headerValue keeps a reason on one line of bounded length (headers are line-based).
func headerValue(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 1000 {
		s = s[:1000] + "..."
	}
	return s
}

// DeadLetter is one message in a source's dead-letter stream.
type DeadLetter struct {
	Sequence         uint64 // in the dead-letter stream
	Time             time.Time
	Reason           string
	OriginalSubject  string
	OriginalSequence string
	Tenant           string
	Data             []byte
}

// ListDeadLetters returns the dead letters of src, oldest first.
func ListDeadLetters(ctx context.Context, js jetstream.JetStream, src Source) ([]DeadLetter, error) {
	s, err := js.Stream(ctx, src.DeadLetterStreamName())
	if err != nil {
		return nil, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, err
	}
	if info.State.Msgs == 0 {
		return nil, nil
	}
	var out []DeadLetter
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		raw, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // deleted after a redrive
		}
		if err != nil {
			return nil, err
		}
		out = append(out, DeadLetter{
			Sequence: raw.Sequence, Time: raw.Time, Data: raw.Data,
			Reason:           raw.Header.Get(HeaderReason),
			OriginalSubject:  raw.Header.Get(HeaderOriginalSubject),
			OriginalSequence: raw.Header.Get(HeaderStreamSequence),
			Tenant:           raw.Header.Get(HeaderTenant),
		})
	}
	return out, nil
}

// Redrive publishes the dead letter with sequence seq back to its original subject, then deletes
// it from the dead-letter stream. The republished message gets a fresh Nats-Msg-Id: the original
// id may still be inside the stream's duplicate window, which would silently swallow it, and the
// workers are idempotent on messageId anyway.
func Redrive(ctx context.Context, js jetstream.JetStream, src Source, seq uint64) error {
	s, err := js.Stream(ctx, src.DeadLetterStreamName())
	if err != nil {
		return err
	}
	raw, err := s.GetMsg(ctx, seq)
	if err != nil {
		return fmt.Errorf("dead letter %d: %w", seq, err)
	}
	subject := raw.Header.Get(HeaderOriginalSubject)
	if !strings.HasPrefix(subject, strings.TrimSuffix(src.MessageSubjects(), ">")) {
		return fmt.Errorf("dead letter %d: original subject %q is not a message subject of %s", seq, subject, src)
	}
	out := nats.NewMsg(subject)
	out.Data = raw.Data
	out.Header.Set(nats.MsgIdHdr, fmt.Sprintf("redrive-%d-%d", seq, time.Now().UnixNano()))
	if _, err := js.PublishMsg(ctx, out); err != nil {
		return fmt.Errorf("redrive %d: %w", seq, err)
	}
	if err := s.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("redrive %d: published, but not deleted from the dead-letter stream: %w", seq, err)
	}
	return nil
}

// deadLetterStream reads the dead-letter stream's configuration and message count; exists is
// false when the stream is missing. A failed read is an error, never "no dead letters": deletion
// waits for that count to be 0.
func deadLetterStream(ctx context.Context, js jetstream.JetStream, src Source) (cfg *jetstream.StreamConfig, count uint64, exists bool, err error) {
	dlq, err := js.Stream(ctx, src.DeadLetterStreamName())
	switch {
	case err == nil:
		info := dlq.CachedInfo()
		return &info.Config, info.State.Msgs, true, nil
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return nil, 0, false, nil
	default:
		return nil, 0, false, err
	}
}

// Undelivered counts what deleting the source's streams would destroy: messages no worker has
// acknowledged yet, and dead letters. Without a consumer every stored message counts.
func Undelivered(ctx context.Context, js jetstream.JetStream, src Source) (messages, deadLetters uint64, err error) {
	state, err := Inspect(ctx, js, src)
	switch {
	case err == nil:
		messages = state.Backlog
		if !state.ConsumerExists {
			messages = state.Messages
		}
		return messages, state.DeadLetters, nil
	case errors.Is(err, jetstream.ErrStreamNotFound):
		// The message stream is gone; its dead letters may not be.
		_, deadLetters, _, err = deadLetterStream(ctx, js, src)
		return 0, deadLetters, err
	default:
		return 0, 0, err
	}
}
