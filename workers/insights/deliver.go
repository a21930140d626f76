package insights

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	analytics "github.com/segmentio/analytics-go/v3"
)

// LibraryName marks every insight message in context.library: Tally's own messages, whatever
// endpoint they reach.
const LibraryName = "tally-insights"

// AnonymousID is the anonymousId of the group calls: Segment takes a group call only with a user
// or an anonymousId, and no user makes these.
const AnonymousID = "tally-insights"

// clientAttempts is how often analytics-go tries one request before it gives its messages up
// (fixed in analytics-go v3).
const clientAttempts = 10

// flushInterval is how soon analytics-go sends a batch that is not full: a page is enqueued at
// once, so its last batch need not wait.
const flushInterval = 20 * time.Millisecond

// errorExcerpt bounds how much of an error answer is kept for lastError.
const errorExcerpt = 300

// DeliveryError is why some insights were not delivered.
type DeliveryError struct {
	// Permanent is true when the endpoint refused them (4xx other than 429): trying again soon
	// would not help. Otherwise the endpoint was unreachable or unavailable (5xx, 429).
	Permanent bool
	// Status is the HTTP status of the endpoint's last answer (0 when none came).
	Status int
	// Failed is the number of entities not delivered.
	Failed  int
	message string
}

func (e *DeliveryError) Error() string { return e.message }

// message is the group or identify call of an entity.
func (e *entity) message(tenant, id string, now time.Time, library string) analytics.Message {
	ctx := &analytics.Context{
		Library: analytics.LibraryInfo{Name: LibraryName, Version: library},
		// Segment's spec: a call that is not the user's own activity. Tally's worker keeps
		// last_seen_at where it is for it.
		Extra: map[string]any{"active": false},
	}
	traits := analytics.Traits(e.traits)
	if e.kind == KindAccount {
		return analytics.Group{MessageId: id, GroupId: e.id, AnonymousId: AnonymousID, Timestamp: now, Context: ctx, Traits: traits}
	}
	return analytics.Identify{MessageId: id, UserId: e.id, Timestamp: now, Context: ctx, Traits: traits}
}

// delivery is one page's hand-over to analytics-go: its transport (gzip, the failure state that
// bounds retries), its retry policy and its callback, which collects the endpoint's verdict per
// message.
type delivery struct {
	p        *Pusher
	ctx      context.Context // of the push: its end cancels the requests in flight
	endpoint string

	mu        sync.Mutex
	pending   int
	done      chan struct{}
	delivered map[string]bool // message id -> answered 200
	failed    int
	// What the endpoint last said: the status (0: no answer), a description, and whether it
	// refused the insights (a 4xx other than 429), which ends the retries of this delivery.
	status     int
	lastErr    string
	permanent  bool
	retryAfter time.Duration
}

// deliver sends the entities and returns those the endpoint answered 200 for, with a
// *DeliveryError when some were not delivered.
func (p *Pusher) deliver(ctx context.Context, entities []*entity, ids map[*entity]string, now time.Time) ([]*entity, error) {
	d := &delivery{p: p, ctx: ctx, endpoint: p.settings.Endpoint, done: make(chan struct{}), delivered: map[string]bool{}}
	client, err := analytics.NewWithConfig(p.settings.WriteKey, analytics.Config{
		Endpoint:   strings.TrimSuffix(p.settings.Endpoint, "/"),
		Interval:   flushInterval,
		BatchSize:  p.o.BatchSize,
		Transport:  d,
		Logger:     clientLogger{p.o.Logger},
		Callback:   d,
		RetryAfter: d.backoff,
	})
	if err != nil {
		return nil, err
	}
	d.pending = len(entities)
	for _, e := range entities {
		if err := client.Enqueue(e.message(p.tenant, ids[e], now, p.o.LibraryVersion)); err != nil {
			d.Failure(nil, err) // invalid: never sent
		}
	}
	select {
	case <-d.done:
	case <-ctx.Done():
	}
	// After done nothing is in flight; after a cancellation Close ends the retries waiting,
	// which report their messages as failed.
	_ = client.Close()

	d.mu.Lock()
	defer d.mu.Unlock()
	var ok []*entity
	for _, e := range entities {
		if d.delivered[ids[e]] {
			ok = append(ok, e)
		}
	}
	if len(ok) == len(entities) {
		return ok, nil
	}
	if err := ctx.Err(); err != nil {
		return ok, err
	}
	return ok, d.failure(len(entities) - len(ok))
}

// failure describes what went wrong; d.mu is held.
func (d *delivery) failure(failed int) *DeliveryError {
	e := &DeliveryError{Permanent: d.permanent, Status: d.status, Failed: failed}
	switch {
	case d.permanent:
		e.message = fmt.Sprintf("%s refused %d insight(s): %s", d.endpoint, failed, d.lastErr)
	case d.lastErr != "":
		e.message = fmt.Sprintf("%d insight(s) not delivered to %s after %d attempts: %s", failed, d.endpoint, clientAttempts, d.lastErr)
	default:
		e.message = fmt.Sprintf("%d insight(s) not delivered to %s", failed, d.endpoint)
	}
	return e
}

