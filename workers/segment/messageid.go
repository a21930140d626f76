package segment

import (
	"crypto/sha256"

	"github.com/google/uuid"
)

// contentID is the messageId of a message sent without one but with a timestamp: a UUID-shaped
// digest of its raw bytes, so a client's retry of the same body gets the same id.
func contentID(raw []byte) string {
	sum := sha256.Sum256(raw)
	return uuid.UUID(sum[:16]).String()
}

// randomID is the messageId of a message sent with neither a messageId nor a timestamp: a random
// (version 4) UUID, as Segment's HTTP API assigns.
func randomID() string { return uuid.NewString() }
