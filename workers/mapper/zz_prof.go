package mapper

import (
	"fmt"
	"sort"
	"sync"
	"time"
)

// TEMPORARY profiling aid, removed before hand-off.
var profMu sync.Mutex
var profTotals = map[string]time.Duration{}

func profStep(name string, t0 time.Time) {
	profMu.Lock()
	profTotals[name] += time.Since(t0)
	profMu.Unlock()
}

func ProfReport() string {
	profMu.Lock()
	defer profMu.Unlock()
	var names []string
	for k := range profTotals {
		names = append(names, k)
	}
	sort.Slice(names, func(i, j int) bool { return profTotals[names[i]] > profTotals[names[j]] })
	s := ""
	for _, n := range names {
		s += fmt.Sprintf("%-12s %v\n", n, profTotals[n].Round(time.Millisecond))
	}
	return s
}
