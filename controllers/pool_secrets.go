package controllers

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"maps"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/tallyhq/tally/controllers/resources"
)

// A pool's Secrets hold one set of keys per member, written by the members' reconciles. A
// thousand members joining at once must not become a thousand patches of one growing Secret
// racing each other in the API server: the patches of the members reconciled within
// memberKeysWindow go out as one merge patch, one at a time per Secret, and a member whose keys
// were written lately (memberKeysRecheck) writes nothing.
const (
	memberKeysWindow  = 200 * time.Millisecond
	memberKeysRecheck = 10 * time.Minute
)

type memberKeysWritten struct {
	hash string
	at   time.Time
}

type memberKeysBatch struct {
	values map[string]any // key: base64 value, or nil to remove it
	done   chan struct{}
	err    error
}

// memberKeys batches and remembers the writes into pools' Secrets.
type memberKeys struct {
	mu      sync.Mutex
	open    map[types.NamespacedName]*memberKeysBatch
	serial  sync.Map // NamespacedName -> *sync.Mutex: one patch at a time per Secret
	written sync.Map // "<secret uid>/<member>" -> memberKeysWritten
}

// patchMemberKeys sets the member's keys of a pool Secret to data, removing those of keys that
// data lacks, without touching any other member's keys. A missing Secret is waited for (the pool
// makes it), or nothing to do when data is empty.
func (r *SegmentSourceReconciler) patchMemberKeys(ctx context.Context, namespace, name, member string, keys []string, data map[string][]byte) error {
	key := types.NamespacedName{Namespace: namespace, Name: name}
	m := secretMetadata()
	err := r.cachedGet(ctx, key, m)
	if apierrors.IsNotFound(err) {
		if len(data) == 0 {
			return nil
		}
		return waiting(ReasonProgressing, poolRequeue, "Secret %s/%s of the pool does not exist yet", namespace, name)
	}
	if err != nil {
		return transient(ReasonReconcileError, err, "reading Secret %s/%s", namespace, name)
	}
	want := ""
	if len(data) > 0 {
		want = resources.Hash(data)
	}
	memo := string(m.GetUID()) + "/" + member
	if w, ok := r.memberKeys.written.Load(memo); ok && w.(memberKeysWritten).hash == want && time.Since(w.(memberKeysWritten).at) < memberKeysRecheck {
		return nil
	}
	values := map[string]any{}
	for _, k := range keys {
		if v, ok := data[k]; ok {
			values[k] = base64.StdEncoding.EncodeToString(v)
		} else {
			values[k] = nil
		}
	}
	if err := r.memberKeys.submit(ctx, r, key, values); err != nil {
		if apierrors.IsNotFound(err) && len(data) == 0 {
			return nil
		}
		return transient(ReasonReconcileError, err, "writing the keys of %s into Secret %s/%s", member, namespace, name)
	}
	r.memberKeys.written.Store(memo, memberKeysWritten{hash: want, at: time.Now()})
	return nil
}

// submit adds values to the Secret's open batch (opening one, flushed after memberKeysWindow)
// and waits for its patch.
func (b *memberKeys) submit(ctx context.Context, r *SegmentSourceReconciler, key types.NamespacedName, values map[string]any) error {
	b.mu.Lock()
	if b.open == nil {
		b.open = map[types.NamespacedName]*memberKeysBatch{}
	}
	batch, ok := b.open[key]
	if !ok {
		batch = &memberKeysBatch{values: map[string]any{}, done: make(chan struct{})}
		b.open[key] = batch
		go b.flush(r, key, batch)
	}
	maps.Copy(batch.values, values)
	b.mu.Unlock()
	select {
	case <-batch.done:
		return batch.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (b *memberKeys) flush(r *SegmentSourceReconciler, key types.NamespacedName, batch *memberKeysBatch) {
	defer close(batch.done)
	time.Sleep(memberKeysWindow)
	lock, _ := b.serial.LoadOrStore(key, &sync.Mutex{})
	lock.(*sync.Mutex).Lock()
	defer lock.(*sync.Mutex).Unlock()
	b.mu.Lock()
	delete(b.open, key)
	b.mu.Unlock()
	patch, err := json.Marshal(map[string]any{"data": batch.values})
	if err != nil {
		batch.err = err
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	target := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}}
	if batch.err = r.Patch(ctx, target, client.RawPatch(types.MergePatchType, patch), client.FieldOwner(FieldOwner)); batch.err == nil {
		r.Metrics.Applied("Secret")
	}
}
