// Package pool is the contract between the operator and the pods of a SegmentSourcePool: which
// sources are members, with which settings, and with which write keys (as SHA-256 digests, never
// the keys). The operator keeps one JetStream key-value bucket per pool, one entry per member;
// the pool's receivers and workers watch it, so a member joining, leaving or rotating its key
// reaches every pod within a second, without a restart or a rollout.
package pool

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tallyhq/tally/workers/source"
)

// Ref names a SegmentSourcePool.
type Ref struct {
	Namespace string
	Name      string
}

func (p Ref) String() string { return p.Namespace + "/" + p.Name }

// ParseRef reads "namespace/name".
func ParseRef(s string) (Ref, error) {
	ns, name, ok := strings.Cut(s, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return Ref{}, fmt.Errorf("pool %q: want namespace/name", s)
	}
	return Ref{Namespace: ns, Name: name}, nil
}

// Bucket is the key-value bucket holding the pool's members. Namespace and name are DNS labels
// (no '.' or '_'), so the name is unambiguous.
func (p Ref) Bucket() string { return "TALLY_POOL_" + p.Namespace + "_" + p.Name }

// Member is one source of the pool as its pods see it.
type Member struct {
	// Source holds the member's settings as a dedicated source's ConfigMap does (no keys).
	Source source.Config `json:"source"`
	// WriteKeyDigests are the lowercase hex SHA-256 digests of the member's write keys.
	WriteKeyDigests []string `json:"writeKeyDigests"`
	// Suspended members are refused by the receivers (503) and not consumed by the workers; their
	// stream and rows are kept.
	Suspended bool `json:"suspended,omitempty"`
}

// Key is the member's key in the bucket: "<namespace>.<name>".
func Key(src source.Config) string { return src.Namespace + "." + src.Name }

// DigestKey is the digest a Member carries for a write key.
func DigestKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// DigestKeys are the digests of keys, in their order.
func DigestKeys(keys []string) []string {
	digests := make([]string, len(keys))
	for i, k := range keys {
		digests[i] = DigestKey(k)
	}
	return digests
}

// Config is the member's source settings with its key digests, ready for a receiver or worker.
func (m Member) Config() (*source.Config, error) {
	c := m.Source
	c.WriteKeys, c.SharedSecrets, c.Insights = nil, nil, nil
	if m.Source.Insights != nil {
		in := *m.Source.Insights
		c.Insights = &in
	}
	c.WriteKeyDigests = make([][sha256.Size]byte, 0, len(m.WriteKeyDigests))
	for _, d := range m.WriteKeyDigests {
		var sum [sha256.Size]byte
		if b, err := hex.DecodeString(d); err != nil || len(b) != sha256.Size {
			return nil, fmt.Errorf("member %s: a write key digest is not hex SHA-256", Key(c))
		} else {
			copy(sum[:], b)
		}
		c.WriteKeyDigests = append(c.WriteKeyDigests, sum)
	}
	return &c, c.Validate()
}

func (m Member) encode() ([]byte, error) { return json.Marshal(m) }

func decode(data []byte) (Member, error) {
	var m Member
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	return m, dec.Decode(&m)
}

// BucketConfig is the pool's bucket: one value per key (no history), on file storage with the
// replicas of the pool's streams.
func BucketConfig(p Ref, replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      p.Bucket(),
		Description: "Members of SegmentSourcePool " + p.String(),
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
		MaxBytes:    64 << 20,
	}
}

// EnsureBucket creates or updates the pool's bucket (the operator).
func EnsureBucket(ctx context.Context, js jetstream.JetStream, p Ref, replicas int) (jetstream.KeyValue, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, BucketConfig(p, replicas))
	if err != nil {
		return nil, fmt.Errorf("pool bucket %s: %w", p.Bucket(), err)
	}
	return kv, nil
}

// DeleteBucket removes the pool's bucket; a missing one is not an error.
func DeleteBucket(ctx context.Context, js jetstream.JetStream, p Ref) error {
	if err := js.DeleteKeyValue(ctx, p.Bucket()); err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
		return fmt.Errorf("pool bucket %s: %w", p.Bucket(), err)
	}
	return nil
}

// Put writes the member unless the bucket already holds exactly it, so a periodic check of an
// unchanged pool writes nothing. It reports whether it wrote.
func Put(ctx context.Context, kv jetstream.KeyValue, m Member) (bool, error) {
	data, err := m.encode()
	if err != nil {
		return false, err
	}
	key := Key(m.Source)
	cur, err := kv.Get(ctx, key)
	switch {
	case err == nil && bytes.Equal(cur.Value(), data):
		return false, nil
	case err != nil && !errors.Is(err, jetstream.ErrKeyNotFound):
		return false, fmt.Errorf("member %s: %w", key, err)
	}
	if _, err := kv.Put(ctx, key, data); err != nil {
		return false, fmt.Errorf("member %s: %w", key, err)
	}
	return true, nil
}

// Remove deletes the member's entry (purging its history); a missing one is not an error.
func Remove(ctx context.Context, kv jetstream.KeyValue, namespace, name string) error {
	key := namespace + "." + name
	if err := kv.Purge(ctx, key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("member %s: %w", key, err)
	}
	return nil
}

// Watch calls apply with every member of the pool, first once the bucket's current content has
// arrived and then after each change, until ctx ends. Entries that do not decode are skipped and
// reported to bad (they never take a valid member's place). It returns when ctx ends or the watch
// fails.
func Watch(ctx context.Context, kv jetstream.KeyValue, apply func(map[string]Member), bad func(key string, err error)) error {
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = w.Stop() }()
	members := map[string]Member{}
	initial := true
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("pool watch closed")
			}
			if e == nil { // the marker after the current content
				initial = false
				apply(clone(members))
				continue
			}
			switch e.Operation() {
			case jetstream.KeyValueDelete, jetstream.KeyValuePurge:
				delete(members, e.Key())
			default:
				m, err := decode(e.Value())
				if err != nil {
					delete(members, e.Key())
					if bad != nil {
						bad(e.Key(), err)
					}
				} else {
					members[e.Key()] = m
				}
			}
			if !initial {
				apply(clone(members))
			}
		}
	}
}

// List reads every member (the operator's view when it prunes members that left).
func List(ctx context.Context, kv jetstream.KeyValue) (map[string]Member, error) {
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	members := map[string]Member{}
	for key := range keys.Keys() {
		e, err := kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if m, err := decode(e.Value()); err == nil {
			members[key] = m
		}
	}
	return members, nil
}

func clone(m map[string]Member) map[string]Member {
	out := make(map[string]Member, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
