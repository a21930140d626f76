package receiver

import (
	"encoding/json"
	"net/http"
	"strings"
)

// SettingsPath is where analytics.js (@segment/analytics-next) loads a source's settings before
// it sends anything; Segment serves it from its CDN. A page that loads analytics.js with cdnURL
// set to Tally gets settings pointing the SDK's Segment.io integration back at Tally, so it never
// talks to Segment.
const SettingsPath = "/v1/projects/{writeKey}/settings"

// settings answers a known write key with the minimal settings object analytics.js needs: the
// Segment.io integration with Tally as its API host, no destinations or remote plugins, and the
// SDK's own usage metrics off (they would go to Segment). An unknown key is a 404, as on Segment's
// CDN: write keys are public (every page carries one), so this tells nothing a page does not.
func (r *Receiver) settings(w http.ResponseWriter, req *http.Request) {
	allowAnyOrigin(w.Header())
	key := req.PathValue("writeKey")
	if r.sources.Load().match(key) == nil {
		r.metrics.requests.WithLabelValues("settings", "404").Inc()
		writeError(w, http.StatusNotFound, "unknown_write_key", "no source has this write key")
		return
	}
	body, _ := json.Marshal(map[string]any{
		"integrations": map[string]any{
			"Segment.io": map[string]any{
				"apiKey":                key,
				"apiHost":               req.Host + "/v1",
				"protocol":              requestScheme(req),
				"unbundledIntegrations": []string{},
				"addBundledMetadata":    true,
				"maybeBundledConfigIds": map[string]any{},
			},
		},
		"plan":                 map[string]any{"track": map[string]any{"__default": map[string]any{"enabled": true, "integrations": map[string]any{}}}},
		"edgeFunction":         map[string]any{},
		"analyticsNextEnabled": true,
		"middlewareSettings":   map[string]any{},
		"enabledMiddleware":    map[string]any{},
		"metrics":              map[string]any{"sampleRate": 0},
		"remotePlugins":        []any{},
	})
	// Short-lived in caches: a source's keys may change.
	w.Header().Set("Cache-Control", "public, max-age=60")
	r.metrics.requests.WithLabelValues("settings", "200").Inc()
	writeJSON(w, http.StatusOK, append(body, '\n'))
}

// requestScheme is the scheme the browser used: https behind a TLS-terminating ingress (which
// says so in X-Forwarded-Proto) or when the receiver serves TLS itself.
func requestScheme(req *http.Request) string {
	if req.TLS != nil || strings.EqualFold(req.Header.Get("X-Forwarded-Proto"), "https") {
		return "https"
	}
	return "http"
}
