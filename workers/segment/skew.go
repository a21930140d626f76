package segment

import "time"

// appendTimestamps writes timestamp, originalTimestamp, sentAt and receivedAt. The client's time
// of the call (originalTimestamp, or the timestamp it set) is shifted by the client's clock skew,
// measured as sentAt against our receivedAt: timestamp = receivedAt − (sentAt − originalTimestamp).
// A timestamp more than FutureTolerance after receivedAt is a lie that would win every later
// update: it is clamped to receivedAt (clamped is set), and the client's value stays in
// originalTimestamp.
func (n *normalizer) appendTimestamps(b []byte, f *[numFields][]byte) (_ []byte, clamped bool) {
	given, hasGiven := parseTimestampValue(f[fTimestamp])
	original, hasOriginal := parseTimestampValue(f[fOriginalTimestamp])
	if !hasOriginal {
		original, hasOriginal = given, hasGiven
	}
	sentAt, hasSentAt := parseTimestampValue(f[fSentAt])
	if !hasSentAt {
		sentAt, hasSentAt = n.req.rootSentAt, n.req.hasRootSentAt
	}
	receivedAt, receivedAtJSON := n.receivedAt, n.receivedAtJSON
	timestamp := n.receivedAt
	if n.req.endpoint.Destination {
		// Segment computed timestamp already, and a replay resends it as it was: keep it, and
		// Segment's receivedAt with it. Only a message without one falls back to the times it has.
		if t, ok := parseTimestampValue(f[fReceivedAt]); ok {
			receivedAt, receivedAtJSON = t, appendTimestamp(nil, t)
		}
		switch {
		case hasGiven:
			timestamp = given
		case hasOriginal:
			timestamp = original
		default:
			timestamp = receivedAt
		}
	} else {
		switch {
		case hasOriginal && hasSentAt:
			timestamp = correct(n.receivedAt, sentAt, original)
		case hasGiven:
			timestamp = given
		case hasOriginal:
			timestamp = original
		}
	}
	if timestamp.Sub(n.receivedAt) > FutureTolerance {
		timestamp, clamped = n.receivedAt, true
	}
	b = append(b, `,"timestamp":`...)
	b = appendTimestamp(b, timestamp)
	if hasOriginal {
		b = append(b, `,"originalTimestamp":`...)
		b = appendTimestamp(b, original)
	}
	if hasSentAt {
		b = append(b, `,"sentAt":`...)
		b = appendTimestamp(b, sentAt)
	}
	b = append(b, `,"receivedAt":`...)
	return append(b, receivedAtJSON...), clamped
}

// correct computes receivedAt − (sentAt − original) in whole seconds and nanoseconds, because a
// time.Duration saturates at ±292 years. A result outside the years RFC 3339 can write falls
// back to the client's time.
func correct(receivedAt, sentAt, original time.Time) time.Time {
	sec := receivedAt.Unix() - sentAt.Unix() + original.Unix()
	nsec := int64(receivedAt.Nanosecond()) - int64(sentAt.Nanosecond()) + int64(original.Nanosecond())
	t := time.Unix(sec, nsec).UTC()
	if !representable(t) || t.IsZero() {
		return original
	}
	return t
}
