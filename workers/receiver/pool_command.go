package receiver

import (
	"context"
	"log/slog"
	"net/http"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tallyhq/tally/workers/natsauth"
	"github.com/tallyhq/tally/workers/pool"
	"github.com/tallyhq/tally/workers/stream"
)

// runPoolCommand is `tally receiver --pool`: the receivers of a SegmentSourcePool, serving every
// member the pool's bucket lists. Members join, leave, rotate keys and are suspended without a
// restart: the bucket is watched, and each change replaces the served set atomically.
func runPoolCommand(ctx context.Context, cfg commandConfig, log *slog.Logger, ready func(addr string)) error {
	ref, err := pool.ParseRef(cfg.pool)
	if err != nil {
		return err
	}
	// PubAcks and the bucket's watch arrive on the pool's receiver inbox, the only one its NATS
	// user may subscribe to.
	nc, err := stream.Connect(cfg.natsURL, cfg.natsCreds, "tally-receiver", log, nats.ReconnectBufSize(-1),
		natsauth.PoolInboxOption(ref, natsauth.Receiver))
	if err != nil {
		return err
	}
	defer nc.Close()
	rcv, err := newCommandReceiver(cfg, nc, log, nil)
	if err != nil {
		return err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	members := newPoolMembers(rcv, cfg.sharedSecretsDir, log)
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go members.watch(watchCtx, js, ref)
	go members.watchSecrets(watchCtx, cfg.reloadInterval)
	return serve(ctx, cfg, rcv, members.gate(rcv.Handler()), nc, log, ready, "pool", ref.String())
}

// gate keeps a pool receiver out of service until it has its members: /readyz answers 503, and
// so does the Tracking API (with Retry-After), never a 401 that Segment would take as final.
func (p *poolMembers) gate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if p.loaded.Load() {
			next.ServeHTTP(w, req)
			return
		}
		switch {
		case req.URL.Path == "/readyz":
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("pool members not loaded yet\n"))
		case strings.HasPrefix(req.URL.Path, "/v1/") && req.Method != http.MethodOptions:
			allowAnyOrigin(w.Header())
			w.Header().Set("Retry-After", retryAfterSeconds)
			writeError(w, http.StatusServiceUnavailable, codeUnavailable, "the receiver is starting; retry later")
		default:
			next.ServeHTTP(w, req)
		}
	})
}

// watch follows the pool's bucket until ctx ends; while it is away, the last known members stay.
func (p *poolMembers) watch(ctx context.Context, js jetstream.JetStream, ref pool.Ref) {
	pool.Follow(ctx, js, ref, p.setMembers, p.badEntry, func(err error) {
		p.log.Warn("cannot watch the pool's members; serving the last known ones", "bucket", ref.Bucket(), "error", err)
	})
}
