package receiver

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/tallyhq/tally/workers/segment"
)

// Error bodies have the shape Segment clients parse: analytics-python reads code and message,
// analytics-java reads success.
type errorBody struct {
	Success bool   `json:"success"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

// successBody reports a request some of whose messages were rejected; a request without
// rejections gets the plain {"success":true}.
type successBody struct {
	Success  bool                `json:"success"`
	Accepted int                 `json:"accepted"`
	Ignored  int                 `json:"ignored,omitempty"`
	Rejected []segment.Rejection `json:"rejected"`
}

var plainSuccess = []byte(`{"success":true}` + "\n")

func writeJSON(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func writeError(w http.ResponseWriter, status int, code, message string) {
	body, _ := json.Marshal(errorBody{Code: code, Message: message})
	writeJSON(w, status, append(body, '\n'))
}

func writeSuccess(w http.ResponseWriter, accepted, ignored int, rejected []segment.Rejection) {
	if len(rejected) == 0 {
		writeJSON(w, http.StatusOK, plainSuccess)
		return
	}
	body, _ := json.Marshal(successBody{Success: true, Accepted: accepted, Ignored: ignored, Rejected: rejected})
	writeJSON(w, http.StatusOK, append(body, '\n'))
}
