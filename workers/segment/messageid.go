package segment

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
)

// contentID is the messageId of a message sent without one but with a timestamp: a UUID-shaped
// digest of its raw bytes, so a client's retry of the same body gets the same id.
func contentID(raw []byte) string {
	sum := sha256.Sum256(raw)
	return formatUUID(sum[:16])
}

// idSource hands out random (version 4) UUIDs for messages that arrive without a messageId, as
// Segment's HTTP API does. It reads randomness for several ids at a time.
type idSource struct {
	pool []byte
}

func (s *idSource) next() string {
	if len(s.pool) < 16 {
		s.pool = make([]byte, 16*32)
		rand.Read(s.pool) // never fails on supported platforms (Go 1.24+)
	}
	u := s.pool[:16]
	s.pool = s.pool[16:]
	u[6] = u[6]&0x0f | 0x40 // version 4
	u[8] = u[8]&0x3f | 0x80 // RFC 4122 variant
	return formatUUID(u)
}

func formatUUID(u []byte) string {
	var out [36]byte
	hex.Encode(out[0:8], u[0:4])
	out[8] = '-'
	hex.Encode(out[9:13], u[4:6])
	out[13] = '-'
	hex.Encode(out[14:18], u[6:8])
	out[18] = '-'
	hex.Encode(out[19:23], u[8:10])
	out[23] = '-'
	hex.Encode(out[24:], u[10:16])
	return string(out[:])
}
