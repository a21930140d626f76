package segment

import (
	"bytes"
	"math"
	"strconv"
	"unicode/utf8"
)

// messageType resolves the message's type from its body and the endpoint.
func (n *normalizer) messageType(v []byte) (string, *Rejection) {
	pathType := n.req.endpoint.Type
	if v == nil || isNull(v) {
		if pathType != "" {
			return pathType, nil
		}
		return "", reject(CodeTypeRequired, "a batch message needs a type")
	}
	if s, ok := knownType(v); ok {
		if pathType != "" && s != pathType {
			return "", reject(CodeTypeMismatch, "type "+quoteForMessage(s)+" was sent to the "+pathType+" endpoint")
		}
		return s, nil
	}
	text, isString := stringToken(v)
	if !isString {
		return "", reject(CodeTypeInvalid, "type must be a string")
	}
	if text == TypeDelete {
		if n.req.endpoint.Destination {
			return TypeDelete, nil
		}
		return "", reject(CodeDeleteNotHere, "user-deletion requests (type delete) are taken only from Segment's destination route, /v1/segment")
	}
	return "", reject(CodeTypeInvalid, "unknown type "+quoteForMessage(text))
}

// knownType maps a raw type token to its constant; the common unescaped token costs no
// allocation.
func knownType(v []byte) (string, bool) {
	if len(v) >= 2 && v[0] == '"' && bytes.IndexByte(v, '\\') < 0 {
		switch string(v[1 : len(v)-1]) {
		case TypeIdentify:
			return TypeIdentify, true
		case TypeTrack:
			return TypeTrack, true
		case TypeGroup:
			return TypeGroup, true
		case TypePage:
			return TypePage, true
		case TypeScreen:
			return TypeScreen, true
		case TypeAlias:
			return TypeAlias, true
		}
		return "", false
	}
	s, ok := stringToken(v)
	if !ok {
		return "", false
	}
	switch s {
	case TypeIdentify, TypeTrack, TypeGroup, TypePage, TypeScreen, TypeAlias:
		return s, true
	}
	return "", false
}

// idValue is one id field as it will be written.
type idValue struct {
	field   int
	value   []byte // raw token; nil when absent
	numeric bool   // a JSON number, written as a string
}

// checkIDs applies Segment's id rules: every message names a user (userId or anonymousId), a
// group call a groupId, an alias call both userId and previousId. Numbers are accepted as ids and
// become strings; an empty string counts as absent.
func checkIDs(typ string, f *[numFields][]byte) ([4]idValue, *Rejection) {
	ids := [4]idValue{{field: fUserID}, {field: fAnonymousID}, {field: fGroupID}, {field: fPreviousID}}
	for i := range ids {
		v := f[ids[i].field]
		switch {
		case v == nil || isNull(v) || string(v) == `""`:
		case v[0] == '"':
			ids[i].value = v
		case isNumber(v):
			ids[i].value, ids[i].numeric = v, true
		default:
			return ids, reject(CodeIDNotString, fieldNames[ids[i].field]+" must be a string or a number")
		}
	}
	userID, anonymousID, groupID, previousID := ids[0].value, ids[1].value, ids[2].value, ids[3].value
	switch {
	case typ == TypeAlias && userID == nil:
		return ids, reject(CodeUserIDRequired, "an alias call needs a userId")
	case typ == TypeDelete && userID == nil:
		return ids, reject(CodeUserIDRequired, "a user-deletion request needs a userId")
	case typ == TypeAlias && previousID == nil:
		return ids, reject(CodePreviousIDRequired, "an alias call needs a previousId")
	case typ != TypeAlias && userID == nil && anonymousID == nil:
		return ids, reject(CodeIDRequired, "a message needs a userId or an anonymousId")
	case typ == TypeGroup && groupID == nil:
		return ids, reject(CodeGroupIDRequired, "a group call needs a groupId")
	}
	return ids, nil
}

// checkTypes checks the fields the workers decode: names are strings, payloads are objects.
func checkTypes(typ string, f *[numFields][]byte) *Rejection {
	if v := f[fEvent]; typ == TypeTrack && (v == nil || isNull(v) || string(v) == `""`) {
		return reject(CodeEventNotDefined, "a track call needs an event name")
	}
	mustBeStrings := [...]struct {
		field int
		code  string
	}{{fEvent, CodeEventNotString}, {fName, CodeNameNotString}, {fCategory, CodeCategoryNotString}}
	for _, s := range mustBeStrings {
		if v := f[s.field]; v != nil && !isNull(v) && v[0] != '"' {
			return reject(s.code, fieldNames[s.field]+" must be a string")
		}
	}
	objects := [...]struct {
		field int
		code  string
	}{
		{fTraits, CodeTraitsNotObject}, {fProperties, CodePropertiesNotObject},
		{fContext, CodeContextNotObject}, {fIntegrations, CodeIntegrationsNotObject},
	}
	for _, o := range objects {
		if v := f[o.field]; v != nil && !isNull(v) && !isObject(v) {
			return reject(o.code, fieldNames[o.field]+" must be an object")
		}
	}
	return nil
}

// messageID returns the message's own id ("" when one must be assigned).
func messageID(v []byte) (string, *Rejection) {
	if v == nil || isNull(v) {
		return "", nil
	}
	if isNumber(v) {
		return string(v), nil
	}
	s, ok := stringToken(v)
	if !ok {
		return "", reject(CodeMessageIDNotString, "messageId must be a string")
	}
	if !utf8.ValidString(s) {
		return "", reject(CodeMessageIDInvalid, "messageId is not valid UTF-8")
	}
	if utf8.RuneCountInString(s) > MaxMessageIDLength {
		return "", reject(CodeMessageIDTooLong, "messageId is longer than 100 characters")
	}
	for i := 0; i < len(s); i++ {
		// It becomes the Nats-Msg-Id header, where control characters would break the framing.
		if s[i] < 0x20 || s[i] == 0x7f {
			return "", reject(CodeMessageIDInvalid, "messageId contains control characters")
		}
	}
	return s, nil
}

// quoteForMessage shortens a client value for an error message.
func quoteForMessage(s string) string {
	if len(s) > 40 {
		s = s[:40] + "…"
	}
	return `"` + s + `"`
}

// IntegralText is the plain decimal form of a JSON number that holds an integer (12345.0 and
// 1.2345e4 give 12345), so an id sent as any of them names one account; other numbers keep their
// text. The receiver applies it to numeric ids (it sees they were numbers, not strings), the
// worker to the numeric ids inside traits, context and properties.
func IntegralText(raw []byte) []byte {
	if !bytes.ContainsAny(raw, ".eE") {
		return raw
	}
	f, err := strconv.ParseFloat(string(raw), 64)
	if err != nil || f != math.Trunc(f) || math.Abs(f) >= 1<<53 {
		return raw
	}
	return strconv.AppendInt(nil, int64(f), 10)
}
