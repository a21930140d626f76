package local

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tallyhq/tally/workers/insights"
	"github.com/tallyhq/tally/workers/pool"
	"github.com/tallyhq/tally/workers/receiver"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
	"github.com/tallyhq/tally/workers/worker"
)

// PipelineOptions wire a Pipeline to its NATS connection and Postgres pool.
type PipelineOptions struct {
	Conn *nats.Conn
	Pool *pgxpool.Pool
	// TenantPool, when set, gives the workers of a tenant their own pool (tally local: on the
	// tenant's own login, as the operator does); else every worker uses Pool.
	TenantPool func(ctx context.Context, tenant string) (*pgxpool.Pool, error)
	// ReceiverConn and WorkerConn, when set, are the NATS connections of the receiver and of a
	// source's workers (tally local: NATS users of their own, as the operator issues them); else
	// both use Conn, which also creates the streams. The caller closes them.
	ReceiverConn *nats.Conn
	WorkerConn   func(src *source.Config) (*nats.Conn, error)
	// PoolWorkerConn, when set, is the NATS connection of a SegmentSourcePool's workers (tally
	// local: the pool's worker user); else they use Conn.
	PoolWorkerConn func(p pool.Ref) (*nats.Conn, error)
	// PoolLogins give a pool's members their Postgres login (see StartPool): the pool's own,
	// granted each member tenant's role; without them the members have none and wait.
	PoolLogins PoolLogins
	// AtomicBatches publishes each request as atomic batches: worth it when NATS fsyncs every
	// write (see receiver.Options.AtomicBatches).
	AtomicBatches bool
	BatchSize     int           // per worker transaction; source.DefaultBatchSize when 0
	MaxWait       time.Duration // to fill a batch; source.DefaultMaxWait when 0
	Logger        *slog.Logger
	// Registry receives the receiver's and the workers' metrics, and the receiver's /metrics
	// serves it. A fresh registry when nil.
	Registry *prometheus.Registry
}

// Pipeline is Tally's data path in one process, as tally local and the bench run it: one
// receiver serving every source (routed by write key) and workers per source, on one NATS
// connection and one Postgres pool.
type Pipeline struct {
	opts     PipelineOptions
	js       jetstream.JetStream
	receiver *receiver.Receiver
	server   *http.Server
	metrics  *worker.Metrics
	insights *insights.Metrics
	errs     chan error

	mu      sync.Mutex
	workers []*runningWorkers
}

type runningWorkers struct {
	cancel context.CancelFunc
	done   sync.WaitGroup
}

// NewPipeline builds a pipeline that serves no source yet.
func NewPipeline(o PipelineOptions) (*Pipeline, error) {
	if o.Conn == nil || o.Pool == nil {
		return nil, errors.New("pipeline: needs a NATS connection and a Postgres pool")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Registry == nil {
		o.Registry = prometheus.NewRegistry()
	}
	// Acks a timed-out request stopped waiting for must not stay pending forever.
	js, err := jetstream.New(o.Conn, jetstream.WithPublishAsyncTimeout(source.DefaultPublishTimeout))
	if err != nil {
		return nil, err
	}
	rcvConn, rcvJS := o.Conn, js
	if o.ReceiverConn != nil {
		rcvConn = o.ReceiverConn
		if rcvJS, err = jetstream.New(rcvConn, jetstream.WithPublishAsyncTimeout(source.DefaultPublishTimeout)); err != nil {
			return nil, err
		}
	}
	rcv, err := receiver.New(receiver.Options{JetStream: rcvJS, Conn: rcvConn, AtomicBatches: o.AtomicBatches,
		Logger: o.Logger, Metrics: receiver.NewMetrics(o.Registry), Gatherer: o.Registry}, nil)
	if err != nil {
		return nil, err
	}
	return &Pipeline{
		opts: o, js: js, receiver: rcv,
		server:   receiver.NewServer("", rcv.Handler(), source.DefaultPublishTimeout),
		metrics:  worker.NewMetrics(o.Registry),
		insights: insights.NewMetrics(o.Registry),
		errs:     make(chan error, 16),
	}, nil
}

// JetStream is the pipeline's JetStream context.
func (p *Pipeline) JetStream() jetstream.JetStream { return p.js }

// Start serves the Tracking API on ln until Stop.
func (p *Pipeline) Start(ln net.Listener) {
	go func() {
		if err := p.server.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			p.fail(fmt.Errorf("receiver: %w", err))
		}
	}()
}

// Serve makes the receiver serve exactly these sources, creating their streams where missing.
// Requests in flight finish with the sources they started with.
func (p *Pipeline) Serve(ctx context.Context, sources []*source.Config) error {
	for _, src := range sources {
		if err := stream.Ensure(ctx, p.js, src.Stream(), src.StreamSettings()); err != nil {
			return err
		}
	}
	return p.receiver.SetSources(sources)
}

// StartWorkers runs n workers on src until Stop or the returned stop, which waits for them to
// finish their batch in hand.
func (p *Pipeline) StartWorkers(src *source.Config, n int) (stop func(), err error) {
	run := &runningWorkers{}
	ctx, cancel := context.WithCancel(context.Background())
	run.cancel = cancel
	pool := p.opts.Pool
	if p.opts.TenantPool != nil {
		if pool, err = p.opts.TenantPool(ctx, src.Tenant); err != nil {
			cancel()
			return nil, err
		}
	}
	js := p.js
	if p.opts.WorkerConn != nil {
		nc, err := p.opts.WorkerConn(src)
		if err == nil {
			js, err = jetstream.New(nc)
		}
		if err != nil {
			cancel()
			return nil, err
		}
	}
	for range n {
		w, err := worker.New(worker.Options{Pool: pool, JetStream: js, Source: src,
			BatchSize: p.opts.BatchSize, MaxWait: p.opts.MaxWait, Logger: p.opts.Logger, Metrics: p.metrics})
		if err != nil {
			cancel()
			run.done.Wait()
			return nil, err
		}
		run.done.Go(func() {
			if err := w.Run(ctx); err != nil {
				p.fail(fmt.Errorf("worker %s: %w", src, err))
			}
		})
	}
	p.mu.Lock()
	p.workers = append(p.workers, run)
	p.mu.Unlock()
	return run.stop, nil
}

func (r *runningWorkers) stop() {
	r.cancel()
	r.done.Wait()
}

// Err delivers the first failures of the receiver's server or of a worker.
func (p *Pipeline) Err() <-chan error { return p.errs }

func (p *Pipeline) fail(err error) {
	select {
	case p.errs <- err:
	default: // enough failures reported already
	}
}

// Stop shuts down in order: stop taking requests and answer those in flight (after their
// PubAcks), then let every worker finish its batch in hand. It does not close the NATS
// connection: drain it afterwards, so the last acks reach the server.
func (p *Pipeline) Stop(ctx context.Context) error {
	err := p.server.Shutdown(ctx)
	p.mu.Lock()
	workers := p.workers
	p.workers = nil
	p.mu.Unlock()
	for _, w := range workers {
		w.stop()
	}
	return err
}
