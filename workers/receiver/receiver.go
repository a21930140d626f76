// Package receiver is Tally's front door: an HTTP server speaking Segment's Tracking API that
// authenticates each request by write key, validates and normalises its messages, and answers
// 200 only once JetStream has acknowledged every accepted message.
package receiver

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
)

// Defaults of Options.
const (
	DefaultMaxPending = 512
)

// Options configure a Receiver.
type Options struct {
	// JetStream publishes the messages. Required.
	JetStream jetstream.JetStream
	// Conn is the connection /readyz watches and publishing checks first; defaults to
	// JetStream.Conn().
	Conn *nats.Conn
	// PublishTimeout bounds how long a request waits for its PubAcks before answering 503.
	PublishTimeout time.Duration
	// MaxPending is how many messages of one request may await their PubAck at once.
	MaxPending int
	// AtomicBatches publishes requests of 16 messages or more as JetStream atomic batches (one
	// fsync per batch) instead of message by message, and concurrent requests share them (group
	// commit: a stream's batch takes every message waiting while its previous ones commit). It
	// pays off only when NATS syncs every write (sync_interval: always): with the default sync,
	// per-message publishing is faster here, because the server stages every batch in a store of
	// its own.
	AtomicBatches bool
	Logger        *slog.Logger
	// Metrics records requests and messages; several Receivers of one process share one. When
	// nil, the receiver keeps metrics nobody reads.
	Metrics *Metrics
	// Gatherer is what /metrics serves (the registry Metrics is registered with); nothing when
	// nil.
	Gatherer prometheus.Gatherer
	// MaxRequestsInFlight and MaxBytesInFlight bound what the receiver holds at once (see
	// admission); past them it answers 429 with Retry-After. Defaults when 0.
	MaxRequestsInFlight int
	MaxBytesInFlight    int64
}

// Receiver serves the Tracking API for one or more sources, routing each request to the source
// whose write key it carries.
type Receiver struct {
	opts    Options
	log     *slog.Logger
	metrics *Metrics
	// admission bounds the requests and bytes in flight.
	admission *admission
	sources   atomic.Pointer[sourceSet]
	// rateLimits outlive the source sets, so a reload does not refill the buckets.
	rateLimits rateLimits
	handler    http.Handler
	// draining is set once shutdown began: /readyz answers 503 so the pod leaves the Service's
	// endpoints, while the Tracking API keeps serving whatever still arrives.
	draining atomic.Bool
	batching atomicState
}

// New builds a Receiver. It does not create streams: the operator (or tally local) does.
func New(opts Options, sources []*source.Config) (*Receiver, error) {
	if opts.JetStream == nil {
		return nil, errors.New("receiver: a JetStream context is required")
	}
	if opts.Conn == nil {
		opts.Conn = opts.JetStream.Conn()
	}
	if opts.PublishTimeout <= 0 {
		opts.PublishTimeout = source.DefaultPublishTimeout
	}
	if opts.MaxPending <= 0 {
		opts.MaxPending = DefaultMaxPending
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics(prometheus.NewRegistry())
	}
	if opts.Gatherer == nil {
		opts.Gatherer = prometheus.NewRegistry()
	}
	if opts.MaxRequestsInFlight <= 0 {
		opts.MaxRequestsInFlight = DefaultMaxRequestsInFlight
	}
	if opts.MaxBytesInFlight <= 0 {
		opts.MaxBytesInFlight = DefaultMaxBytesInFlight
	}
	r := &Receiver{opts: opts, log: opts.Logger, metrics: opts.Metrics,
		admission: newAdmission(opts.MaxRequestsInFlight, opts.MaxBytesInFlight)}
	if err := r.SetSources(sources); err != nil {
		return nil, err
	}
	r.handler = r.routes()
	return r, nil
}

// Handler serves the Tracking API, CORS preflight, /healthz, /readyz and /metrics.
func (r *Receiver) Handler() http.Handler { return r.handler }

// Drain marks the receiver as shutting down: /readyz answers 503 from now on, and every other
// endpoint keeps serving. Call it before http.Server.Shutdown, and give load balancers time to
// notice in between.
func (r *Receiver) Drain() { r.draining.Store(true) }

// SetSources atomically replaces the sources and their write keys (a key rotation or a settings
// change); requests in flight finish with the set they started with. An invalid set is refused
// and the current one kept.
func (r *Receiver) SetSources(sources []*source.Config) error {
	set, err := newSourceSet(sources)
	if err != nil {
		return err
	}
	r.rateLimits.attach(set)
	r.sources.Store(set)
	return nil
}

// sourceSet is an immutable snapshot of the served sources.
type sourceSet struct {
	list     []*source.Config
	subjects map[*source.Config]map[string]string // message type -> subject, built once
	// byDigest finds a source by the SHA-256 digest of a write key, in the same time whatever
	// the number of sources (a pool serves thousands).
	byDigest map[[sha256.Size]byte]*source.Config
	// suspended sources are known by their keys but refused (see SetMembers); nil when none.
	suspended map[*source.Config]bool
	// byName finds a source by "namespace/name" (the destination route's named form), and
	// sharedSecrets counts the shared secrets of all sources (what an unnamed signature costs).
	byName        map[string]*source.Config
	sharedSecrets int
	// limiters are the token buckets of the rate-limited sources (rateLimits.attach); nil when
	// none is.
	limiters map[*source.Config]*rate.Limiter
}

func newSourceSet(sources []*source.Config) (*sourceSet, error) {
	set := &sourceSet{
		list:     append([]*source.Config(nil), sources...),
		subjects: make(map[*source.Config]map[string]string, len(sources)),
		byDigest: make(map[[sha256.Size]byte]*source.Config, len(sources)),
		byName:   make(map[string]*source.Config, len(sources)),
	}
	for i, c := range set.list {
		if c == nil {
			return nil, fmt.Errorf("receiver: source %d is nil", i)
		}
		if err := c.Validate(); err != nil {
			return nil, fmt.Errorf("receiver: %w", err)
		}
		if set.byName[c.String()] != nil {
			return nil, fmt.Errorf("receiver: source %s is listed twice", c)
		}
		set.byName[c.String()] = c
		set.sharedSecrets += len(c.SharedSecrets)
		set.subjects[c] = make(map[string]string, len(stream.MessageTypes))
		for _, typ := range stream.MessageTypes {
			set.subjects[c][typ] = c.Stream().Subject(typ)
		}
		for _, d := range c.KeyDigests() {
			if other, ok := set.byDigest[d]; ok && other != c {
				// Never name the key itself.
				return nil, fmt.Errorf("receiver: sources %s and %s share a write key", other, c)
			}
			set.byDigest[d] = c
		}
	}
	return set, nil
}

// subject is where messages of the given type from src are published: the type's subject, with
// the partition of the message's user appended when the source is partitioned.
func (s *sourceSet) subject(src *source.Config, messageType, userKey string) string {
	if n := src.Partitions; n > 1 {
		return src.Stream().PartitionSubject(messageType, stream.Partition(userKey, n), n)
	}
	return s.subjects[src][messageType]
}

// match finds the source a write key belongs to, by the key's SHA-256 digest, then confirms it
// with the source's constant-time comparison. The lookup's timing depends on the digest only, and
// a sender cannot steer a guess's digest towards a valid key's, so no key leaks through it. A
// thousand sources cost one hash and one map lookup, not a thousand comparisons.
func (s *sourceSet) match(key string) *source.Config {
	if key == "" {
		return nil
	}
	if c := s.byDigest[sha256.Sum256([]byte(key))]; c != nil && c.MatchesKey(key) {
		return c
	}
	return nil
}
