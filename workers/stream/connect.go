package stream

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// Connect opens the NATS connection every Tally process uses: it starts even while NATS is down
// (readiness reports it; nothing crash-loops), reconnects forever, and logs disconnects and
// reconnects. creds is an optional credentials file; extra options come last and win.
func Connect(url, creds, name string, log *slog.Logger, extra ...nats.Option) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { log.Warn("nats disconnected", "error", err) }),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("nats reconnected", "server", c.ConnectedUrlRedacted()) }),
	}
	if creds != "" {
		opts = append(opts, nats.UserCredentials(creds))
	}
	nc, err := nats.Connect(url, append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("nats: %w", err)
	}
	return nc, nil
}

// Drain flushes what the connection still buffers (acks, publishes) and waits until it is
// closed, or until ctx ends (then it closes the connection and returns ctx's error): nc.Drain
// alone returns at once, and a process exiting right after it would drop the last acks.
func Drain(ctx context.Context, nc *nats.Conn) error {
	closed := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if err := nc.Drain(); err != nil {
		nc.Close() // not connected: nothing left to flush
		return nil
	}
	select {
	case <-closed:
		return nil
	case <-ctx.Done():
		nc.Close()
		return ctx.Err()
	}
}

// RedactURL replaces the password of every server in a comma-separated NATS URL list with
// "xxxxx", so a URL can go into logs, status messages and Events. A token given as the user part
// (nats://token@host) is redacted too. Anything that does not parse as a URL is replaced whole.
func RedactURL(servers string) string {
	parts := strings.Split(servers, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if !strings.Contains(p, "@") {
			parts[i] = p
			continue
		}
		u, err := url.Parse(p)
		if err != nil || u.User == nil {
			parts[i] = "<unparseable URL redacted>"
			continue
		}
		if _, hasPassword := u.User.Password(); !hasPassword {
			// nats://TOKEN@host: the user part is the secret.
			u.User = url.User("xxxxx")
		}
		parts[i] = u.Redacted()
	}
	return strings.Join(parts, ",")
}
