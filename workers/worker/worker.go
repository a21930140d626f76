package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sethvargo/go-retry"

	"github.com/tallyhq/tally/workers/segment"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
)

// maxBackoff stays below the consumer's AckWait, so InProgress keeps held messages.
const maxBackoff = 30 * time.Second

// Defaults of the worker's bounds.
const (
	// DefaultBatchBytes bounds a fetched batch by size as well as by count: 2,000 messages of up
	// to 32 KB would be 64 MB, a worker holds two batches (one committing, one folding), and the
	// operator's default worker pod has 512 MiB.
	DefaultBatchBytes = 8 << 20
	// DefaultStatementTimeout and DefaultLockTimeout bound every statement of a batch transaction
	// and every lock wait in it (the tenant's lock included), so one hung statement cannot hold
	// a tenant's lock forever.
	DefaultStatementTimeout = 30 * time.Second
	DefaultLockTimeout      = 30 * time.Second
	// unexplainedAttempts is how often a batch is tried when it fails for no known reason
	// before it is split to find and dead-letter the messages that fail alone.
	unexplainedAttempts = 3
)

// Options configure a Worker.
type Options struct {
	Pool *pgxpool.Pool
	// DatabaseRole, on a pool login's connections (a pool worker's), is the member tenant's role,
	// granted to the pool's login: every call to Postgres names the member's tenant (see
	// nameTenant); "" on a tenant's own login.
	DatabaseRole string
	JetStream    jetstream.JetStream
	Source       *source.Config
	BatchSize    int           // messages per fetch; source.DefaultBatchSize when 0
	MaxWait      time.Duration // how long a pull stays open to fill a batch (see fetchLoop); source.DefaultMaxWait when 0
	Logger       *slog.Logger  // slog.Default() when nil
	// Metrics records batches, messages and retries; the workers of one process share one.
	// When nil, the worker keeps metrics nobody reads.
	Metrics *Metrics
	// Acknowledger acknowledges each message once its batch has committed; JetStreamAcks when
	// nil.
	Acknowledger Acknowledger
	// BatchBytes bounds a fetched batch's size; DefaultBatchBytes when 0.
	BatchBytes int
	// StatementTimeout and LockTimeout bound each statement and lock wait of a batch transaction
	// (Postgres' statement_timeout and lock_timeout); the defaults when 0.
	StatementTimeout time.Duration
	LockTimeout      time.Duration
}

// Acknowledger tells JetStream that a message is done with, after its batch committed.
type Acknowledger interface {
	Ack(jetstream.Msg) error
}

// JetStreamAcks acknowledges without waiting for JetStream's confirmation: the acks travel on
// the connection while the next batch is mapped. A lost ack is harmless: the redelivered message
// changes nothing in Postgres.
type JetStreamAcks struct{}

// Ack acknowledges msg.
func (JetStreamAcks) Ack(msg jetstream.Msg) error { return msg.Ack() }

// Worker consumes one source. Several workers, in one process or many, may consume the same
// source: they share its durable consumer, and their transactions are safe together.
type Worker struct {
	pool      *pgxpool.Pool
	role      string // see Options.DatabaseRole
	js        jetstream.JetStream
	stream    stream.Source
	tenant    string
	batchSize int
	maxWait   time.Duration
	bounds    txBounds
	log       *slog.Logger
	metrics   *Metrics
	acks      Acknowledger
	// purgeQuiet is how long a quiet lane waits to purge (see purgeQuiet; shorter in tests).
	purgeQuiet time.Duration

	source atomic.Pointer[source.Config]
	ready  atomic.Bool
	// lanesChanged tells Run that the source's consumers changed (a new partition count).
	lanesChanged chan struct{}
}

