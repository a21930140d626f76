package receiver

import "net/http"

// Browsers send events cross-origin, and analytics-next adds Authorization and X-Retry-Count
// headers, which makes them ask first with a preflight OPTIONS request.
const corsAllowHeaders = "Content-Type, Authorization, X-Retry-Count"

func allowAnyOrigin(h http.Header) { h.Set("Access-Control-Allow-Origin", "*") }

func preflight(w http.ResponseWriter, _ *http.Request) {
	h := w.Header()
	allowAnyOrigin(h)
	h.Set("Access-Control-Allow-Methods", "POST, OPTIONS")
	h.Set("Access-Control-Allow-Headers", corsAllowHeaders)
	h.Set("Access-Control-Max-Age", "86400")
	w.WriteHeader(http.StatusNoContent)
}
