package receiver

import (
	"encoding/base64"
	"net/http"
	"strings"

	"github.com/tallyhq/tally/workers/segment"
	"github.com/tallyhq/tally/workers/source"
)

// headerWriteKey reads the write key from an "Authorization: Basic" header: the username, with
// an empty password. The colon is optional (Segment's docs say encoding without it "might work"),
// so "key:" and "key" both decode to the key. present is false when there is no Basic header
// (none at all, or a Bearer token, which comes with the key in the body).
func headerWriteKey(authorization string) (key string, present bool) {
	scheme, credentials, ok := strings.Cut(strings.TrimSpace(authorization), " ")
	if !ok || !strings.EqualFold(scheme, "Basic") {
		return "", false
	}
	credentials = strings.TrimSpace(credentials)
	decoded, err := base64.StdEncoding.DecodeString(credentials)
	if err != nil {
		if decoded, err = base64.RawStdEncoding.DecodeString(credentials); err != nil {
			return "", true
		}
	}
	username, _, _ := strings.Cut(string(decoded), ":")
	return username, true
}

// bearerToken reads an "Authorization: Bearer" token.
func bearerToken(authorization string) (string, bool) {
	scheme, token, ok := strings.Cut(strings.TrimSpace(authorization), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	return strings.TrimSpace(token), true
}

// matchDestination finds the source of a delivery from Segment, by what its destinations can
// send: the write key as the Basic username or as a Bearer token (custom headers, Webhooks
// Actions), or an X-Signature that one of the source's shared secrets made of the body (classic
// Webhooks; Segment signs only the first event of a batch). The body's writeKey does not count:
// it may be the key of the Segment source the events came from.
func (s *sourceSet) matchDestination(req *http.Request, parsed *segment.Request, body []byte) *source.Config {
	authorization := req.Header.Get("Authorization")
	if key, ok := headerWriteKey(authorization); ok {
		return s.match(key)
	}
	if token, ok := bearerToken(authorization); ok {
		return s.match(token)
	}
	signature := req.Header.Get("X-Signature")
	if signature == "" {
		return nil
	}
	// Every secret of every source is tried, whatever matched, so the timing tells nothing.
	var found *source.Config
	first := parsed.FirstItem()
	for _, c := range s.list {
		whole := c.MatchesSignature(body, signature)
		firstOnly := first != nil && c.MatchesSignature(first, signature)
		if (whole || firstOnly) && found == nil {
			found = c
		}
	}
	return found
}
