package worker

import (
	"context"
	"net"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// connLimit bounds the Postgres connections of a pool worker across all its tenant logins: a
// thousand members starting at once would otherwise open a thousand connections, past the
// server's max_connections. Each connection holds a token from dial to close. A dial that finds
// none left has the idle connections of every login closed (evict), so the tokens go where the
// work is instead of waiting out the idle timeout.
type connLimit struct {
	tokens chan struct{}
	evict  func()
	// evicting lets one waiting dial evict at a time, at most every evictEvery: a thousand
	// members starting at once wait together, and each eviction visits every login's pool.
	evicting  sync.Mutex
	lastEvict time.Time
}

func newConnLimit(n int, evict func()) *connLimit {
	return &connLimit{tokens: make(chan struct{}, max(n, 1)), evict: evict}
}

// dial wraps a dial function so that each connection holds a token.
func (l *connLimit) dial(next pgconn.DialFunc) pgconn.DialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if err := l.acquire(ctx); err != nil {
			return nil, err
		}
		c, err := next(ctx, network, addr)
		if err != nil {
			<-l.tokens
			return nil, err
		}
		return &limitedConn{Conn: c, release: sync.OnceFunc(func() { <-l.tokens })}, nil
	}
}

// evictEvery is how often a waiting dial has idle connections closed again.
const evictEvery = 100 * time.Millisecond

func (l *connLimit) acquire(ctx context.Context) error {
	select {
	case l.tokens <- struct{}{}:
		return nil
	default:
	}
	t := time.NewTicker(evictEvery)
	defer t.Stop()
	for {
		l.tryEvict()
		select {
		case l.tokens <- struct{}{}:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

func (l *connLimit) tryEvict() {
	if !l.evicting.TryLock() {
		return
	}
	defer l.evicting.Unlock()
	if time.Since(l.lastEvict) < evictEvery {
		return
	}
	l.evict()
	l.lastEvict = time.Now()
}

// limitedConn gives its token back when closed.
type limitedConn struct {
	net.Conn
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
}
