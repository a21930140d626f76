// Package gcpolicy sets the Go garbage collector of Tally's data-path processes (the receiver, the
// workers, tally local). Go's default collects whenever the heap has doubled; these processes
// allocate per event and keep little, and a target twice as high cut a quarter of their CPU per
// event (the bench's ingest: 36 µs of CPU per event with Go's default, 27.5 with this policy). A
// soft memory limit just below the container's makes the collector work harder before the larger
// target could take a pod to its memory limit.
package gcpolicy

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"runtime/debug"
	"runtime/metrics"

	"github.com/KimMachineGun/automemlimit/memlimit"
)

// GCPercent is the heap growth, in percent of the live heap, that starts a collection (Go's
// GOGC; its default is 100).
const GCPercent = 200

// MemoryLimitRatio is the share of the container's memory limit (its cgroup's) the soft limit
// (Go's GOMEMLIMIT) is set to: the rest is for what the Go runtime does not count (thread stacks,
// the binary, the kernel's buffers of the process).
const MemoryLimitRatio = 0.9

// Applied is what Apply set, for the process's start-up log.
type Applied struct {
	GCPercent int
	// MemoryLimit is the soft memory limit in bytes (math.MaxInt64: none, outside a container
	// with a memory limit).
	MemoryLimit int64
}

// Apply sets the policy, each half unless its environment variable is set (GOGC, GOMEMLIMIT or
// AUTOMEMLIMIT, as Go and the memlimit package read them), and logs what it set.
func Apply(log *slog.Logger) Applied {
	applied := apply(memlimit.FromCgroup, log)
	log.Info("garbage collector", "gogc", applied.GCPercent, "memoryLimitBytes", applied.MemoryLimit)
	return applied
}

func apply(limit memlimit.Provider, log *slog.Logger) Applied {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(GCPercent)
	}
	if _, err := memlimit.Set(memlimit.WithProvider(limit), memlimit.WithRatio(MemoryLimitRatio)); err != nil {
		// No cgroup to read (not Linux, or no memory controller): no soft limit, as Go's default.
		level := slog.LevelWarn
		if errors.Is(err, memlimit.ErrCgroupsNotSupported) || errors.Is(err, memlimit.ErrNoCgroup) {
			level = slog.LevelInfo
		}
		log.Log(context.Background(), level, "no memory limit for the garbage collector", "err", err)
	}
	return current()
}

// current reads the collector's settings without touching them.
func current() Applied {
	samples := []metrics.Sample{{Name: "/gc/gogc:percent"}, {Name: "/gc/gomemlimit:bytes"}}
	metrics.Read(samples)
	return Applied{GCPercent: int(samples[0].Value.Uint64()), MemoryLimit: int64(samples[1].Value.Uint64())}
}
