package segment

import (
	"strconv"
	"time"
)

// Accepted is one valid message, normalised and ready to publish.
type Accepted struct {
	// Index is the message's position in the request (0 for single-message endpoints).
	Index     int
	Type      string
	MessageID string
	// Event is the track event name ("" for other types).
	Event string
	// Clamped is set when the message was dated more than FutureTolerance past its receipt and
	// its timestamp was clamped to the receipt time.
	Clamped bool
	// JSON is the normalised message; ParseNormalized reads it back.
	JSON []byte
	// UserKey is what partitions the message: its userId, else its anonymousId, as the workers
	// read them back.
	UserKey string
}

// messageOverhead is a generous bound on what normalising adds to a message: receivedAt, a
// computed timestamp, a messageId, quotes around numeric ids.
const messageOverhead = 256

// Result is the outcome of normalising a request: what to publish and what was refused.
type Result struct {
	Accepted []Accepted
	Rejected []Rejection
}

// Normalize validates every message and rewrites the valid ones into the form the workers read:
// batch-level context and integrations merged in (the message's own values win), receivedAt
// stamped, timestamp corrected for client clock skew (and clamped when it lies in the future),
// messageId assigned when missing, numeric ids turned into strings, writeKey removed. All other
// fields are copied byte for byte. Each message is refused on its own when it breaks a rule,
// also when it is too large as stored or holds what Postgres cannot store; the others stay.
func (r *Request) Normalize(receivedAt time.Time) Result {
	n := &normalizer{
		req:        r,
		receivedAt: receivedAt.UTC(),
		// One arena for every output message: a single allocation in the common case, and never
		// more than OutputBound.
		buf: make([]byte, 0, r.OutputBound()),
	}
	n.receivedAtJSON = appendTimestamp(nil, n.receivedAt)
	res := Result{Accepted: make([]Accepted, 0, len(r.items))}
	for i, item := range r.items {
		start := len(n.buf)
		acc, rej := n.checkedMessage(item)
		if limit := r.endpoint.outputLimit(); rej == nil && len(n.buf) > limit {
			rej = reject(CodeRequestExpansion, "with the batch context merged into every message, the request grows past "+
				strconv.Itoa(limit)+" bytes; send a smaller batch context")
		}
		if rej != nil {
			n.buf = n.buf[:start]
			rej.Index = i
			res.Rejected = append(res.Rejected, *rej)
			continue
		}
		acc.Index = i
		acc.JSON = n.buf[start:len(n.buf):len(n.buf)]
		res.Accepted = append(res.Accepted, acc)
	}
	return res
}

// checkedMessage appends the normalised form of one raw message to n.buf and checks it as it will
// be stored: size, and strings and nesting Postgres can store.
func (n *normalizer) checkedMessage(raw []byte) (Accepted, *Rejection) {
	if len(raw) > MaxMessageBytes {
		return Accepted{}, reject(CodeMessageTooLarge, "a message may hold at most "+strconv.Itoa(MaxMessageBytes)+" bytes")
	}
	start := len(n.buf)
	acc, rej := n.message(raw)
	if rej != nil {
		return acc, rej
	}
	out := n.buf[start:]
	if len(out) > MaxMessageBytes {
		return acc, reject(CodeMessageTooLarge, "with the batch context merged in, the message holds more than "+
			strconv.Itoa(MaxMessageBytes)+" bytes")
	}
	if code, msg := storable(out); code != "" {
		return acc, reject(code, msg)
	}
	return acc, nil
}

type normalizer struct {
	req            *Request
	receivedAt     time.Time
	receivedAtJSON []byte
	buf            []byte
	others         [][]byte // members copied untouched, reused between messages
}

func reject(code, message string) *Rejection { return &Rejection{Code: code, Message: message} }

