package pool

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// FollowRecheck is how often Follow checks that the bucket it watches is still the pool's: a
// watch goes on silently when its bucket is deleted, and misses the entries of one created again.
const FollowRecheck = 5 * time.Second

// Follow is what a pool's pods run: Watch, kept up until ctx ends through a bucket that does not
// exist yet, a NATS outage, and a bucket deleted (and perhaps created again). apply gets the full
// member set once the bucket's content has arrived and after each change; while the bucket is
// away, nothing is applied, so the pods keep the members they had. problem hears of each outage
// once.
func Follow(ctx context.Context, js jetstream.JetStream, p Ref, apply func(map[string]Member),
	bad func(key string, err error), problem func(error),
) {
	failing := false
	for ctx.Err() == nil {
		delivered := false
		err := followOnce(ctx, js, p, func(m map[string]Member) { delivered = true; apply(m) }, bad)
		if ctx.Err() != nil {
			return
		}
		if delivered {
			failing = false // it worked again since the last outage
		}
		if !failing && problem != nil {
			problem(err)
		}
		failing = true
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// followOnce watches the bucket until the watch fails or the bucket is no longer the one watched.
func followOnce(ctx context.Context, js jetstream.JetStream, p Ref, apply func(map[string]Member), bad func(string, error)) error {
	kv, err := js.KeyValue(ctx, p.Bucket())
	if err != nil {
		return err
	}
	created, err := bucketCreated(ctx, kv)
	if err != nil {
		return err
	}
	watchCtx, stop := context.WithCancel(ctx)
	defer stop()
	watched := make(chan error, 1)
	go func() { watched <- Watch(watchCtx, kv, apply, bad) }()
	t := time.NewTicker(FollowRecheck)
	defer t.Stop()
	for {
		select {
		case err := <-watched:
			return err
		case <-t.C:
		}
		now, err := bucketCreated(ctx, kv)
		if err == nil && !now.Equal(created) {
			err = errors.New("the pool's bucket was created again")
		}
		if err != nil {
			stop()
			if werr := <-watched; werr != nil { // it failed on its own meanwhile
				return werr
			}
			return err
		}
	}
}

func bucketCreated(ctx context.Context, kv jetstream.KeyValue) (time.Time, error) {
	status, err := kv.Status(ctx)
	if err != nil {
		return time.Time{}, err
	}
	s, ok := status.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return time.Time{}, nil
	}
	return s.StreamInfo().Created, nil
}
