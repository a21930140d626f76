package segment

import (
	"bytes"
	"encoding/json"
)

// The helpers below walk JSON that json.Valid has already accepted. They only find where values
// start and end, so the hot path can copy untouched fields as raw bytes instead of decoding whole
// messages into maps and encoding them again. On input that is not well formed they report
// failure (-1 or ok=false) rather than panicking.

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func skipSpace(d []byte, i int) int {
	for i < len(d) && isSpace(d[i]) {
		i++
	}
	return i
}

// skipString returns the index just after the string token starting at d[i] == '"'.
func skipString(d []byte, i int) int {
	for i++; i < len(d); i++ {
		switch d[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return -1
}

// skipValue returns the index just after the value starting at d[i], or -1.
func skipValue(d []byte, i int) int {
	if i >= len(d) {
		return -1
	}
	switch d[i] {
	case '"':
		return skipString(d, i)
	case '{', '[':
		depth := 0
		for ; i < len(d); i++ {
			switch d[i] {
			case '"':
				i = skipString(d, i)
				if i < 0 {
					return -1
				}
				i-- // the loop's i++ lands just after the string
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
		}
		return -1
	default: // number, true, false, null
		start := i
		for i < len(d) {
			switch d[i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				if i == start {
					return -1
				}
				return i
			}
			i++
		}
		if i == start {
			return -1
		}
		return i
	}
}

// trimValue strips surrounding whitespace from a raw value.
func trimValue(v []byte) []byte {
	start, end := 0, len(v)
	for start < end && isSpace(v[start]) {
		start++
	}
	for end > start && isSpace(v[end-1]) {
		end--
	}
	return v[start:end]
}

// objectIter walks the members of one JSON object.
type objectIter struct {
	d   []byte
	i   int
	err bool
}

// newObjectIter starts at an object value (leading whitespace allowed); ok is false when the
// value is not an object.
func newObjectIter(obj []byte) (objectIter, bool) {
	i := skipSpace(obj, 0)
	if i >= len(obj) || obj[i] != '{' {
		return objectIter{}, false
	}
	return objectIter{d: obj, i: i + 1}, true
}

// next returns the raw key token (with quotes), the value, and the span of the whole member from
// the key's opening quote to the end of the value.
func (it *objectIter) next() (key, value, member []byte, ok bool) {
	d := it.d
	i := skipSpace(d, it.i)
	if i < len(d) && d[i] == ',' {
		i = skipSpace(d, i+1)
	}
	if i >= len(d) || d[i] != '"' {
		if i >= len(d) || d[i] != '}' {
			it.err = true
		}
		return nil, nil, nil, false
	}
	keyStart := i
	keyEnd := skipString(d, i)
	if keyEnd < 0 {
		it.err = true
		return nil, nil, nil, false
	}
	i = skipSpace(d, keyEnd)
	if i >= len(d) || d[i] != ':' {
		it.err = true
		return nil, nil, nil, false
	}
	valStart := skipSpace(d, i+1)
	valEnd := skipValue(d, valStart)
	if valEnd < 0 {
		it.err = true
		return nil, nil, nil, false
	}
	it.i = valEnd
	return d[keyStart:keyEnd], d[valStart:valEnd], d[keyStart:valEnd], true
}

// arrayIter walks the elements of one JSON array.
type arrayIter struct {
	d   []byte
	i   int
	err bool
}

func newArrayIter(arr []byte) (arrayIter, bool) {
	i := skipSpace(arr, 0)
	if i >= len(arr) || arr[i] != '[' {
		return arrayIter{}, false
	}
	return arrayIter{d: arr, i: i + 1}, true
}

func (it *arrayIter) next() ([]byte, bool) {
	d := it.d
	i := skipSpace(d, it.i)
	if i < len(d) && d[i] == ',' {
		i = skipSpace(d, i+1)
	}
	if i >= len(d) || d[i] == ']' {
		if i >= len(d) {
			it.err = true
		}
		return nil, false
	}
	end := skipValue(d, i)
	if end < 0 {
		it.err = true
		return nil, false
	}
	it.i = end
	return d[i:end], true
}

// stringToken reports whether v is a JSON string and returns its decoded text. Tokens without
// escapes (nearly all) are sliced, not decoded.
func stringToken(v []byte) (string, bool) {
	if len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
		return "", false
	}
	inner := v[1 : len(v)-1]
	for _, c := range inner {
		if c == '\\' {
			var s string
			if err := json.Unmarshal(v, &s); err != nil {
				return "", false
			}
			return s, true
		}
	}
	return string(inner), true
}

// keyText is the decoded text of a raw key token.
func keyText(rawKey []byte) string {
	s, _ := stringToken(rawKey)
	return s
}

func isNull(v []byte) bool { return len(v) == 4 && string(v) == "null" }

func isNumber(v []byte) bool { return len(v) > 0 && (v[0] == '-' || (v[0] >= '0' && v[0] <= '9')) }

func isObject(v []byte) bool { return len(v) > 0 && v[0] == '{' }

// appendQuoted appends s as a JSON string.
func appendQuoted(buf []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= 0x80 {
			b, _ := json.Marshal(s) // rare: needs escaping or UTF-8 checks
			return append(buf, b...)
		}
	}
	buf = append(buf, '"')
	buf = append(buf, s...)
	return append(buf, '"')
}

// Member is the value of key among the top-level members of the JSON object obj, without
// decoding the others: the last one when the key repeats, as encoding/json decodes it. ok is
// false when obj is not an object or has no such member. The workers read two keys of a
// message's context this way: decoding the whole context into a map cost 7% of the bench's
// end-to-end CPU.
func Member(obj []byte, key string) (json.RawMessage, bool) {
	it, ok := newObjectIter(obj)
	if !ok {
		return nil, false
	}
	var found json.RawMessage
	for {
		rawKey, value, _, more := it.next()
		if !more {
			break
		}
		if keyMatches(rawKey, key) {
			found = value
		}
	}
	return found, found != nil
}

// keyMatches reports whether the raw key token decodes to key; a token without escapes is
// compared as it is.
func keyMatches(rawKey []byte, key string) bool {
	if len(rawKey) == len(key)+2 && string(rawKey[1:len(rawKey)-1]) == key {
		return true
	}
	return bytes.IndexByte(rawKey, '\\') >= 0 && keyText(rawKey) == key
}
