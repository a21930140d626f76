package worker

import (
	"bytes"
	"encoding/json"
	"strings"

	"github.com/tallyhq/tally/workers/segment"
)

// idFromJSON reads an id that may be a JSON string or a JSON number (Vitally's own unlink example
// sends a numeric company id) and returns it as the string the tables key on: a string as sent,
// a number in the form the receiver gives numeric ids (segment.IntegralText), so 12345, 12345.0 and
// "12345" name one account wherever they arrive.
func idFromJSON(raw json.RawMessage) (string, bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "", false
	}
	switch raw[0] {
	case '"':
		var s string
		if json.Unmarshal(raw, &s) != nil || strings.TrimSpace(s) == "" {
			return "", false
		}
		return s, true
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		var n json.Number
		if json.Unmarshal(raw, &n) != nil {
			return "", false
		}
		return string(segment.IntegralText([]byte(n))), true
	}
	return "", false
}

// object decodes a JSON object into its top-level keys; anything else (absent, null, an array)
// is an empty object.
func object(raw json.RawMessage) map[string]json.RawMessage {
	var m map[string]json.RawMessage
	if len(raw) == 0 || json.Unmarshal(raw, &m) != nil {
		return nil
	}
	return m
}

// pathValue reads key from obj: the key itself when obj has it and it holds an id (a property
// may be named "account.id"), else the dotted path through nested objects ("account.id" reads
// obj.account.id).
func pathValue(obj map[string]json.RawMessage, key string) (string, bool) {
	if id, ok := idFromJSON(obj[key]); ok {
		return id, true
	}
	parts := strings.Split(key, ".")
	if len(parts) < 2 {
		return "", false
	}
	for _, p := range parts[:len(parts)-1] {
		obj = object(obj[p])
	}
	return idFromJSON(obj[parts[len(parts)-1]])
}

// nonEmptyString returns raw as a string when it is a non-blank JSON string.
func nonEmptyString(raw json.RawMessage) (string, bool) {
	var s string
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &s) != nil || strings.TrimSpace(s) == "" {
		return "", false
	}
	return s, true
}

// isTrue reports whether raw is the JSON literal true.
func isTrue(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "true" }

// isTrueOrTrueString reports whether raw is true or "true": some clients send flags as strings.
func isTrueOrTrueString(raw json.RawMessage) bool {
	return isTrue(raw) || string(bytes.TrimSpace(raw)) == `"true"`
}

// isFalse reports whether raw is the JSON literal false.
func isFalse(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "false" }
