package receiver

import (
	"cmp"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/tallyhq/tally/workers/segment"
	"github.com/tallyhq/tally/workers/source"
)

// retryAfterSeconds is what a 503 asks clients to wait; analytics-node and browsers honour it.
const retryAfterSeconds = "5"

func (r *Receiver) ingestHandler(route string, ep segment.Endpoint) http.Handler {
	limit := ep.RequestLimit()
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		start := time.Now()
		allowAnyOrigin(w.Header())
		out := r.ingest(w, req, ep, limit)
		r.metrics.requests.WithLabelValues(route, strconv.Itoa(out.status)).Inc()
		r.metrics.requestDuration.WithLabelValues(route).Observe(time.Since(start).Seconds())
		if out.status >= http.StatusBadRequest {
			r.metrics.refusals.WithLabelValues(out.code).Inc()
			// One line per refused request; never the write key or the body. A source held to its
			// rate limit is throttling doing its job, at a rate its senders set: debug, so it cannot
			// flood the logs (tally_receiver_rate_limited_requests_total counts it).
			level := slog.LevelInfo
			if out.code == codeRateLimited {
				level = slog.LevelDebug
			}
			r.log.Log(req.Context(), level, "request refused", "route", route, "status", out.status, "code", out.code,
				"remote", req.RemoteAddr, "userAgent", req.UserAgent())
		}
	})
}

// outcome is what ingest answered: the status, and the error code when it refused.
type outcome struct {
	status int
	code   string
}

// Codes of refusals that are not about the request's content.
const (
	codeOverloaded  = "overloaded"
	codeUnavailable = "unavailable"
)

// ingest serves one Tracking API request.
func (r *Receiver) ingest(w http.ResponseWriter, req *http.Request, ep segment.Endpoint, limit int) outcome {
	start := time.Now()
	fail := func(status int, code, msg string) outcome {
		writeError(w, status, code, msg)
		return outcome{status, code}
	}
	shed := func(what string) outcome {
		r.metrics.shed.WithLabelValues(what).Inc()
		w.Header().Set("Retry-After", shedRetryAfterSeconds)
		return fail(http.StatusTooManyRequests, codeOverloaded, "the receiver is at its limit of "+what+" in flight; retry shortly")
	}
	limited := func(src *source.Config, wait time.Duration) outcome {
		name := src.String()
		r.metrics.counting(name, func() { r.metrics.rateLimited.WithLabelValues(name).Inc() })
		return rateLimited(w, src, wait)
	}
	// A source past its limit that names itself in the header is refused before its body is
	// read: a sender hammering through its 429s costs a hash, not a parse.
	if sources := r.sources.Load(); sources.limiters != nil && !ep.Destination {
		if key, ok := headerWriteKey(req.Header.Get("Authorization")); ok {
			if src := sources.match(key); src != nil {
				if wait := sources.emptyFor(src, start); wait > 0 {
					return limited(src, wait)
				}
			}
		}
	}
	if !r.admission.enter() {
		return shed("requests")
	}
	defer r.admission.leave()
	held := reservation{a: r.admission}
	defer held.release()
	if !held.reserve(limit) {
		return shed("bytes")
	}

	body, berr := readBody(req, limit)
	if berr != nil {
		return fail(berr.status, berr.code, berr.msg)
	}
	held.shrink(limit - body.Len())
	parsed, err := segment.ParseRequest(body.Bytes(), ep)
	if err != nil {
		releaseBody(body)
		var rerr *segment.RequestError
		if errors.As(err, &rerr) {
			return fail(http.StatusBadRequest, rerr.Code, rerr.Message)
		}
		return fail(http.StatusBadRequest, segment.CodeInvalidJSON, err.Error())
	}

	auth := r.authenticate(req, parsed, body.Bytes())
	if auth.none() {
		releaseBody(body)
		if ep.Destination {
			return fail(http.StatusUnauthorized, segment.CodeInvalidWriteKey,
				"no valid credentials: send the write key as Basic username or Bearer token, or sign with the source's shared secret (X-Signature; a receiver of more sources than a few needs the source in the URL, "+DestinationPath+"/<namespace>/<name>)")
		}
		return fail(http.StatusUnauthorized, segment.CodeInvalidWriteKey, "no valid write key: send it as the Basic auth username or as writeKey in the body")
	}
	if auth.suspended() {
		releaseBody(body)
		w.Header().Set("Retry-After", suspendedRetryAfterSeconds)
		return fail(http.StatusServiceUnavailable, codeSourceSuspended, "this source is suspended; retry later")
	}
	if !held.reserve(parsed.OutputBound()) {
		releaseBody(body)
		return shed("bytes")
	}
	res := parsed.Normalize(time.Now())
	releaseBody(body) // the accepted messages live in their own buffer

	sorted := r.sortMessages(auth, &res)
	if !ep.Batch && !ep.Destination && len(res.Rejected) > 0 {
		// A single call that is invalid has nothing else to accept; say why. (Client libraries
		// validate before sending, so this reaches people trying the API by hand.)
		sorted.countDecisions(r.metrics)
		rej := res.Rejected[0]
		return fail(http.StatusBadRequest, rej.Code, rej.Message)
	}
	if src, wait := auth.sources.admitRate(sorted.perSource, time.Now()); src != nil {
		return limited(src, wait)
	}
	if len(sorted.outgoing) > 0 {
		if err := r.publish(req.Context(), sorted.outgoing); err != nil {
			r.log.Warn("publish failed; answering 503", "error", err, "messages", len(sorted.outgoing))
			w.Header().Set("Retry-After", retryAfterSeconds)
			return fail(http.StatusServiceUnavailable, codeUnavailable, "the event stream is unavailable; retry later")
		}
	}
	sorted.countDecisions(r.metrics)
	sorted.countAccepted(r.metrics)
	writeSuccess(w, len(sorted.outgoing), sorted.ignored, res.Rejected)
	return outcome{status: http.StatusOK}
}

