package segment

import (
	"bytes"
	"strings"
)

// The top-level fields the receiver reads or rewrites. Every other field travels untouched.
const (
	fType = iota
	fMessageID
	fUserID
	fAnonymousID
	fGroupID
	fPreviousID
	fEvent
	fName
	fCategory
	fTraits
	fProperties
	fContext
	fIntegrations
	fTimestamp
	fOriginalTimestamp
	fSentAt
	fReceivedAt
	fWriteKey
	numFields

	fUnknown = -1
	// fShadow is a key that differs from a known field only in letter case. encoding/json (and so
	// ParseNormalized) matches keys case-insensitively, so such a key could override the value
	// the receiver checked; it is dropped.
	fShadow = -2
)

var fieldNames = [numFields]string{
	"type", "messageId", "userId", "anonymousId", "groupId", "previousId", "event", "name",
	"category", "traits", "properties", "context", "integrations", "timestamp",
	"originalTimestamp", "sentAt", "receivedAt", "writeKey",
}

// fieldOf classifies a raw key token (with its quotes).
func fieldOf(rawKey []byte) int {
	if len(rawKey) < 2 {
		return fUnknown
	}
	inner := rawKey[1 : len(rawKey)-1]
	if bytes.IndexByte(inner, '\\') >= 0 {
		return fieldOfText(keyText(rawKey))
	}
	switch string(inner) {
	case "type":
		return fType
	case "messageId":
		return fMessageID
	case "userId":
		return fUserID
	case "anonymousId":
		return fAnonymousID
	case "groupId":
		return fGroupID
	case "previousId":
		return fPreviousID
	case "event":
		return fEvent
	case "name":
		return fName
	case "category":
		return fCategory
	case "traits":
		return fTraits
	case "properties":
		return fProperties
	case "context":
		return fContext
	case "integrations":
		return fIntegrations
	case "timestamp":
		return fTimestamp
	case "originalTimestamp":
		return fOriginalTimestamp
	case "sentAt":
		return fSentAt
	case "receivedAt":
		return fReceivedAt
	case "writeKey":
		return fWriteKey
	}
	return shadowOrUnknown(inner)
}

func fieldOfText(key string) int {
	for i, name := range fieldNames {
		if key == name {
			return i
		}
	}
	return shadowOrUnknown([]byte(key))
}

func shadowOrUnknown(key []byte) int {
	// Unicode folding can make a key of other byte length match (e.g. the Kelvin sign folds to
	// "k"), so compare by folding rather than by length first; the loop is short and runs only
	// for keys that are not Segment fields.
	for _, name := range fieldNames {
		if bytesEqualFoldString(key, name) {
			return fShadow
		}
	}
	return fUnknown
}

func bytesEqualFoldString(b []byte, s string) bool {
	// Fast reject: ASCII-only keys whose length differs cannot fold to s.
	ascii := true
	for _, c := range b {
		if c >= 0x80 {
			ascii = false
			break
		}
	}
	if ascii && len(b) != len(s) {
		return false
	}
	return strings.EqualFold(string(b), s)
}
