package receiver

import (
	"net/http"
	"time"

	"github.com/tallyhq/tally/workers/source"
)

// DefaultReadHeaderTimeout is how long a connection may take to send a request's headers: a
// slowloris sender is cut off after it, whatever it does.
const DefaultReadHeaderTimeout = 10 * time.Second

// NewServer wraps a handler in an http.Server with timeouts that keep slow or idle clients from
// holding connections forever. WriteTimeout leaves room for the publish deadline.
func NewServer(addr string, handler http.Handler, publishTimeout time.Duration) *http.Server {
	if publishTimeout <= 0 {
		publishTimeout = source.DefaultPublishTimeout
	}
	return &http.Server{
		Addr:              addr,
		Handler:           handler,
		ReadHeaderTimeout: DefaultReadHeaderTimeout,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30*time.Second + publishTimeout,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
}
