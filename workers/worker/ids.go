package worker

import (
	"bytes"
	"encoding/json"
	"math"
	"strconv"
	"strings"
)

// idFromJSON reads an id that may be a JSON string or a JSON number (Vitally's own unlink example
// sends a numeric company id) and returns it as the string the tables key on. Integers, however
// they were written (12345, 12345.0, 1.2345e4), give their plain decimal form, so the same account
// is found whether a client sent "12345" or 12345.
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
		if i, err := n.Int64(); err == nil {
			return strconv.FormatInt(i, 10), true
		}
		// 12345.0 or 1.2345e4: integral values within float64's exact range read as integers.
		if f, err := n.Float64(); err == nil && f == math.Trunc(f) && math.Abs(f) < 1<<53 {
			return strconv.FormatInt(int64(f), 10), true
		}
		return n.String(), true
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

// isFalse reports whether raw is the JSON literal false.
func isFalse(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "false" }