// New checks the options and builds a worker; Run starts it.
func New(o Options) (*Worker, error) {
	switch {
	case o.Pool == nil:
		return nil, errors.New("worker: no Postgres pool")
	case o.JetStream == nil:
		return nil, errors.New("worker: no JetStream")
	case o.Source == nil || o.Source.Namespace == "" || o.Source.Name == "" || o.Source.Tenant == "":
		return nil, errors.New("worker: source needs namespace, name and tenant")
	}
	if o.BatchSize <= 0 {
		o.BatchSize = source.DefaultBatchSize
	}
	if o.MaxWait <= 0 {
		o.MaxWait = source.DefaultMaxWait
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(prometheus.NewRegistry())
	}
	if o.Acknowledger == nil {
		o.Acknowledger = JetStreamAcks{}
	}
	if o.BatchBytes <= 0 {
		o.BatchBytes = DefaultBatchBytes
	}
	if o.StatementTimeout <= 0 {
		o.StatementTimeout = DefaultStatementTimeout
	}
	if o.LockTimeout <= 0 {
		o.LockTimeout = DefaultLockTimeout
	}
	w := &Worker{
		pool: o.Pool, role: o.DatabaseRole, js: o.JetStream, stream: o.Source.Stream(), tenant: o.Source.Tenant,
		batchSize: o.BatchSize, maxWait: o.MaxWait, metrics: o.Metrics, acks: o.Acknowledger,
		purgeQuiet:   purgeQuiet,
		bounds:       txBounds{statement: o.StatementTimeout, lock: o.LockTimeout, batchBytes: o.BatchBytes},
		log:          o.Logger.With("source", o.Source.String()),
		lanesChanged: make(chan struct{}, 1),
	}
	w.source.Store(o.Source)
	return w, nil
}

// UpdateSource applies new settings of the same source (accountProperty, ignoredEvents) from the
// next batch on. A different source or tenant is refused: that needs a new worker.
func (w *Worker) UpdateSource(ctx context.Context, c *source.Config) error {
	ctx = w.databaseContext(ctx)
	old := w.source.Load()
	if c.Namespace != old.Namespace || c.Name != old.Name || c.Tenant != old.Tenant {
		return fmt.Errorf("worker of %s (tenant %s) cannot switch to %s (tenant %s)", old, old.Tenant, c, c.Tenant)
	}
	// Mark the catalog first and keep the old settings if that fails, so the next reload sees
	// the difference again and retries instead of leaving the ignored flags wrong.
	if !equalStrings(old.IgnoredEvents, c.IgnoredEvents) {
		if err := markIgnored(ctx, w.pool, w.tenant, c.IgnoredEvents, w.bounds); err != nil {
			return err
		}
	}
	w.source.Store(c)
	if c.ConsumedPartitions() != old.ConsumedPartitions() {
		select {
		case w.lanesChanged <- struct{}{}:
		default:
		}
	}
	return nil
}

// databaseContext is ctx naming the member's tenant, on a pool login's connections.
func (w *Worker) databaseContext(ctx context.Context) context.Context {
	if w.role == "" {
		return ctx
	}
	return withPoolTenant(ctx, w.tenant)
}

// Ready reports whether the worker is bound to its consumer and Postgres answered its last batch.
func (w *Worker) Ready() bool { return w.ready.Load() }

// Run consumes until ctx is cancelled, then finishes the batches in hand and returns nil. Each of
// the source's consumers (the unpartitioned one and one per partition) gets a lane of its own:
// its batches are fetched and committed one after the other, while the lanes run at once. Lost
// connections, a deleted consumer or a missing stream are waited out, never fatal.
func (w *Worker) Run(ctx context.Context) error {
	ctx = w.databaseContext(ctx)
	_ = w.retry(ctx, "mark ignored events", func() error { // fails only when ctx ends
		return markIgnored(ctx, w.pool, w.tenant, w.source.Load().IgnoredEvents, w.bounds)
	})
	var lanes sync.WaitGroup
	defer lanes.Wait()
	running := map[string]bool{}
	for {
		for _, name := range stream.Consumers(w.source.Load().ConsumedPartitions()) {
			if !running[name] {
				running[name] = true
				lanes.Go(func() { w.runLane(ctx, name) })
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-w.lanesChanged:
		}
	}
}

// runLane consumes one of the source's consumers until ctx is cancelled.
func (w *Worker) runLane(ctx context.Context, name string) {
	for ctx.Err() == nil {
		consumer := w.bind(ctx, name)
		if consumer == nil {
			break
		}
		err := w.consume(ctx, consumer, name)
		w.ready.Store(false)
		if err != nil && ctx.Err() == nil {
			w.log.Warn("consumer lost, binding again", "consumer", name, "err", err)
			sleep(ctx, time.Second)
		}
	}
}

// bind finds one of the source's durable consumers, waiting (with backoff) while the stream is
// missing: the operator or tally local creates it. A missing consumer is created again, as the
// operator would: a single NATS server forgets the memory-stored consumers when it restarts (see
// stream.NamedConsumerConfig), and the workers must not wait for the operator's next check.
func (w *Worker) bind(ctx context.Context, name string) jetstream.Consumer {
	var consumer jetstream.Consumer
	_ = w.retry(ctx, "bind consumer "+name, func() error { // fails only when ctx ends
		c, err := w.js.Consumer(ctx, w.stream.StreamName(), name)
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			c, err = w.js.CreateConsumer(ctx, w.stream.StreamName(), stream.NamedConsumerConfig(w.stream, name))
			if err == nil {
				w.log.Info("created the missing consumer", "consumer", name)
			}
		}
		consumer = c
		return err
	})
	if consumer != nil {
		w.ready.Store(true)
	}
	return consumer
}

