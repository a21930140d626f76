package main

import (
	"context"
	"slices"
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

// The watch pauses as pollPause says after each look-up, and adds the look-ups up for the report.
func TestPollPacerPausesAndAddsUpTheLookUps(t *testing.T) {
	var pauses []time.Duration
	p := pollPacer{sleep: func(_ context.Context, d time.Duration) { pauses = append(pauses, d) }}
	p.wait(context.Background(), 300*time.Microsecond)
	p.wait(context.Background(), 4*time.Millisecond)
	if want := []time.Duration{5 * time.Millisecond, 36 * time.Millisecond}; !slices.Equal(pauses, want) {
		t.Errorf("paused %v, want %v", pauses, want)
	}
	if got := p.busyTime(); got != 4300*time.Microsecond {
		t.Errorf("busy %v, want 4.3ms", got)
	}
}

// A watch being stopped does not sit out its pause.
func TestPollPacerStopsPausingWithItsContext(t *testing.T) {
	var p pollPacer
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	done := make(chan struct{})
	go func() { p.wait(ctx, time.Hour); close(done) }() // a pause of nine hours unless cancelled
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("the pause outlived its context")
	}
}
