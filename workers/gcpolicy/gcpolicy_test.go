package gcpolicy

import (
	"io"
	"log/slog"
	"math"
	"os"
	"runtime/debug"
	"testing"

	"github.com/KimMachineGun/automemlimit/memlimit"
)

// restore puts back the collector's settings a test changes, for the tests after it.
func restore(t *testing.T) {
	before := current()
	t.Cleanup(func() {
		debug.SetGCPercent(before.GCPercent)
		debug.SetMemoryLimit(before.MemoryLimit)
	})
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// environment sets GOGC and GOMEMLIMIT for the test ("": not set), without AUTOMEMLIMIT (which
// memlimit would read, even empty, as a ratio), and restores the collector's settings after it.
func environment(t *testing.T, gogc, gomemlimit string) {
	restore(t)
	t.Setenv("GOGC", gogc)
	t.Setenv("GOMEMLIMIT", gomemlimit)
	t.Setenv("AUTOMEMLIMIT", "") // restores its value after the test
	os.Unsetenv("AUTOMEMLIMIT")
}

func TestApplySetsTheTargetAndASoftLimitBelowTheContainers(t *testing.T) {
	environment(t, "", "")
	debug.SetGCPercent(100)
	got := apply(memlimit.Limit(1000<<20), quiet)
	if got.GCPercent != GCPercent {
		t.Errorf("GOGC %d, want %d", got.GCPercent, GCPercent)
	}
	if want := int64(900 << 20); got.MemoryLimit != want || debug.SetMemoryLimit(-1) != want {
		t.Errorf("memory limit %d (runtime %d), want 90%% of 1000 MiB = %d", got.MemoryLimit, debug.SetMemoryLimit(-1), want)
	}
}

// An operator's own settings in the pod's environment win over the policy.
func TestApplyLeavesWhatTheEnvironmentSets(t *testing.T) {
	environment(t, "150", "300MiB")
	debug.SetGCPercent(150)
	debug.SetMemoryLimit(300 << 20)
	got := apply(memlimit.Limit(1000<<20), quiet)
	if got.GCPercent != 150 || got.MemoryLimit != 300<<20 {
		t.Errorf("policy overrode the environment: %+v", got)
	}
}

// Outside a container with a memory limit there is no soft limit: only the target changes.
func TestApplyWithoutAMemoryLimit(t *testing.T) {
	environment(t, "", "")
	noLimit := func() (uint64, error) { return 0, memlimit.ErrNoLimit }
	got := apply(noLimit, quiet)
	if got.GCPercent != GCPercent || got.MemoryLimit != math.MaxInt64 {
		t.Errorf("%+v, want GOGC %d and no memory limit", got, GCPercent)
	}
}