// consume maps batches until the consumer fails or ctx is cancelled. Fetching, decoding and
// folding the next batch overlap the current batch's transaction; each batch is still acknowledged
// only after its own transaction committed.
func (w *Worker) consume(ctx context.Context, consumer jetstream.Consumer, name string) error {
	fetchCtx, stopFetching := context.WithCancel(ctx)
	batches := make(chan fetched)
	go w.fetchLoop(fetchCtx, consumer, batches)
	purges := newPurger(w, consumer, name)
	defer func() {
		purges.stop()
		stopFetching()
		for f := range batches { // wait for the fetcher; what it still hands over is redelivered
			nakAll(f)
		}
	}()
	for {
		var f fetched
		var ok bool
		select {
		case <-ctx.Done():
			return nil
		case <-purges.due():
			purges.maybePurge(ctx, false)
			continue
		case f, ok = <-batches:
		}
		if !ok {
			return nil
		}
		if ctx.Err() != nil { // shutting down: hand the batch back rather than start on it
			nakAll(f)
			return nil
		}
		if f.size() == 0 {
			w.metrics.pending.WithLabelValues(w.stream.String()).Set(0)
		} else if err := w.handle(ctx, f); err != nil {
			return err
		} else {
			w.metrics.consumed.WithLabelValues(w.stream.String(), name).Add(float64(f.size()))
			purges.acknowledged(f.maxSeq, f.size())
		}
		idle := f.size() == 0 && f.err == nil // a pull that came back empty
		purges.maybePurge(ctx, idle)          // also then, so the last acknowledgements are purged
		if f.err != nil {
			return f.err
		}
	}
}

// item is one fetched message and its decoded form.
type item struct {
	msg jetstream.Msg
	m   *segment.Message
}

// handle maps one fetched batch and acknowledges every message in it: the mapped ones after their
// transaction committed, the unmappable ones after they reached the dead-letter stream. It returns
// an error only when the worker must stop (shutdown while Postgres is down).
func (w *Worker) handle(ctx context.Context, f fetched) error {
	start := time.Now()
	src := w.stream.String()
	if f.lastMeta != nil {
		w.metrics.pending.WithLabelValues(src).Set(float64(f.lastMeta.NumPending))
	}
	for _, b := range f.bad {
		if err := w.deadLetter(ctx, b.msg, b.err); err != nil {
			return err
		}
	}
	if len(f.items) > 0 {
		if err := w.mapIsolating(ctx, f.items, f.prepared, unexplainedAttempts); err != nil {
			return err
		}
	}
	w.metrics.batchSeconds.WithLabelValues(src).Observe(time.Since(start).Seconds())
	return nil
}

// mapIsolating commits items in one transaction; when Postgres refuses a value (or the batch
// keeps failing for no known reason) it splits the batch in halves until the refused messages
// stand alone, dead-letters them with the reason and commits the rest. prepared is the fold of
// all items when the caller has it.
func (w *Worker) mapIsolating(ctx context.Context, items []item, prepared *preparedFold, attempts int) error {
	err := w.commit(ctx, items, prepared, attempts)
	var refused *refusedError
	if !errors.As(err, &refused) {
		return err
	}
	if len(items) == 1 {
		return w.deadLetter(ctx, items[0].msg, refused.err)
	}
	half := len(items) / 2
	// The halves are tried once each: what still fails for no known reason splits further.
	if err := w.mapIsolating(ctx, items[:half], nil, 1); err != nil {
		return err
	}
	return w.mapIsolating(ctx, items[half:], nil, 1)
}

// refusedError is a batch Postgres will not take as it is: bad data, or a failure without a
// known reason that outlasted its attempts.
type refusedError struct{ err error }

func (e *refusedError) Error() string { return e.err.Error() }
func (e *refusedError) Unwrap() error { return e.err }