// Success is analytics-go's callback for a message the endpoint answered 200 for.
func (d *delivery) Success(m analytics.Message) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.delivered[messageID(m)] = true
	d.settled()
}

// Failure is analytics-go's callback for a message it gave up on.
func (d *delivery) Failure(_ analytics.Message, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.failed++
	if d.lastErr == "" && err != nil {
		d.lastErr = err.Error()
	}
	d.settled()
}

// settled counts one verdict; d.mu is held.
func (d *delivery) settled() {
	d.pending--
	if d.pending == 0 {
		close(d.done)
	}
}

func messageID(m analytics.Message) string {
	switch m := m.(type) {
	case analytics.Group:
		return m.MessageId
	case analytics.Identify:
		return m.MessageId
	}
	return ""
}

// backoff is analytics-go's wait before the next attempt of a request: exponential from the
// pusher's RetryBase up to RetryMax, at least what a 429 or 503 asked for (up to RetryMax), and
// none once the endpoint refused the insights (the attempts left then fail at once, without a
// request).
func (d *delivery) backoff(attempt int) time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.permanent {
		return 0
	}
	wait := d.p.o.RetryMax
	if attempt < 30 {
		wait = min(d.p.o.RetryBase<<attempt, d.p.o.RetryMax)
	}
	if d.retryAfter > wait {
		wait = min(d.retryAfter, d.p.o.RetryMax)
	}
	return wait
}

var errRefused = errors.New("not sent: the endpoint refused an earlier request of this delivery")

// RoundTrip sends one attempt of a batch: gzip-compressed unless the endpoint refused gzip
// before, and notes the answer for the retry policy and the error report.
func (d *delivery) RoundTrip(req *http.Request) (*http.Response, error) {
	d.mu.Lock()
	refused := d.permanent
	d.mu.Unlock()
	if refused {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, errRefused
	}
	body, err := io.ReadAll(req.Body)
	_ = req.Body.Close()
	if err != nil {
		return nil, err
	}
	compress := !d.p.plainOnly.Load()
	resp, err := d.p.send(d.ctx, req, body, compress)
	if err == nil && compress && resp.StatusCode == http.StatusUnsupportedMediaType {
		// The endpoint takes no gzip: plain JSON from now on, and this batch again at once.
		drain(resp)
		d.p.plainOnly.Store(true)
		d.p.o.Logger.Info("insights endpoint refuses gzip; sending plain JSON", "source", d.p.source, "endpoint", d.endpoint)
		resp, err = d.p.send(d.ctx, req, body, false)
	}
	if err != nil {
		d.note(0, err.Error(), false, 0)
		d.p.o.Metrics.requestFailed(d.p.source, "unreachable")
		return nil, err
	}
	switch code := resp.StatusCode; {
	case code < 300:
	case code == http.StatusTooManyRequests || code >= 500:
		d.note(code, resp.Status, false, retryAfter(resp.Header.Get("Retry-After")))
		d.p.o.Metrics.requestFailed(d.p.source, "unavailable")
	default:
		// Keep what the endpoint said for lastError, and hand analytics-go the same bytes.
		excerpt, _ := io.ReadAll(io.LimitReader(resp.Body, errorExcerpt))
		drain(resp)
		resp.Body = io.NopCloser(bytes.NewReader(excerpt))
		d.note(code, strings.TrimSpace(resp.Status+": "+string(excerpt)), true, 0)
		d.p.o.Metrics.requestFailed(d.p.source, "refused")
	}
	return resp, nil
}

func (d *delivery) note(status int, msg string, permanent bool, retryAfter time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.status, d.lastErr = status, msg
	d.permanent = d.permanent || permanent
	d.retryAfter = retryAfter
}

// send makes one HTTP request with body, compressed or not.
func (p *Pusher) send(ctx context.Context, req *http.Request, body []byte, compress bool) (*http.Response, error) {
	out := req.Clone(ctx)
	out.Header.Del("Content-Length")
	if compress {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		if _, err := zw.Write(body); err != nil {
			return nil, err
		}
		if err := zw.Close(); err != nil {
			return nil, err
		}
		body = buf.Bytes()
		out.Header.Set("Content-Encoding", "gzip")
	} else {
		out.Header.Del("Content-Encoding")
	}
	out.Body = io.NopCloser(bytes.NewReader(body))
	out.ContentLength = int64(len(body))
	out.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	return p.o.Transport.RoundTrip(out)
}

func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
}

// retryAfter reads a Retry-After header given in seconds (0 when absent or a date).
func retryAfter(v string) time.Duration {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n <= 0 {
		return 0
	}
	return time.Duration(n) * time.Second
}

// clientLogger turns analytics-go's log lines (one per failed attempt) into debug records: the
// pusher logs each failed push itself, once.
type clientLogger struct{ log *slog.Logger }

func (l clientLogger) Logf(format string, args ...any) {
	l.log.Debug("analytics-go: " + fmt.Sprintf(format, args...))
}

func (l clientLogger) Errorf(format string, args ...any) {
	l.log.Debug("analytics-go: " + fmt.Sprintf(format, args...))
}
