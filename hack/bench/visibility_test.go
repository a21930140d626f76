package main

import (
	"context"
	"testing"
	"time"
)

// A watch polls every 5 ms while its look-ups are quick, and never spends more than a tenth of
// its time in them when they are not.
func TestPollPauseBoundsTheWatchsShare(t *testing.T) {
	for _, took := range []time.Duration{0, 100 * time.Microsecond, 550 * time.Microsecond, 2 * time.Millisecond, 40 * time.Millisecond} {
		pause := pollPause(took)
		if pause < 5*time.Millisecond {
			t.Errorf("after a %v look-up the watch polls again in %v, under the 5 ms floor", took, pause)
		}
		if share := float64(took) / float64(took+pause); share > 0.1+1e-9 {
			t.Errorf("a %v look-up with a %v pause takes %.0f%% of the watch's time, more than a tenth", took, pause, 100*share)
		}
	}
	if got := pollPause(time.Millisecond); got != 9*time.Millisecond {
		t.Errorf("a 1 ms look-up is followed by %v, want 9 ms (a tenth of the time in look-ups)", got)
	}
}

func TestPollPacerAddsUpTheLookUps(t *testing.T) {
	var p pollPacer
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // no pause: only the bookkeeping is under test
	p.wait(ctx, 3*time.Millisecond)
	p.wait(ctx, 4*time.Millisecond)
	if got := p.busyTime(); got != 7*time.Millisecond {
		t.Fatalf("busy %v, want 7ms", got)
	}
}
