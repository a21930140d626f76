package natsauth

import (
	"time"

	"github.com/nats-io/jwt/v2"

	"github.com/tallyhq/tally/workers/pool"
)

// PoolPermissions are what a role of a SegmentSourcePool's pods may do. A pool's pods are trusted
// with every member's subjects, and as subjects cannot name "the members of a pool", with every
// source's: the receiver keeps tenants apart by routing each request by its write key (it knows
// only digests of the members' keys), and the workers write each member's rows under that member
// tenant's own Postgres login. Neither may create, change or delete a stream or consumer, nor
// write the pool's bucket.
//
//   - both: read the pool's bucket as pool.Watch does (look the bucket's stream up, create,
//     inspect and delete the ordered consumer a watch runs on, answer its flow control, direct
//     and stored-message gets), and subscribe to their own inbox only.
//   - receiver: publish any source's messages (tally.*.*.msg.>).
//   - worker: inspect, create again (see Permissions), fetch from and acknowledge any stream's
//     consumers (the sources' workers and workers-<p>), purge what they acknowledged from any
//     stream but the pool's bucket (stream names have no token to match the sources' alone, and
//     acknowledging is as strong), and publish any source's dead letters (tally.*.*.dlq).
func PoolPermissions(p pool.Ref, role Role) jwt.Permissions {
	var perms jwt.Permissions
	perms.Sub.Allow.Add(PoolInboxPrefix(p, role) + ".>")
	kv := "KV_" + p.Bucket()
	perms.Pub.Allow.Add(
		"$JS.API.STREAM.INFO."+kv,
		"$JS.API.CONSUMER.CREATE."+kv,
		"$JS.API.CONSUMER.CREATE."+kv+".>",
		"$JS.API.CONSUMER.INFO."+kv+".*",
		"$JS.API.CONSUMER.DELETE."+kv+".*",
		"$JS.API.DIRECT.GET."+kv,
		"$JS.API.DIRECT.GET."+kv+".>",
		"$JS.API.STREAM.MSG.GET."+kv,
		"$JS.FC."+kv+".>",
	)
	switch role {
	case Receiver:
		perms.Pub.Allow.Add("tally.*.*.msg.>")
	case Worker:
		// Any consumer of any stream: the consumers are named workers and workers-0 … workers-63
		// (partitions), NATS wildcards match whole tokens only, and listing the 65 names makes a
		// user JWT larger than the server's 4 KiB control line. The account holds no consumers but
		// the workers' and the ordered ones of bucket watches, which cannot be fetched from.
		perms.Pub.Allow.Add(
			"$JS.API.CONSUMER.INFO.*.*",
			"$JS.API.CONSUMER.CREATE.*.*",
			"$JS.API.CONSUMER.CREATE.*.*.>",
			"$JS.API.CONSUMER.MSG.NEXT.*.*",
			"$JS.API.STREAM.PURGE.*",
			"$JS.ACK.*.*.>",
			"tally.*.*.dlq",
		)
		perms.Pub.Deny.Add("$JS.API.STREAM.PURGE." + kv)
	}
	return perms
}

// PoolUserName names the user of a pool role in the server's logs and monitoring.
func PoolUserName(p pool.Ref, role Role) string {
	return "tally-pool-" + string(role) + "-" + p.Namespace + "-" + p.Name
}

// IssuePool returns a creds file for a fresh user of the pool role, valid until expires (never
// when zero).
func (i *Issuer) IssuePool(p pool.Ref, role Role, expires time.Time) ([]byte, error) {
	return i.IssueUser(PoolUserName(p, role), PoolPermissions(p, role), expires)
}

// CurrentPool is Current for a pool role's user.
func (i *Issuer) CurrentPool(creds []byte, p pool.Ref, role Role, renewAt time.Time) bool {
	return i.currentUser(creds, PoolUserName(p, role), PoolPermissions(p, role), renewAt)
}