// authentication is the outcome of checking a request's write keys: either one source for the
// whole request, or (when the only keys are on the messages) one per message.
type authentication struct {
	sources *sourceSet // the snapshot the request was authenticated against
	source  *source.Config
	perItem []*source.Config
}

func (a authentication) none() bool {
	if a.source != nil {
		return false
	}
	for _, s := range a.perItem {
		if s != nil {
			return false
		}
	}
	return true
}

func (a authentication) of(index int) *source.Config {
	if a.source != nil {
		return a.source
	}
	return a.perItem[index]
}

// authenticate picks the write key the way Segment documents it: the Basic auth username first,
// then writeKey at the top of the body, then each message's own writeKey. A Bearer token is not
// a write key; such requests carry writeKey in the body. The destination route has its own rule.
func (r *Receiver) authenticate(req *http.Request, parsed *segment.Request, body []byte) authentication {
	sources := r.sources.Load()
	if parsed.Destination() {
		return authentication{sources: sources, source: sources.matchDestination(req, parsed, body)}
	}
	if key, ok := headerWriteKey(req.Header.Get("Authorization")); ok {
		return authentication{sources: sources, source: sources.match(key)}
	}
	if parsed.WriteKey != "" {
		return authentication{sources: sources, source: sources.match(parsed.WriteKey)}
	}
	a := authentication{sources: sources, perItem: make([]*source.Config, parsed.Len())}
	seen := map[string]*source.Config{}
	for i := range a.perItem {
		key := parsed.ItemWriteKey(i)
		src, ok := seen[key]
		if !ok {
			src = sources.match(key)
			seen[key] = src
		}
		a.perItem[i] = src
	}
	return a
}

// sortedMessages are a request's messages after authentication and the ignore list.
type sortedMessages struct {
	outgoing  []outgoing
	ignored   int
	perSource map[*source.Config]*sourceCounts
}

type sourceCounts struct {
	accepted, ignored, clamped int
	invalid                    map[string]int // by rejection code
}

// sortMessages routes each accepted message to its source's subject, drops the source's ignored
// track events, and turns messages whose own write key did not authenticate into rejections.
func (r *Receiver) sortMessages(auth authentication, res *segment.Result) sortedMessages {
	s := sortedMessages{
		outgoing:  make([]outgoing, 0, len(res.Accepted)),
		perSource: make(map[*source.Config]*sourceCounts, 1),
	}
	counts := func(src *source.Config) *sourceCounts {
		c := s.perSource[src]
		if c == nil {
			c = &sourceCounts{}
			s.perSource[src] = c
		}
		return c
	}
	unauthenticated := false
	for _, rej := range res.Rejected {
		if src := auth.of(rej.Index); src != nil {
			c := counts(src)
			if c.invalid == nil {
				c.invalid = map[string]int{}
			}
			c.invalid[rej.Code]++
		}
	}
	for _, m := range res.Accepted {
		src := auth.of(m.Index)
		switch {
		case src == nil:
			res.Rejected = append(res.Rejected, segment.Rejection{Index: m.Index, Code: segment.CodeInvalidWriteKey, Message: "the message's writeKey is missing or not valid"})
			unauthenticated = true
		case m.Type == segment.TypeTrack && src.Ignores(m.Event):
			counts(src).ignored++
			s.ignored++
		default:
			c := counts(src)
			c.accepted++
			if m.Clamped {
				c.clamped++
			}
			s.outgoing = append(s.outgoing, outgoing{source: src, subject: auth.sources.subject(src, m.Type, m.UserKey), messageID: m.MessageID, data: m.JSON})
		}
	}
	if unauthenticated {
		slices.SortFunc(res.Rejected, func(a, b segment.Rejection) int { return cmp.Compare(a.Index, b.Index) })
	}
	return s
}

// countAccepted records the accepted messages once JetStream has stored them.
func (s sortedMessages) countAccepted(m *Metrics) {
	for src, c := range s.perSource {
		name := src.String()
		m.counting(name, func() {
			if c.accepted > 0 {
				m.messages.WithLabelValues(name, outcomeAccepted).Add(float64(c.accepted))
			}
			if c.clamped > 0 {
				m.clamped.WithLabelValues(name).Add(float64(c.clamped))
			}
		})
	}
}

// countDecisions records invalid and ignored messages when the answer is final (not a 503 the
// client will retry, which would count them twice).
func (s sortedMessages) countDecisions(m *Metrics) {
	for src, c := range s.perSource {
		name := src.String()
		m.counting(name, func() {
			for code, n := range c.invalid {
				m.messages.WithLabelValues(name, outcomeInvalid).Add(float64(n))
				m.rejected.WithLabelValues(name, code).Add(float64(n))
			}
			if c.ignored > 0 {
				m.messages.WithLabelValues(name, outcomeIgnored).Add(float64(c.ignored))
			}
		})
	}
}
