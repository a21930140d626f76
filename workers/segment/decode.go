package segment

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
)

// decodeMessage fills m from a normalised message the way json.Unmarshal(data, m) does (keys
// matched case-insensitively, the last of a repeated key wins, null leaves a string or a time as
// it is) with the scanner: validate once, then walk the top-level members, copying the raw
// objects as they are. json.Unmarshal was 12% of the bench's end-to-end CPU. FuzzDecodeMessage
// keeps the two in agreement.
func decodeMessage(data []byte, m *Message) error {
	if !validJSON(data) {
		return errors.New("invalid JSON")
	}
	if isNull(trimValue(data)) {
		return nil // as encoding/json: nothing to set
	}
	it, ok := newObjectIter(data)
	if !ok {
		return errors.New("not a JSON object")
	}
	for {
		rawKey, value, _, more := it.next()
		if !more {
			break
		}
		field, known := messageField(rawKey)
		if !known {
			continue
		}
		if err := field.set(m, value); err != nil {
			return fmt.Errorf("%s: %w", field.name, err)
		}
	}
	if it.err {
		return errors.New("not a JSON object")
	}
	return nil
}

// A messageFieldDef is one field of Message, by its JSON name.
type messageFieldDef struct {
	name string
	set  func(m *Message, value []byte) error
}

func stringField(name string, field func(*Message) *string) messageFieldDef {
	return messageFieldDef{name, func(m *Message, v []byte) error { return decodeString(v, field(m)) }}
}

func rawField(name string, field func(*Message) *json.RawMessage) messageFieldDef {
	return messageFieldDef{name, func(m *Message, v []byte) error {
		*field(m) = append((*field(m))[:0:0], v...)
		return nil
	}}
}

func timeField(name string, field func(*Message) *time.Time) messageFieldDef {
	return messageFieldDef{name, func(m *Message, v []byte) error { return field(m).UnmarshalJSON(v) }}
}

func optionalTimeField(name string, field func(*Message) **time.Time) messageFieldDef {
	return messageFieldDef{name, func(m *Message, v []byte) error {
		if isNull(v) {
			*field(m) = nil
			return nil
		}
		t := new(time.Time)
		if err := t.UnmarshalJSON(v); err != nil {
			return err
		}
		*field(m) = t
		return nil
	}}
}

var messageFields = []messageFieldDef{
	stringField("type", func(m *Message) *string { return &m.Type }),
	stringField("messageId", func(m *Message) *string { return &m.MessageID }),
	stringField("userId", func(m *Message) *string { return &m.UserID }),
	stringField("anonymousId", func(m *Message) *string { return &m.AnonymousID }),
	stringField("groupId", func(m *Message) *string { return &m.GroupID }),
	stringField("previousId", func(m *Message) *string { return &m.PreviousID }),
	stringField("event", func(m *Message) *string { return &m.Event }),
	stringField("name", func(m *Message) *string { return &m.Name }),
	stringField("category", func(m *Message) *string { return &m.Category }),
	rawField("traits", func(m *Message) *json.RawMessage { return &m.Traits }),
	rawField("properties", func(m *Message) *json.RawMessage { return &m.Properties }),
	rawField("context", func(m *Message) *json.RawMessage { return &m.Context }),
	rawField("integrations", func(m *Message) *json.RawMessage { return &m.Integrations }),
	timeField("timestamp", func(m *Message) *time.Time { return &m.Timestamp }),
	optionalTimeField("originalTimestamp", func(m *Message) **time.Time { return &m.OriginalTimestamp }),
	optionalTimeField("sentAt", func(m *Message) **time.Time { return &m.SentAt }),
	timeField("receivedAt", func(m *Message) *time.Time { return &m.ReceivedAt }),
}

// messageField finds the field a raw key token names: the exact name first (nearly always),
// else the first that matches it case-insensitively, as encoding/json does.
func messageField(rawKey []byte) (messageFieldDef, bool) {
	key := rawKey[1 : len(rawKey)-1]
	if bytes.IndexByte(key, '\\') >= 0 {
		key = []byte(keyText(rawKey))
	}
	for _, f := range messageFields {
		if string(key) == f.name {
			return f, true
		}
	}
	for _, f := range messageFields {
		if bytes.EqualFold(key, []byte(f.name)) {
			return f, true
		}
	}
	return messageFieldDef{}, false
}

// decodeString sets *s to the JSON string v; null leaves it as it is. Text with escapes or
// invalid UTF-8 (which encoding/json replaces with U+FFFD) goes through encoding/json.
func decodeString(v []byte, s *string) error {
	if isNull(v) {
		return nil
	}
	if len(v) < 2 || v[0] != '"' {
		return fmt.Errorf("not a string: %.20s", v)
	}
	inner := v[1 : len(v)-1]
	if bytes.IndexByte(inner, '\\') < 0 && utf8.Valid(inner) {
		*s = string(inner)
		return nil
	}
	return json.Unmarshal(v, s)
}
