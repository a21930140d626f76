package receiver

import (
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/tallyhq/tally/workers/source"
)

// codeRateLimited refuses a request of a source past its rate limit.
const codeRateLimited = "rate_limited"

// rateLimits keeps one token bucket per rate-limited source, by name, across source sets: a key
// rotation or a pool member joining must not refill every other source's bucket.
type rateLimits struct {
	mu     sync.Mutex
	byName map[string]*rate.Limiter
}

// attach gives set the buckets of its rate-limited sources: a source it already knew keeps its
// bucket (with the new limit and burst), a new one gets a full bucket, and the buckets of sources
// that left or lost their limit are dropped.
func (l *rateLimits) attach(set *sourceSet) {
	l.mu.Lock()
	defer l.mu.Unlock()
	next := make(map[string]*rate.Limiter)
	for _, c := range set.list {
		if c.RateLimit == nil {
			continue
		}
		every, burst := rate.Limit(c.RateLimit.EventsPerSecond), c.RateLimit.BurstOrDefault()
		lim := l.byName[c.String()]
		if lim == nil {
			lim = rate.NewLimiter(every, burst)
		} else if lim.Limit() != every || lim.Burst() != burst {
			lim.SetLimit(every)
			lim.SetBurst(burst)
		}
		next[c.String()] = lim
		if set.limiters == nil {
			set.limiters = make(map[*source.Config]*rate.Limiter)
		}
		set.limiters[c] = lim
	}
	l.byName = next
}

// emptyFor is how long src's bucket stays empty (below one token) from now; 0 when src may send.
func (s *sourceSet) emptyFor(src *source.Config, now time.Time) time.Duration {
	lim := s.limiters[src]
	if lim == nil {
		return 0
	}
	tokens := lim.TokensAt(now)
	if tokens >= 1 {
		return 0
	}
	return time.Duration((1 - tokens) / float64(lim.Limit()) * float64(time.Second))
}

// admitRate takes one token per accepted message from each source's bucket, or, when one of the
// buckets is empty, takes nothing and says how long that bucket stays empty. A request is
// admitted whole or not at all (a 429 stores nothing); a batch larger than what is left puts the
// bucket in debt, which the next requests wait out, rather than being refused forever.
func (s *sourceSet) admitRate(perSource map[*source.Config]*sourceCounts, now time.Time) (*source.Config, time.Duration) {
	if s.limiters == nil {
		return nil, 0
	}
	for src, c := range perSource {
		if c.accepted == 0 {
			continue
		}
		if wait := s.emptyFor(src, now); wait > 0 {
			return src, wait
		}
	}
	for src, c := range perSource {
		lim := s.limiters[src]
		if lim == nil {
			continue
		}
		// ReserveN refuses more than the burst at once: take it in burst-sized pieces.
		for n := c.accepted; n > 0; {
			k := min(n, lim.Burst())
			lim.ReserveN(now, k)
			n -= k
		}
	}
	return nil, 0
}

// rateLimited answers 429 with the seconds until the source may send again, in Retry-After (every
// Segment client and Segment's own delivery honour or at least retry it) and X-RateLimit-Reset.
func rateLimited(w http.ResponseWriter, src *source.Config, wait time.Duration) outcome {
	seconds := strconv.Itoa(max(1, int(math.Ceil(wait.Seconds()))))
	w.Header().Set("Retry-After", seconds)
	w.Header().Set("X-RateLimit-Reset", seconds)
	writeError(w, http.StatusTooManyRequests, codeRateLimited, "source "+src.String()+" is over its rate limit of "+
		strconv.Itoa(src.RateLimit.EventsPerSecond)+" events/s; retry in "+seconds+" s")
	return outcome{http.StatusTooManyRequests, codeRateLimited}
}
