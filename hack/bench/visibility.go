package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/tallyhq/tally/workers/source"
)

// visibilityWatch records when each sent track call's row became visible in tally.events, by
// looking up the oldest still-missing messageIds every few milliseconds (an index lookup on the
// table's unique key), paced so that the watch itself stays cheap (pollPacer).
type visibilityWatch struct {
	e       *env
	tenant  string
	mu      sync.Mutex
	pending []pendingRow // in send order
	found   []time.Duration
	done    chan struct{}
	pace    pollPacer
}

type pendingRow struct {
	id     string
	sentAt time.Time
}

func newVisibilityWatch(e *env, src *source.Config) *visibilityWatch {
	return &visibilityWatch{e: e, tenant: src.Tenant, done: make(chan struct{})}
}

func (w *visibilityWatch) sent(ids []string, at time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, id := range ids {
		w.pending = append(w.pending, pendingRow{id: id, sentAt: at})
	}
}

// forget stops waiting for ids whose request was refused.
func (w *visibilityWatch) forget(ids []string) {
	drop := make(map[string]bool, len(ids))
	for _, id := range ids {
		drop[id] = true
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	kept := w.pending[:0]
	for _, p := range w.pending {
		if !drop[p.id] {
			kept = append(kept, p)
		}
	}
	w.pending = kept
}

// poll runs until ctx ends, or until finish was called and nothing is pending.
func (w *visibilityWatch) poll(ctx context.Context) error {
	const window = 5000
	for ctx.Err() == nil {
		w.mu.Lock()
		batch := append([]pendingRow(nil), w.pending[:min(window, len(w.pending))]...)
		w.mu.Unlock()
		if len(batch) == 0 {
			select {
			case <-w.done:
				return nil
			case <-time.After(5 * time.Millisecond):
				continue
			}
		}
		ids := make([]string, len(batch))
		for i, p := range batch {
			ids[i] = p.id
		}
		start := time.Now()
		rows, err := w.e.pool.Query(ctx, `SELECT message_id FROM tally.events WHERE tenant = $1 AND message_id = ANY($2)`, w.tenant, ids)
		if err != nil {
			return err
		}
		seenAt := time.Now()
		visible := map[string]bool{}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return err
			}
			visible[id] = true
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		took := time.Since(start)
		w.mu.Lock()
		kept := w.pending[:0]
		for i, p := range w.pending {
			if i < len(batch) && visible[p.id] {
				w.found = append(w.found, seenAt.Sub(p.sentAt))
				continue
			}
			kept = append(kept, p)
		}
		w.pending = kept
		w.mu.Unlock()
		w.pace.wait(ctx, took)
	}
	return ctx.Err()
}

// pollPacer spaces a watch's look-ups so that the watch spends at most a tenth of its time in
// them, whatever it waits for: after a look-up that took d (its query and its rows, not the
// watch's own bookkeeping), the next starts max(5 ms, 9d) later. A look-up's cost grows with the
// rows still pending, so a watch polling 5 ms after each took a larger share of the cores the
// more the system it measures fell behind. A row that became visible is seen within a pause and
// a look-up or two: 5 ms and a fraction while look-ups take half a millisecond or less.
type pollPacer struct {
	mu   sync.Mutex
	busy time.Duration // the look-ups' total time (the many-tenants phase reports its share)
	// sleep pauses for d or until ctx ends; sleepUntil when nil (tests record the pauses).
	sleep func(ctx context.Context, d time.Duration)
}

func (p *pollPacer) wait(ctx context.Context, took time.Duration) {
	p.mu.Lock()
	p.busy += took
	p.mu.Unlock()
	pause := pollPause(took)
	if p.sleep != nil {
		p.sleep(ctx, pause)
		return
	}
	sleepUntil(ctx, time.Now().Add(pause))
}

// pollPause is the pause after a look-up that took took.
func pollPause(took time.Duration) time.Duration { return max(5*time.Millisecond, 9*took) }

// busyTime is how long the look-ups have taken so far.
func (p *pollPacer) busyTime() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.busy
}

// finish tells poll to return once nothing is pending.
func (w *visibilityWatch) finish() { close(w.done) }

func (w *visibilityWatch) latencies() []time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]time.Duration(nil), w.found...)
}

// awaitVisible lets a watch see the last committed rows (every row is committed when it is
// called), stops it and returns the latencies it measured.
func awaitVisible(finish func(), polled <-chan error, latencies func() []time.Duration) ([]time.Duration, error) {
	finish()
	select {
	case err := <-polled:
		if err != nil {
			return nil, err
		}
	case <-time.After(30 * time.Second):
		return nil, fmt.Errorf("committed rows not visible after 30s")
	}
	lat := latencies()
	if len(lat) == 0 {
		return nil, fmt.Errorf("no row became visible")
	}
	return lat, nil
}
