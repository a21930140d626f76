package main

import (
	"testing"
	"time"
)

func TestMachineBusyCountsAllButIdleAndIOWait(t *testing.T) {
	// user nice system idle iowait irq softirq steal guest guest_nice
	stat := "cpu  1000 20 300 9000 500 4 6 70 100 0\ncpu0 1 2 3 4 5 6 7 8 9 10\ncpu1 1 2 3 4 5 6 7 8 9 10\nintr 1 2\n"
	got, cpus, err := machineBusy(stat)
	if err != nil {
		t.Fatal(err)
	}
	if want := 1330 * time.Second / userHZ; got != want { // 1000+20+300+4+6 ticks
		t.Fatalf("busy %v, want %v", got, want)
	}
	if cpus != 2 {
		t.Fatalf("%d CPUs, want 2", cpus)
	}
	if _, _, err := machineBusy("intr 1 2 3\n"); err == nil {
		t.Fatal("a /proc/stat without its cpu line was accepted")
	}
}

// The bench's CPU figures come from this machine's own counters: spinning raises this process's
// CPU time and the machine's, and the cost spreads over the events it is given.
func TestSampleCPUSeesThisProcessWork(t *testing.T) {
	before, err := sampleCPU()
	if err != nil {
		t.Fatal(err)
	}
	var after cpuSample
	for spins := 0; after.process-before.process < 50*time.Millisecond || after.machine-before.machine <= 0; spins++ {
		for i := 0; i < 1_000_000; i++ {
			spinSink += i
		}
		if after, err = sampleCPU(); err != nil {
			t.Fatal(err)
		}
		if spins > 20_000 { // some seconds of spinning
			t.Fatalf("CPU time did not move: before %+v, after %+v", before, after)
		}
	}
	cost := after.costPer(before, 10)
	if cost.processUs < 5000 || cost.machineUs <= 0 {
		t.Fatalf("cost per event %+v for at least 50 ms of CPU over 10 events", cost)
	}
	if (after.costPer(before, 0) != cpuCost{}) {
		t.Fatal("a phase without events was given a cost")
	}
	if after.cpus < 1 {
		t.Fatalf("no CPU counted in /proc/stat: %+v", after)
	}
}

var spinSink int