// message appends the normalised form of one raw message to n.buf.
func (n *normalizer) message(raw []byte) (Accepted, *Rejection) {
	var acc Accepted
	var f [numFields][]byte
	it, ok := newObjectIter(raw)
	if !ok {
		return acc, reject(CodeMessageNotObject, "a message must be a JSON object")
	}
	n.others = n.others[:0]
	for {
		key, value, member, ok := it.next()
		if !ok {
			break
		}
		switch field := fieldOf(key); field {
		case fUnknown:
			n.others = append(n.others, member)
		case fShadow, fWriteKey:
		case fReceivedAt:
			if n.req.endpoint.Destination { // Segment's own receipt time; a client's is ignored
				f[field] = value
			}
		default:
			f[field] = value // the last occurrence wins, as with encoding/json
		}
	}
	if it.err {
		return acc, reject(CodeMessageNotObject, "a message must be a JSON object")
	}

	typ, rej := n.messageType(f[fType])
	if rej != nil {
		return acc, rej
	}
	acc.Type = typ
	ids, rej := checkIDs(typ, &f)
	if rej != nil {
		return acc, rej
	}
	if rej := checkTypes(typ, &f); rej != nil {
		return acc, rej
	}
	if acc.MessageID, rej = messageID(f[fMessageID]); rej != nil {
		return acc, rej
	}
	if typ == TypeTrack {
		acc.Event, _ = stringToken(f[fEvent])
	}
	acc.UserKey = userKey(ids)

	b := n.buf
	b = append(b, `{"type":"`...)
	b = append(b, typ...)
	b = append(b, `","messageId":`...)
	switch {
	case acc.MessageID == "":
		// A message that names its own time is one occurrence: the same bytes sent again are a
		// client retry, so its id comes from its content (Vitally's rule) and the retry dedupes.
		// Without a timestamp, two identical calls are two events, as at Segment.
		if f[fTimestamp] != nil || f[fOriginalTimestamp] != nil {
			acc.MessageID = contentID(raw)
		} else {
			acc.MessageID = randomID()
		}
		b = appendQuoted(b, acc.MessageID)
	case isNumber(f[fMessageID]):
		b = append(b, '"')
		b = append(b, f[fMessageID]...)
		b = append(b, '"')
	default:
		b = append(b, f[fMessageID]...)
	}
	for _, id := range ids {
		if id.value == nil {
			continue
		}
		b = append(b, ',', '"')
		b = append(b, fieldNames[id.field]...)
		b = append(b, '"', ':')
		if id.numeric {
			b = append(b, '"')
			b = append(b, IntegralText(id.value)...)
			b = append(b, '"')
		} else {
			b = append(b, id.value...)
		}
	}
	for _, field := range [...]int{fEvent, fName, fCategory, fTraits, fProperties} {
		if v := f[field]; v != nil && !isNull(v) {
			b = appendMember(b, field, v)
		}
	}
	b = n.appendMergedField(b, fContext, f[fContext], n.req.rootContext)
	b = n.appendMergedField(b, fIntegrations, f[fIntegrations], n.req.rootIntegrations)
	b, acc.Clamped = n.appendTimestamps(b, &f)
	for _, m := range n.others {
		b = append(b, ',')
		b = append(b, m...)
	}
	b = append(b, '}')
	n.buf = b
	return acc, nil
}

func appendMember(b []byte, field int, value []byte) []byte {
	b = append(b, ',', '"')
	b = append(b, fieldNames[field]...)
	b = append(b, '"', ':')
	return append(b, value...)
}

// appendMergedField writes context or integrations: the message's object merged over the
// batch-level one.
func (n *normalizer) appendMergedField(b []byte, field int, own, batch []byte) []byte {
	hasOwn := own != nil && !isNull(own)
	switch {
	case !hasOwn && batch == nil:
		return b
	case !hasOwn:
		return appendMember(b, field, batch)
	case batch == nil:
		return appendMember(b, field, own)
	}
	b = append(b, ',', '"')
	b = append(b, fieldNames[field]...)
	b = append(b, '"', ':')
	return appendMerged(b, batch, own, 0)
}

// userKey is the text of the message's userId, else of its anonymousId (a number's integral
// form, as the workers store it).
func userKey(ids [4]idValue) string {
	for _, id := range ids[:2] { // userId, anonymousId
		switch {
		case id.value == nil:
		case id.numeric:
			return string(IntegralText(id.value))
		default:
			s, _ := stringToken(id.value)
			return s
		}
	}
	return ""
}
