package controllers

import (
	"context"
	"errors"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tallyhq/tally/workers/pool"
)

// buckets keeps one handle per pool bucket, so a thousand members re-checked every interval do
// not each look the bucket up (a stream info request) before reading their entry.
type buckets struct{ m sync.Map }

// get returns the pool's bucket; create makes it when missing (the pool's reconcile), else a
// missing bucket is jetstream.ErrBucketNotFound.
func (b *buckets) get(ctx context.Context, js jetstream.JetStream, ref pool.Ref, create bool) (jetstream.KeyValue, error) {
	if kv, ok := b.m.Load(ref); ok {
		return kv.(jetstream.KeyValue), nil
	}
	kv, err := js.KeyValue(ctx, ref.Bucket())
	if errors.Is(err, jetstream.ErrBucketNotFound) && create {
		kv, err = pool.EnsureBucket(ctx, js, ref, 1)
	}
	if err != nil {
		return nil, err
	}
	b.m.Store(ref, kv)
	return kv, nil
}

// forget drops a handle: the bucket was deleted, or a request on it failed.
func (b *buckets) forget(ref pool.Ref) { b.m.Delete(ref) }
