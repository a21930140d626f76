package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cpuSample is the CPU time used so far by the whole machine (every process: Postgres too, and
// anything else running, so the figures need an otherwise idle machine) and by this process (the
// load, the receiver, NATS and the workers): two samples tell what a phase's events cost and who
// paid for them.
type cpuSample struct {
	machine, process time.Duration
	cpus             int // the machine's, as /proc/stat counts them
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
	machine, cpus, err := machineBusy(string(stat))
	if err != nil {
		return cpuSample{}, err
	}
	process, err := cpuTime()
	if err != nil {
		return cpuSample{}, err
	}
	return cpuSample{machine: machine, process: process, cpus: cpus}, nil
}

// busyPercent is how busy the machine's CPUs were since before, in percent of all of them.
func (s cpuSample) busyPercent(before cpuSample, elapsed time.Duration) float64 {
	if elapsed <= 0 || s.cpus == 0 {
		return 0
	}
	return 100 * float64(s.machine-before.machine) / float64(elapsed) / float64(s.cpus)
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

// machineBusy is the busy time of every CPU from /proc/stat's first line, and how many CPUs the
// lines after it name. Busy is user, nice, system, irq and softirq: not idle or iowait, nor steal
// (a virtual machine's time its host gave to others; guest time is already counted in user).
func machineBusy(stat string) (time.Duration, int, error) {
	lines := strings.Split(stat, "\n")
	fields := strings.Fields(lines[0])
	if len(fields) < 9 || fields[0] != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat: unexpected first line %q", lines[0])
	}
	var ticks int64
	for i, f := range fields[1:8] { // user nice system idle iowait irq softirq
		if i == 3 || i == 4 {
			continue
		}
		v, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/stat: %w", err)
		}
		ticks += v
	}
	cpus := 0
	for _, line := range lines[1:] {
		if strings.HasPrefix(line, "cpu") {
			cpus++
		}
	}
	return time.Duration(ticks) * time.Second / userHZ, cpus, nil
}

// cpuTime is this process's CPU time, user and system.
func cpuTime() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, err
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}
