package receiver

import (
	"net/http"
	"time"

	"github.com/tallyhq/tally/workers/source"
)

// NewServer wraps a handler in an http.Server with timeouts that keep slow or idle clients from
// holding connections forever. WriteTimeout leaves room for the publish deadline.
func NewServer(addr string, handler http.Handler, publishTimeout time.Duration) *http.Server {
	if publishTimeout <= 0 {
		publishTimeout = source.DefaultPublishTimeout
	}
	return &http.Server{
		Addr:              addr,
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30*time.Second + publishTimeout,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
}
