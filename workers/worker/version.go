package worker

import (
	"time"

	"github.com/tallyhq/tally/workers/segment"
)

// versionLayout has a fixed width, so versions sort byte-wise in event-time order (years 0-9999).
const versionLayout = "2006-01-02T15:04:05.000000000Z"

// versionOf orders messages by event timestamp, then by messageId: a total order every worker
// computes the same way, which is what makes "newest wins" independent of arrival order.
func versionOf(m *segment.Message) string {
	return m.Timestamp.UTC().Format(versionLayout) + "|" + m.MessageID
}

func minTime(a, b time.Time) time.Time {
	if a.IsZero() || b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
