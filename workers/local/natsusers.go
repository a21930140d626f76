package local

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"

	"github.com/tallyhq/tally/workers/natsauth"
	"github.com/tallyhq/tally/workers/natsserver"
	"github.com/tallyhq/tally/workers/pool"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
)

// Files tally local keeps in its data directory when the embedded server runs in JWT mode.
const (
	// NATSKeysFile holds the operator and account keys: the streams of an account live under
	// its key in the store, so the keys stay with the data.
	NATSKeysFile = "nats-keys.json"
	// AdminCredsFile is a user with every permission of the account, for `nats` and `tally dlq
	// --nats-creds`.
	AdminCredsFile = "admin.creds"
)

// localReceiverInbox is where the PubAcks of tally local's receiver, which serves every source,
// arrive.
const localReceiverInbox = "_INBOX.tally.local.receiver"

// natsAuth is the JWT setup of the embedded server: its keys kept in dataDir, and the admin creds
// written there. A data directory written by a version without NATS users (streams of the global
// account, no keys) keeps running without auth, so its messages stay reachable; nil then.
func natsAuth(dataDir string, log *slog.Logger) (*natsserver.Auth, []byte, error) {
	keys := filepath.Join(dataDir, NATSKeysFile)
	if _, err := os.Stat(keys); errors.Is(err, os.ErrNotExist) {
		if _, err := os.Stat(filepath.Join(dataDir, "jetstream", "$G")); err == nil {
			log.Warn("the data directory predates NATS users: running NATS without auth; remove it to run as a cluster does, with a NATS user per source",
				"dataDir", dataDir)
			return nil, nil, nil
		}
	}
	auth, err := natsserver.LoadOrCreateAuth(keys)
	if err != nil {
		return nil, nil, err
	}
	admin, err := natsauth.EmbeddedAdminCreds(auth)
	if err != nil {
		return nil, nil, err
	}
	if err := os.WriteFile(filepath.Join(dataDir, AdminCredsFile), admin, 0o600); err != nil {
		return nil, nil, err
	}
	return auth, admin, nil
}

// natsUsers connects tally local's receiver and workers as NATS users issued the way the operator
// issues them, so a local run meets the permissions a cluster enforces.
type natsUsers struct {
	url    string
	issuer *natsauth.Issuer
	mu     sync.Mutex
	conns  []*nats.Conn
}

func newNATSUsers(url string, auth *natsserver.Auth) (*natsUsers, error) {
	issuer, err := natsauth.EmbeddedIssuer(auth)
	if err != nil {
		return nil, err
	}
	return &natsUsers{url: url, issuer: issuer}, nil
}

// receiver connects the one receiver serving every source: it may publish each source's
// messages, as each source's own receiver may, and nothing else.
func (u *natsUsers) receiver(sources []*source.Config) (*nats.Conn, error) {
	var perms jwt.Permissions
	for _, src := range sources {
		perms.Pub.Allow.Add(natsauth.Permissions(src.Stream(), natsauth.Receiver).Pub.Allow...)
	}
	perms.Sub.Allow.Add(localReceiverInbox + ".>")
	if len(perms.Pub.Allow) == 0 {
		perms.Pub.Deny.Add(">") // no source: publish nothing (an empty allow list would allow all)
	}
	creds, err := u.issuer.IssueUser("tally-local-receiver", perms, time.Time{})
	if err != nil {
		return nil, err
	}
	// Publishing while disconnected fails at once, as in `tally receiver`.
	return u.connect(creds, "tally-local-receiver", nats.CustomInboxPrefix(localReceiverInbox), nats.ReconnectBufSize(-1))
}

// worker connects the workers of src with the source's worker user.
func (u *natsUsers) worker(src *source.Config) (*nats.Conn, error) {
	creds, err := u.issuer.Issue(src.Stream(), natsauth.Worker, time.Time{})
	if err != nil {
		return nil, err
	}
	return u.connect(creds, "tally-local-worker", natsauth.InboxOption(src.Stream(), natsauth.Worker))
}

// poolWorker connects a SegmentSourcePool's workers with the pool's worker user.
func (u *natsUsers) poolWorker(p pool.Ref) (*nats.Conn, error) {
	creds, err := u.issuer.IssuePool(p, natsauth.Worker, time.Time{})
	if err != nil {
		return nil, err
	}
	return u.connect(creds, "tally-local-pool-worker", natsauth.PoolInboxOption(p, natsauth.Worker))
}

func (u *natsUsers) connect(creds []byte, name string, extra ...nats.Option) (*nats.Conn, error) {
	opt, err := natsauth.CredsOption(creds)
	if err != nil {
		return nil, err
	}
	nc, err := nats.Connect(u.url, append([]nats.Option{opt, nats.Name(name), nats.MaxReconnects(-1)}, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("nats %s: %w", name, err)
	}
	u.mu.Lock()
	u.conns = append(u.conns, nc)
	u.mu.Unlock()
	return nc, nil
}

// drain flushes every user's connection (the workers' last acks) and closes it.
func (u *natsUsers) drain(ctx context.Context) error {
	u.mu.Lock()
	conns := u.conns
	u.conns = nil
	u.mu.Unlock()
	var errs []error
	for _, nc := range conns {
		errs = append(errs, stream.Drain(ctx, nc))
	}
	return errors.Join(errs...)
}
