// Package natsauth issues the NATS users of a SegmentSource's pods when NATS runs in decentralized
// JWT mode: the manager (and tally local) holds an account signing key and signs, for each source,
// a receiver user that may only publish the source's messages and a worker user that may only
// consume the source's consumer and publish its dead letters. Streams are managed by the holder of
// the account's full credentials alone.
//
// The permissions are derived from what the receiver and the worker call on the wire, nothing
// more. Every reply (a PubAck, a fetched message, a consumer info) comes back on an inbox whose
// prefix names the source and the role, so no user can subscribe to another's replies: a worker's
// fetched messages arrive on its inbox, and a shared _INBOX.> would let any tenant read them.
package natsauth

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/tallyhq/tally/workers/natsserver"
	"github.com/tallyhq/tally/workers/pool"
	"github.com/tallyhq/tally/workers/stream"
)

// Role is the process a user is issued for.
type Role string

// The roles of a source's pods.
const (
	Receiver Role = "receiver"
	Worker   Role = "worker"
)

// Roles are every role a source gets a user for.
var Roles = []Role{Receiver, Worker}

// InboxPrefix is where the role's replies arrive: the receiver and the worker connect with it
// (nats.CustomInboxPrefix) whether NATS checks users or not, and the role's user may subscribe to
// nothing else. It stays under _INBOX., so hand-written permissions allowing _INBOX.> still work.
func InboxPrefix(src stream.Source, role Role) string {
	return "_INBOX.tally." + src.Namespace + "." + src.Name + "." + string(role)
}

// InboxOption is the connection option that puts the role's replies under InboxPrefix.
func InboxOption(src stream.Source, role Role) nats.Option {
	return nats.CustomInboxPrefix(InboxPrefix(src, role))
}

// PoolInboxPrefix is where the replies of a SegmentSourcePool's pods of the role arrive. The
// "tallypool" token keeps it apart from every source's inbox (a source named like the pool in a
// namespace named "pool" included).
func PoolInboxPrefix(p pool.Ref, role Role) string {
	return "_INBOX.tallypool." + p.Namespace + "." + p.Name + "." + string(role)
}

// PoolInboxOption is the connection option that puts the pool role's replies under
// PoolInboxPrefix.
func PoolInboxOption(p pool.Ref, role Role) nats.Option {
	return nats.CustomInboxPrefix(PoolInboxPrefix(p, role))
}

// Permissions are what a role of src may do, and nothing else:
//
//   - receiver: publish the source's messages (tally.<ns>.<name>.msg.>, partitioned or not; a
//     JetStream publish, single or atomic batch, is a plain publish whose PubAck comes back on the
//     inbox). It calls no JetStream API: it never looks the stream up.
//   - worker: look its durable consumers up ($JS.API.CONSUMER.INFO.<stream>.*: workers and one
//     per partition, workers-<p>), create them again when the server forgot them
//     ($JS.API.CONSUMER.CREATE.<stream>.*, with or without a filter token: memory-stored
//     consumers do not survive a single server's restart), fetch from them
//     ($JS.API.CONSUMER.MSG.NEXT.<stream>.*), acknowledge, nak and mark in progress the messages
//     it fetched ($JS.ACK.<stream>.*.>, and the v2 ack subjects with domain and account hash that
//     a server may be switched to), purge what its consumers acknowledged from the source's stream
//     ($JS.API.STREAM.PURGE.<stream>, see stream.PurgeAcknowledged), and publish dead letters to
//     the source's dead-letter subject.
//
// Both may subscribe to their own inbox only. Neither may call any other JetStream API: no stream
// is created, changed, read or deleted with these users (a worker purges only its own message
// stream, whose messages it may already acknowledge away), nor a consumer of another stream.
func Permissions(src stream.Source, role Role) jwt.Permissions {
	var p jwt.Permissions
	p.Sub.Allow.Add(InboxPrefix(src, role) + ".>")
	switch role {
	case Receiver:
		p.Pub.Allow.Add(src.MessageSubjects())
	case Worker:
		// "*": any consumer of its own stream, the partition consumers (workers-<p>) included.
		name, consumer := src.StreamName(), "*"
		p.Pub.Allow.Add(
			"$JS.API.CONSUMER.INFO."+name+"."+consumer,
			"$JS.API.CONSUMER.CREATE."+name+"."+consumer,
			"$JS.API.CONSUMER.CREATE."+name+"."+consumer+".>",
			"$JS.API.CONSUMER.MSG.NEXT."+name+"."+consumer,
			"$JS.API.STREAM.PURGE."+name,
			"$JS.ACK."+name+"."+consumer+".>",
			"$JS.ACK.*.*."+name+"."+consumer+".>",
			src.DeadLetterSubject(),
		)
	}
	return p
}

