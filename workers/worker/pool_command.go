package worker

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tallyhq/tally/workers/natsauth"
	"github.com/tallyhq/tally/workers/pool"
)

// poolCommand holds what `tally worker --pool` needs besides the worker's own options.
type poolCommand struct {
	ref            pool.Ref
	natsURL        string
	natsCreds      string
	databaseURL    string // optional: members without credentials of their own, and migrations
	credentialsDir string
	metricsListen  string
	reloadInterval time.Duration
	maxConns       int
	maxConnsTotal  int
	version        string
	worker         Options // batch size, waits and bounds, shared by every member's worker
}

// runPool is `tally worker --pool`: the workers of a SegmentSourcePool, one Worker per member,
// on one NATS connection, one metrics registry and one small connection pool per tenant login.
func runPool(ctx context.Context, c poolCommand, log *slog.Logger) error {
	js, reg, drain, err := connectWorker(c.natsURL, c.natsCreds, log, natsauth.PoolInboxOption(c.ref, natsauth.Worker))
	if err != nil {
		return err
	}
	defer drain()
	o := c.worker
	o.Logger = log
	workers, err := NewPool(PoolOptions{Pool: c.ref, JetStream: js, Worker: o, DatabaseURL: c.databaseURL,
		CredentialsDir: c.credentialsDir, ReloadInterval: c.reloadInterval, MaxConnsPerLogin: c.maxConns,
		MaxConns: c.maxConnsTotal, Version: c.version, Registerer: reg})
	if err != nil {
		return err
	}
	srv := servePoolMetrics(c.metricsListen, reg, workers, js.Conn(), log)
	defer srv.Close()
	log.Info("pool worker started", "pool", c.ref.String())
	return workers.Run(ctx)
}

func servePoolMetrics(addr string, reg prometheus.Gatherer, workers *PoolWorkers, nc *nats.Conn, log *slog.Logger) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(rw http.ResponseWriter, _ *http.Request) { _, _ = rw.Write([]byte("ok\n")) })
	// Ready once the members are known and NATS is connected. One member's failing database
	// login does not make the pod unready: that would take every other member down with it.
	mux.HandleFunc("/readyz", func(rw http.ResponseWriter, _ *http.Request) {
		switch {
		case !workers.Loaded():
			http.Error(rw, "not ready: pool members not loaded yet", http.StatusServiceUnavailable)
		case !nc.IsConnected():
			http.Error(rw, "not ready: NATS not connected", http.StatusServiceUnavailable)
		default:
			_, _ = rw.Write([]byte("ok\n"))
		}
	})
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "addr", addr, "err", err)
		}
	}()
	return srv
}
