package receiver

import (
	"encoding/base64"
	"strings"
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