// UserName names the user of a role in the server's logs and monitoring.
func UserName(src stream.Source, role Role) string {
	return "tally-" + string(role) + "-" + src.Namespace + "-" + src.Name
}

// Issuer signs users with an account signing key.
type Issuer struct {
	key        nkeys.KeyPair
	signingKey string // the key's public key
	account    string // the account's public key
}

// NewIssuer reads an account signing key (an nkey seed, "SA...", raw or as in a creds file).
// account is the public key of the account the key signs for ("A..."); when empty, the key must
// be the account's own identity key, whose public key is the account. A separate signing key
// needs the account named, as user JWTs carry it.
func NewIssuer(seed []byte, account string) (*Issuer, error) {
	seed = bytes.TrimSpace(seed)
	kp, err := nkeys.FromSeed(seed)
	if err != nil {
		if kp, err = jwt.ParseDecoratedNKey(seed); err != nil {
			return nil, errors.New("the account signing key is not an nkey seed")
		}
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, err
	}
	if !nkeys.IsValidPublicAccountKey(pub) {
		return nil, fmt.Errorf("the signing key %s is not an account key (its seed must start with SA)", pub)
	}
	account = strings.TrimSpace(account)
	if account == "" {
		account = pub
	}
	if !nkeys.IsValidPublicAccountKey(account) {
		return nil, fmt.Errorf("%q is not an account public key (A...)", account)
	}
	return &Issuer{key: kp, signingKey: pub, account: account}, nil
}

// Account is the public key of the account users are issued in.
func (i *Issuer) Account() string { return i.account }

// SigningKey is the public key users are signed with.
func (i *Issuer) SigningKey() string { return i.signingKey }

// Issue returns a creds file (JWT and seed, as nats.UserCredentials reads it) for a fresh user of
// the role, valid until expires (never when zero).
func (i *Issuer) Issue(src stream.Source, role Role, expires time.Time) ([]byte, error) {
	return i.IssueUser(UserName(src, role), Permissions(src, role), expires)
}

// IssueUser signs a user of the given name and permissions with a fresh user key. Empty
// permissions allow everything the account may do: that is an administrator (tally local's and the
// tests' own connection), never a source's pod.
func (i *Issuer) IssueUser(name string, perms jwt.Permissions, expires time.Time) ([]byte, error) {
	user, err := nkeys.CreateUser()
	if err != nil {
		return nil, err
	}
	pub, err := user.PublicKey()
	if err != nil {
		return nil, err
	}
	seed, err := user.Seed()
	if err != nil {
		return nil, err
	}
	claims := jwt.NewUserClaims(pub)
	claims.Name = name
	claims.Permissions = perms
	claims.AllowedConnectionTypes.Add(jwt.ConnectionTypeStandard)
	if i.signingKey != i.account {
		claims.IssuerAccount = i.account
	}
	if !expires.IsZero() {
		claims.Expires = expires.Unix()
	}
	token, err := claims.Encode(i.key)
	if err != nil {
		return nil, fmt.Errorf("signing user %s: %w", name, err)
	}
	return jwt.FormatUserConfig(token, seed)
}

