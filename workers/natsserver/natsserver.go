// Package natsserver runs an embedded NATS server with JetStream, for tally local, the bench and
// the tests: the same server a cluster runs, in-process, on a loopback port. With Options.Auth it
// runs in decentralized JWT mode, as a cluster with per-source NATS users does: an operator, a
// system account and the account Tally's streams live in, preloaded into a memory resolver.
package natsserver

import (
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
)

// Options shape the embedded server.
type Options struct {
	// Host and Port to listen on; Port -1 picks a free port.
	Host string
	Port int
	// StoreDir holds JetStream's files.
	StoreDir string
	// SyncAlways makes JetStream fsync every write before acknowledging it, so an acknowledged
	// message survives an OS crash on a single node; the default syncs every two minutes.
	SyncAlways bool
	// Name is the server's name, unique within a cluster; "tally-embedded" when empty.
	Name string
	// Cluster, when set, makes the server one node of a JetStream cluster (see Cluster, StartCluster).
	Cluster *Cluster
	// Auth, when set, runs the server in decentralized JWT mode with these keys: every client
	// needs a user JWT signed for the account (natsauth.EmbeddedAdminCreds, or natsauth.EmbeddedIssuer on
	// Auth.SigningKeySeed). Restart with the same Auth to find the same streams.
	Auth *Auth
}

// Start runs a server and waits until it accepts connections.
func Start(o Options) (*server.Server, error) {
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if o.Port == 0 {
		o.Port = -1
	}
	if o.Name == "" {
		o.Name = "tally-embedded"
	}
	opts := &server.Options{
		ServerName: o.Name,
		Host:       o.Host,
		Port:       o.Port,
		JetStream:  true,
		StoreDir:   o.StoreDir,
		SyncAlways: o.SyncAlways,
		NoSigs:     true,
		NoLog:      true,
		MaxPayload: 8 << 20,
	}
	if c := o.Cluster; c != nil {
		opts.Cluster = server.ClusterOpts{Name: c.Name, Host: o.Host, Port: c.Port}
		opts.Routes = server.RoutesFromStr(strings.Join(c.Routes, ","))
	}
	if o.Auth != nil {
		if err := o.Auth.configure(opts); err != nil {
			return nil, fmt.Errorf("nats server: %w", err)
		}
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("nats server: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(15 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("nats server did not start listening on %s:%d", o.Host, o.Port)
	}
	return ns, nil
}

// configure sets the trusted operator, the system account and a memory resolver preloaded with
// the two accounts' JWTs (the embedded form of `resolver: MEMORY` plus `resolver_preload`).
func (a *Auth) configure(opts *server.Options) error {
	k, err := a.keys()
	if err != nil {
		return err
	}
	operator := jwt.NewOperatorClaims(k.operatorPub)
	operator.Name = "tally-embedded"
	operator.SystemAccount = k.systemPub
	operatorJWT, err := operator.Encode(k.operator)
	if err != nil {
		return err
	}
	// The claims as a server reads them from a file: decoded from the signed JWT.
	trusted, err := jwt.DecodeOperatorClaims(operatorJWT)
	if err != nil {
		return err
	}

	system := jwt.NewAccountClaims(k.systemPub)
	system.Name = "SYS"
	systemJWT, err := system.Encode(k.operator)
	if err != nil {
		return err
	}

	account := jwt.NewAccountClaims(k.accountPub)
	account.Name = AccountName
	account.SigningKeys.Add(k.signingPub)
	account.Limits.JetStreamLimits = jwt.JetStreamLimits{
		MemoryStorage: jwt.NoLimit, DiskStorage: jwt.NoLimit, Streams: jwt.NoLimit, Consumer: jwt.NoLimit,
		MaxAckPending: jwt.NoLimit,
	}
	accountJWT, err := account.Encode(k.operator)
	if err != nil {
		return err
	}

	resolver := &server.MemAccResolver{}
	if err := resolver.Store(k.systemPub, systemJWT); err != nil {
		return err
	}
	if err := resolver.Store(k.accountPub, accountJWT); err != nil {
		return err
	}
	opts.TrustedOperators = []*jwt.OperatorClaims{trusted}
	opts.SystemAccount = k.systemPub
	opts.AccountResolver = resolver
	return nil
}
