// Package segment is the Segment message model shared by the receiver and the workers: decoding a
// request, validating and normalising each message, and reading a normalised message back.
package segment

import (
	"encoding/json"
	"fmt"
	"time"
)

// Message is a normalised Segment message as it travels through JetStream: the receiver has merged
// batch-level context and integrations into it, stamped receivedAt, corrected timestamp, assigned a
// messageId when missing, turned numeric ids into strings and removed writeKey. Fields not listed
// here travel in the JSON untouched; the workers read only these.
type Message struct {
	Type              string          `json:"type"`
	MessageID         string          `json:"messageId"`
	UserID            string          `json:"userId,omitempty"`
	AnonymousID       string          `json:"anonymousId,omitempty"`
	GroupID           string          `json:"groupId,omitempty"`
	PreviousID        string          `json:"previousId,omitempty"`
	Event             string          `json:"event,omitempty"`
	Name              string          `json:"name,omitempty"`
	Category          string          `json:"category,omitempty"`
	Traits            json.RawMessage `json:"traits,omitempty"`
	Properties        json.RawMessage `json:"properties,omitempty"`
	Context           json.RawMessage `json:"context,omitempty"`
	Integrations      json.RawMessage `json:"integrations,omitempty"`
	Timestamp         time.Time       `json:"timestamp"`
	OriginalTimestamp *time.Time      `json:"originalTimestamp,omitempty"`
	SentAt            *time.Time      `json:"sentAt,omitempty"`
	ReceivedAt        time.Time       `json:"receivedAt"`
}

// Message types.
const (
	TypeIdentify = "identify"
	TypeTrack    = "track"
	TypeGroup    = "group"
	TypePage     = "page"
	TypeScreen   = "screen"
	TypeAlias    = "alias"
)

// MaxMessageIDLength is Segment's limit on messageId.
const MaxMessageIDLength = 100

// ParseNormalized reads a message the receiver published. It fails only on data the receiver would
// never have produced, which the workers treat as a dead letter.
func ParseNormalized(data []byte) (Message, error) {
	var m Message
	if err := json.Unmarshal(data, &m); err != nil {
		return m, fmt.Errorf("not a normalised Segment message: %w", err)
	}
	switch m.Type {
	case TypeIdentify, TypeTrack, TypeGroup, TypePage, TypeScreen, TypeAlias:
	default:
		return m, fmt.Errorf("unknown message type %q", m.Type)
	}
	if m.MessageID == "" {
		return m, fmt.Errorf("message without messageId")
	}
	if m.Timestamp.IsZero() || m.ReceivedAt.IsZero() {
		return m, fmt.Errorf("message %s without timestamp or receivedAt", m.MessageID)
	}
	return m, nil
}
