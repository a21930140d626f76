package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cpuSample is the CPU time used so far by the whole machine (every process: Postgres too) and
// by this process (the load, the receiver, NATS and the workers): two samples tell what a
// phase's events cost and who paid for them.
type cpuSample struct {
	machine, process time.Duration
}

// cpuCost is the CPU a phase spent per event, in microseconds.
type cpuCost struct {
	machineUs, processUs float64
}

func sampleCPU() (cpuSample, error) {
	stat, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuSample{}, err
	}
	machine, err := machineBusy(string(stat))
	if err != nil {
		return cpuSample{}, err
	}
	process, err := cpuTime()
	if err != nil {
		return cpuSample{}, err
	}
	return cpuSample{machine: machine, process: process}, nil
}

// costPer spreads the CPU used since before over n events.
func (s cpuSample) costPer(before cpuSample, n int64) cpuCost {
	if n <= 0 {
		return cpuCost{}
	}
	per := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(n) }
	return cpuCost{machineUs: per(s.machine - before.machine), processUs: per(s.process - before.process)}
}

// userHZ is the unit of /proc/stat's counters, fixed at 100 a second by the kernel's ABI.
const userHZ = 100

// machineBusy is the busy time of every CPU from /proc/stat's first line: everything but idle
// and iowait (guest time is already counted in user).
func machineBusy(stat string) (time.Duration, error) {
	line, _, _ := strings.Cut(stat, "\n")
	fields := strings.Fields(line)
	if len(fields) < 9 || fields[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var ticks int64
	for i, f := range fields[1:9] { // user nice system idle iowait irq softirq steal
		if i == 3 || i == 4 {
			continue
		}
		v, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %w", err)
		}
		ticks += v
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

// cpuTime is this process's CPU time, user and system.
func cpuTime() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, err
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}
