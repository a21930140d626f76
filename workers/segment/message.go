// Package segment is the Segment message model shared by the receiver and the workers: decoding a
// request, validating and normalising each message, and reading a normalised message back.
//
// # Why a hand-written JSON scanner
//
// Every request body goes through validJSON (valid.go) and the raw-span iterators of jsonscan.go,
// so untouched fields are copied as bytes instead of decoded and encoded again. BenchmarkJSON
// compares them with the libraries on make bench's mix (70% track, 20% identify, 10% group,
// 100-message batches), on this project's 2-core machine:
//
//	go test ./workers/segment/ -run '^$' -bench BenchmarkJSON -benchtime 2s -count 6 | benchstat
//
//	hand-written (validate, split, walk every member)   243 µs per batch   412k msgs/s   10 allocs
//	encoding/json (Valid + Unmarshal into RawMessage)   1.10 ms             91k msgs/s   1,088 allocs
//	gjson, documented API (ValidBytes, GetManyBytes)    0.98 ms            102k msgs/s   783 allocs
//	gjson, zero-copy ForEach over an unsafe view        205 µs             488k msgs/s   0 allocs
//	fastjson, ValidateBytes + Parse                     194 µs             517k msgs/s   0 allocs
//
// A CPU profile of make bench (go run ./hack/bench --quick --cpuprofile) puts the scanner at 37%
// of the receiver handler's time, so encoding/json or gjson's documented API would cut ingest to
// about 0.44x, and gjson zero-copy or fastjson would move it by +4..9%: within the 15% that would
// make a library the better choice on speed alone. Both are ruled out on safety instead
// (TestJSONLibsDeepNesting): their validators recurse once per nesting level with no bound, so a
// 500 KB body of brackets grows a goroutine stack to 256 MB, past a receiver's memory limit,
// where validJSON refuses it in constant space, exactly as json.Valid does (FuzzValidJSON keeps
// the two in agreement). The headroom left is in reading each byte once instead of four times
// (validate, batch, message, member).
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
	// TypeDelete is a user-deletion (privacy) request, which only Segment sends: it is accepted on
	// the destination route alone.
	TypeDelete = "delete"
)

// MaxMessageIDLength is Segment's limit on messageId.
const MaxMessageIDLength = 100

// ParseNormalized reads a message the receiver published. It fails only on data the receiver would
// never have produced, which the workers treat as a dead letter.
func ParseNormalized(data []byte) (Message, error) {
	var m Message
	if err := decodeMessage(data, &m); err != nil {
		return m, fmt.Errorf("not a normalised Segment message: %w", err)
	}
	switch m.Type {
	case TypeIdentify, TypeTrack, TypeGroup, TypePage, TypeScreen, TypeAlias, TypeDelete:
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