// commit applies items in one transaction and acknowledges them. Contention is retried at once;
// infrastructure errors are retried with a capped exponential backoff, the messages held with
// InProgress meanwhile, until Postgres is back or ctx is cancelled; an unexplained failure is
// tried attempts times. Bad data, and an unexplained failure past its attempts, return a
// *refusedError.
func (w *Worker) commit(ctx context.Context, items []item, prepared *preparedFold, attempts int) error {
	src := w.source.Load()
	if prepared == nil || prepared.src != src {
		prepared = &preparedFold{src: src, folded: fold(withoutIgnored(messagesOf(items), src), src.AccountProperty)}
	}
	folded := prepared.folded
	// The transaction runs to its end even during shutdown; only waiting between tries stops.
	// Its own deadline backs up statement_timeout should Postgres stop answering altogether.
	txCtx := context.WithoutCancel(ctx)
	var refused error
	tries := 0
	extra := newLockSet()
	err := w.retry(ctx, "apply batch", func() error {
		for {
			tries++
			res, err := apply(txCtx, w.pool, w.tenant, src.String(), folded, w.bounds, extra)
			if grew, ok := asLockSetGrew(err); ok { // a tie moved under us: again, holding more
				w.metrics.retries.WithLabelValues(w.stream.String(), "locks").Inc()
				extra = extra.merge(grew.more)
				tries--
				continue
			}
			if err == nil {
				w.metrics.lockWait.WithLabelValues(w.stream.String()).Observe(res.LockWait.Seconds())
				w.metrics.eventsInserted.WithLabelValues(w.stream.String()).Add(float64(res.EventsInserted))
				w.metrics.unnamed.WithLabelValues(w.stream.String()).Add(float64(res.UnnamedAccountsCreated))
				w.metrics.usersDeleted.WithLabelValues(w.stream.String()).Add(float64(res.UsersDeleted))
				w.metrics.observeEndToEnd(w.stream.String(), folded.messages, time.Now())
				return nil
			}
			switch classify(err) {
			case badData:
				refused = err
				return nil
			case contention:
				w.metrics.retries.WithLabelValues(w.stream.String(), "contention").Inc()
				sleep(ctx, time.Duration(10+rand.IntN(40))*time.Millisecond) // jitter: let the other side finish
				continue
			case unexplained:
				w.metrics.retries.WithLabelValues(w.stream.String(), "unexplained").Inc()
				if tries >= attempts {
					refused = err
					return nil
				}
				return fmt.Errorf("batch of %d messages failed (try %d of %d): %w", len(items), tries, attempts, err)
			}
			w.metrics.retries.WithLabelValues(w.stream.String(), "infrastructure").Inc()
			w.ready.Store(false)
			for _, it := range items { // held, not redelivered, while Postgres is away
				_ = it.msg.InProgress()
			}
			return fmt.Errorf("holding %d messages while Postgres is unavailable: %w", len(items), err)
		}
	})
	if refused != nil {
		return &refusedError{refused}
	}
	if err != nil {
		return err // shutting down: not acknowledged, JetStream redelivers after AckWait
	}
	w.ready.Store(true)
	w.ackAll(items)
	label := w.stream.String()
	w.metrics.batches.WithLabelValues(label).Inc()
	perType := map[string]int{} // one counter update per type, not per message
	for _, it := range items {
		perType[it.m.Type]++
	}
	for typ, n := range perType {
		w.metrics.messages.WithLabelValues(label, typ).Add(float64(n))
	}
	return nil
}

// ackAll acknowledges every message of a committed batch. A lost ack is harmless: the
// redelivered message changes nothing in Postgres.
func (w *Worker) ackAll(items []item) {
	failed := 0
	for _, it := range items {
		if err := w.acks.Ack(it.msg); err != nil {
			failed++
		}
	}
	if failed > 0 {
		w.log.Warn("acknowledgements failed; those messages will be redelivered and change nothing", "count", failed)
	}
}

// retry calls fn until it succeeds or ctx is cancelled (then it returns ctx's error), waiting
// 100ms, 200ms, ... up to maxBackoff between tries. The first try runs even when ctx has ended,
// so a batch in hand is finished when it can be.
func (w *Worker) retry(ctx context.Context, what string, fn func() error) error {
	backoff := retry.WithCappedDuration(maxBackoff, retry.NewExponential(100*time.Millisecond))
	for {
		err := fn()
		if err == nil {
			return nil
		}
		wait, _ := backoff.Next() // never stops: capped, not limited
		w.log.Warn(what+" failed, retrying", "retry_in", wait, "err", err)
		if !sleep(ctx, wait) {
			return ctx.Err()
		}
	}
}

// sleep waits d or until ctx is cancelled; it reports whether the full time passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
