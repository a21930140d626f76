package mapper

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

	"github.com/tallyhq/tally/workers/stream"
)

// Headers of a dead letter. Its data is the original message, byte for byte.
const (
	HeaderReason          = "Tally-Error"
	HeaderOriginalSubject = "Tally-Original-Subject"
	HeaderTenant          = "Tally-Tenant"
	HeaderStreamSequence  = "Tally-Stream-Sequence"
	HeaderOriginalMsgID   = "Tally-Original-Msg-Id"
)

// deadLetter publishes msg to the source's dead-letter subject with the reason, waits for the
// PubAck, then acknowledges the original. The dead letter's Nats-Msg-Id is derived from the
// original stream sequence and data, so a crash between the two steps cannot store it twice.
func (w *Worker) deadLetter(ctx context.Context, msg jetstream.Msg, reason error) error {
	ctx = context.WithoutCancel(ctx)
	var seq uint64
	if meta, err := msg.Metadata(); err == nil {
		seq = meta.Sequence.Stream
	}
	out := nats.NewMsg(w.stream.DeadLetterSubject())
	out.Data = msg.Data()
	out.Header.Set(HeaderReason, headerValue(reason.Error()))
	out.Header.Set(HeaderOriginalSubject, msg.Subject())
	out.Header.Set(HeaderTenant, w.tenant)
	out.Header.Set(HeaderStreamSequence, strconv.FormatUint(seq, 10))
	if id := msg.Headers().Get(nats.MsgIdHdr); id != "" {
		out.Header.Set(HeaderOriginalMsgID, id)
	}
	// Sequence plus a hash of the data: a recreated stream reuses sequences.
	h := fnv.New64a()
	_, _ = h.Write(msg.Data())
	out.Header.Set(nats.MsgIdHdr, fmt.Sprintf("dlq-%d-%x", seq, h.Sum64()))
	pubCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := w.js.PublishMsg(pubCtx, out); err != nil {
		return fmt.Errorf("dead letter of sequence %d: %w", seq, err)
	}
	deadLettersTotal.WithLabelValues(w.stream.String()).Inc()
	w.log.Error("message dead-lettered", "sequence", seq, "subject", msg.Subject(), "reason", reason)
	ackCtx, cancelAck := context.WithTimeout(ctx, 10*time.Second)
	defer cancelAck()
	if err := msg.DoubleAck(ackCtx); err != nil {
		w.log.Warn("ack of a dead letter failed; it will be redelivered and dead-lettered once more under the same id", "err", err)
	}
	return nil
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
func ListDeadLetters(ctx context.Context, js jetstream.JetStream, src stream.Source) ([]DeadLetter, error) {
	s, err := js.Stream(ctx, src.DeadLetterStreamName())
	if err != nil {
		return nil, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, err
	}
	var out []DeadLetter
	if info.State.Msgs == 0 {
		return nil, nil
	}
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
func Redrive(ctx context.Context, js jetstream.JetStream, src stream.Source, seq uint64) error {
	s, err := js.Stream(ctx, src.DeadLetterStreamName())
	if err != nil {
		return err
	}
	raw, err := s.GetMsg(ctx, seq)
	if err != nil {
		return fmt.Errorf("dead letter %d: %w", seq, err)
	}
	subject := raw.Header.Get(HeaderOriginalSubject)
	if !strings.HasPrefix(subject, strings.TrimSuffix(src.MessageSubjects(), "*")) {
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
