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

// maxUnnamedSignatureSecrets bounds the shared secrets a signed delivery to the bare destination
// path is checked against. Each check is an HMAC of the whole body (11 ms for 16 MB here), so
// trying a pool's thousand members' secrets would let anyone burn 11 s of CPU with one request;
// past this bound the delivery URL must name its source (DestinationPath/<namespace>/<name>).
const maxUnnamedSignatureSecrets = 16

// matchDestination finds the source of a delivery from Segment, by what its destinations can
// send: the write key as the Basic username or as a Bearer token (custom headers, Webhooks
// Actions), or an X-Signature that one of the source's shared secrets made of the body (classic
// Webhooks; Segment signs only the first event of a batch). The body's writeKey does not count:
// it may be the key of the Segment source the events came from. When the path names a source
// (DestinationPath/<namespace>/<name>), the credentials must be that source's.
func (s *sourceSet) matchDestination(req *http.Request, parsed *segment.Request, body []byte) *source.Config {
	candidates := s.list
	var named *source.Config
	if name := req.PathValue("name"); name != "" {
		if named = s.byName[req.PathValue("namespace")+"/"+name]; named == nil {
			return nil
		}
		candidates = []*source.Config{named}
	}
	only := func(c *source.Config) *source.Config {
		if named != nil && c != named {
			return nil
		}
		return c
	}
	authorization := req.Header.Get("Authorization")
	if key, ok := headerWriteKey(authorization); ok {
		return only(s.match(key))
	}
	if token, ok := bearerToken(authorization); ok {
		return only(s.match(token))
	}
	signature := req.Header.Get("X-Signature")
	if signature == "" || (named == nil && s.sharedSecrets > maxUnnamedSignatureSecrets) {
		return nil
	}
	// Every secret of every candidate is tried, whatever matched, so the timing tells nothing.
	var found *source.Config
	first := parsed.FirstItem()
	for _, c := range candidates {
		whole := c.MatchesSignature(body, signature)
		firstOnly := first != nil && c.MatchesSignature(first, signature)
		if (whole || firstOnly) && found == nil {
			found = c
		}
	}
	return found
}