// Current reports whether creds are a user of the role that this issuer would issue now: signed by
// its key for its account, with exactly the role's permissions, and not expiring before renewAt
// (zero renewAt: users that never expire are wanted, so one with an expiry is not current).
// Anything else (another signing key after a rotation, older permissions, near expiry, garbage) is
// re-issued.
func (i *Issuer) Current(creds []byte, src stream.Source, role Role, renewAt time.Time) bool {
	return i.currentUser(creds, UserName(src, role), Permissions(src, role), renewAt)
}

// currentUser is Current for a user of the given name and permissions.
func (i *Issuer) currentUser(creds []byte, name string, want jwt.Permissions, renewAt time.Time) bool {
	token, err := jwt.ParseDecoratedJWT(creds)
	if err != nil {
		return false
	}
	if _, err := jwt.ParseDecoratedUserNKey(creds); err != nil {
		return false
	}
	claims, err := jwt.DecodeUserClaims(token)
	if err != nil {
		return false
	}
	issuerAccount := claims.IssuerAccount
	if issuerAccount == "" {
		issuerAccount = claims.Issuer
	}
	if claims.Issuer != i.signingKey || issuerAccount != i.account || claims.Name != name {
		return false
	}
	if renewAt.IsZero() != (claims.Expires == 0) || (claims.Expires != 0 && claims.Expires <= renewAt.Unix()) {
		return false // an expiry where none is wanted, none where one is, or renewal due
	}
	return samePermission(claims.Pub, want.Pub) && samePermission(claims.Sub, want.Sub) && claims.Resp == nil &&
		slices.Equal(claims.AllowedConnectionTypes, jwt.StringList{jwt.ConnectionTypeStandard})
}

// Expires is when creds expire; zero when never or unreadable.
func Expires(creds []byte) time.Time {
	token, err := jwt.ParseDecoratedJWT(creds)
	if err != nil {
		return time.Time{}
	}
	claims, err := jwt.DecodeUserClaims(token)
	if err != nil || claims.Expires == 0 {
		return time.Time{}
	}
	return time.Unix(claims.Expires, 0)
}

func samePermission(got, want jwt.Permission) bool {
	return slices.Equal(slices.Sorted(slices.Values(got.Allow)), slices.Sorted(slices.Values(want.Allow))) &&
		slices.Equal(slices.Sorted(slices.Values(got.Deny)), slices.Sorted(slices.Values(want.Deny)))
}

// CredsOption connects with the user of a creds file held in memory (tally local and the tests
// issue users without writing them to disk).
func CredsOption(creds []byte) (nats.Option, error) {
	token, err := jwt.ParseDecoratedJWT(creds)
	if err != nil {
		return nil, err
	}
	kp, err := jwt.ParseDecoratedUserNKey(creds)
	if err != nil {
		return nil, err
	}
	seed, err := kp.Seed()
	if err != nil {
		return nil, err
	}
	return nats.UserJWTAndSeed(token, string(seed)), nil
}

// EmbeddedIssuer signs users with the signing key of an embedded server's account
// (natsserver.Auth), as the operator does with the signing key of its Secret.
func EmbeddedIssuer(a *natsserver.Auth) (*Issuer, error) {
	return NewIssuer([]byte(a.SigningKeySeed), a.AccountPublicKey())
}

// EmbeddedAdminCreds is a creds file for a user with every permission of an embedded server's
// account, signed by the account's identity key: the manager's own connection (or tally local's),
// which creates and deletes streams.
func EmbeddedAdminCreds(a *natsserver.Auth) ([]byte, error) {
	issuer, err := NewIssuer([]byte(a.AccountSeed), "")
	if err != nil {
		return nil, err
	}
	return issuer.IssueUser("tally-admin", jwt.Permissions{}, time.Time{})
}
