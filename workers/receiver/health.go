package receiver

import "net/http"

// healthz answers while the process can serve HTTP at all.
func healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("ok\n"))
}

// readyz answers 200 only while the NATS connection is up (without it every request would get a
// 503, so the pod should leave the Service's endpoints instead) and the receiver is not draining.
func (r *Receiver) readyz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if r.draining.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("shutting down\n"))
		return
	}
	if !r.opts.Conn.IsConnected() {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("nats: not connected\n"))
		return
	}
	_, _ = w.Write([]byte("ok\n"))
}
