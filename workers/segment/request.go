package segment

import (
	"bytes"
	"strconv"
	"time"
)

// Endpoint is what a Tracking API path expects: a batch ({"batch":[...]}) or one message whose
// type the path implies (Type, which the body may then omit). Destination is the route Segment
// itself delivers to: one message of any type, a JSON array of messages or a batch, whose
// timestamps Segment has already computed.
type Endpoint struct {
	Type        string
	Batch       bool
	Destination bool
}

// Request is a request body split into its raw messages and batch-level fields, ready for
// authentication (WriteKey, ItemWriteKey) and then Normalize.
type Request struct {
	// WriteKey is the body's top-level writeKey, empty when absent.
	WriteKey string

	items            [][]byte
	endpoint         Endpoint
	bodySize         int
	rootContext      []byte
	rootIntegrations []byte
	rootSentAt       time.Time
	hasRootSentAt    bool
}

// Len is the number of messages in the request.
func (r *Request) Len() int { return len(r.items) }

// ParseRequest checks a body against the Tracking API's request-level rules (well-formed JSON,
// size limits, batch shape) and splits it into messages without decoding them.
func ParseRequest(body []byte, ep Endpoint) (*Request, error) {
	// Some HTTP stacks (.NET among them) prefix UTF-8 bodies with a byte-order mark.
	body = bytes.TrimPrefix(body, []byte("\xEF\xBB\xBF"))
	if limit := max(ep.RequestLimit(), MaxRequestBytes); len(body) > limit {
		return nil, &RequestError{CodeRequestTooLarge, "the request is larger than " + strconv.Itoa(limit) + " bytes"}
	}
	if !validJSON(body) {
		return nil, &RequestError{CodeInvalidJSON, "the body is not valid JSON"}
	}
	r := &Request{endpoint: ep, bodySize: len(body)}
	if ep.Destination {
		if items, ok := newArrayIter(body); ok {
			return r, r.addItems(items)
		}
		if !hasBatch(body) {
			if len(body) > MaxMessageBytes {
				return nil, messageTooLarge(0)
			}
			r.items = [][]byte{trimValue(body)}
			return r, nil
		}
	}
	root, ok := newObjectIter(body)
	if !ok {
		return nil, &RequestError{CodeInvalidJSON, "the body must be a JSON object"}
	}
	if !ep.Batch && !ep.Destination {
		if len(body) > MaxMessageBytes {
			return nil, messageTooLarge(0)
		}
		r.items = [][]byte{trimValue(body)}
		r.WriteKey = writeKeyOf(body)
		return r, nil
	}
	var batch []byte
	for {
		key, value, _, ok := root.next()
		if !ok {
			break
		}
		switch string(key) {
		case `"batch"`:
			batch = value
		case `"context"`:
			r.rootContext = objectOrNil(value)
		case `"integrations"`:
			r.rootIntegrations = objectOrNil(value)
		case `"sentAt"`:
			r.rootSentAt, r.hasRootSentAt = parseTimestampValue(value)
		case `"writeKey"`:
			r.WriteKey, _ = stringToken(value)
		}
	}
	items, ok := newArrayIter(batch)
	if !ok {
		return nil, &RequestError{CodeInvalidBatch, `a batch request needs a "batch" array`}
	}
	return r, r.addItems(items)
}

// addItems splits a batch array into its messages. A message over MaxMessageBytes is refused on
// its own by Normalize, not the whole batch.
func (r *Request) addItems(items arrayIter) error {
	for {
		item, ok := items.next()
		if !ok {
			return nil
		}
		if limit := r.endpoint.messageLimit(); len(r.items) == limit {
			return &RequestError{CodeTooManyMessages, "a batch holds at most " + strconv.Itoa(limit) + " messages"}
		}
		r.items = append(r.items, item)
	}
}

// hasBatch reports whether an object has a top-level "batch" member.
func hasBatch(body []byte) bool {
	it, ok := newObjectIter(body)
	if !ok {
		return false
	}
	for {
		key, _, _, ok := it.next()
		if !ok {
			return false
		}
		if string(key) == `"batch"` {
			return true
		}
	}
}

// Destination reports whether the request came to the destination route.
func (r *Request) Destination() bool { return r.endpoint.Destination }

// FirstItem is the raw bytes of the request's first message (Segment's classic webhooks sign only
// the first event of a batch).
func (r *Request) FirstItem() []byte {
	if len(r.items) == 0 {
		return nil
	}
	return r.items[0]
}

func messageTooLarge(index int) error {
	return &RequestError{CodeMessageTooLarge, "message " + strconv.Itoa(index) + " is larger than " + strconv.Itoa(MaxMessageBytes) + " bytes"}
}

// OutputBound is the most memory Normalize uses for the request's messages: its estimate of their
// size with the batch context merged into each (and a margin for the fields it adds), never more
// than the endpoint's output limit plus one message. A receiver reserves it before normalising.
func (r *Request) OutputBound() int {
	perMessage := messageOverhead + len(r.rootContext) + len(r.rootIntegrations)
	return min(r.bodySize+len(r.items)*perMessage, r.endpoint.outputLimit()+MaxMessageBytes)
}

// ItemWriteKey is the writeKey a batch message carries itself, for senders that put the key on
// each message instead of the request.
func (r *Request) ItemWriteKey(i int) string { return writeKeyOf(r.items[i]) }

// writeKeyOf reads the top-level writeKey string of a message ("" when absent).
func writeKeyOf(message []byte) string {
	it, ok := newObjectIter(message)
	if !ok {
		return ""
	}
	key := ""
	for {
		k, v, _, ok := it.next()
		if !ok {
			return key
		}
		if fieldOf(k) == fWriteKey {
			if s, ok := stringToken(v); ok {
				key = s
			}
		}
	}
}

func objectOrNil(v []byte) []byte {
	if isObject(v) {
		return v
	}
	return nil
}

// parseTimestampValue reads a JSON string timestamp. Go's zero time (0001-01-01T00:00:00Z) is
// what a Go client serialises for "unset", so it counts as absent.
func parseTimestampValue(v []byte) (time.Time, bool) {
	s, ok := stringToken(v)
	if !ok {
		return time.Time{}, false
	}
	t, ok := ParseTimestamp(s)
	return t, ok && !t.IsZero()
}
