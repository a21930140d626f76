// Command bench measures Tally on this machine against its physical ceilings in one run: HTTP
// ingest with durable JetStream acks, end-to-end throughput into Postgres rows, freshness at a
// steady rate, and beside them the raw JetStream publish and Postgres COPY rates. `make bench`.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"github.com/tallyhq/tally/test/testdb"
	"github.com/tallyhq/tally/workers/gcpolicy"
	"github.com/tallyhq/tally/workers/source"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run() error {
	var s Settings
	var out, adminURL, modes string
	var duration, freshDuration, manyWarmUp time.Duration
	flag.DurationVar(&duration, "duration", 15*time.Second, "length of each closed-loop ingest phase")
	flag.IntVar(&s.Concurrency, "concurrency", 0, "concurrent HTTP clients in the closed-loop phases; 0: 8 with the default sync (the fewest that keep two cores busy) "+
		"and 32 with fsync always (shared atomic batches grow with the requests waiting, and so does the latency)")
	flag.IntVar(&s.BatchSize, "batch-size", 100, "messages per /v1/batch request")
	flag.IntVar(&s.FreshnessRate, "rate", 5000, "open-loop events/s of the freshness phase")
	flag.DurationVar(&freshDuration, "freshness-duration", 30*time.Second, "length of the freshness phase")
	flag.IntVar(&s.WorkerBatchSize, "worker-batch-size", source.DefaultBatchSize, "messages a worker commits per transaction")
	flag.StringVar(&modes, "durability", "default,always", "JetStream sync modes to run: default, always, or both")
	flag.IntVar(&s.Partitions, "partitions", 1, "partitions of the end-to-end, freshness and big-tenant sources (a power of two up to 64)")
	flag.IntVar(&s.WorkerReplicas, "worker-replicas", 1, "workers per source in the end-to-end and freshness phases (and for the big tenant)")
	flag.IntVar(&s.NATSNodes, "nats-nodes", 1, "NATS servers (in this process, on loopback) of one JetStream cluster; every stream gets as many replicas (1 or 3)")
	flag.StringVar(&s.AtomicBatches, "atomic-batches", "auto", "the receiver's publishing: auto (shared atomic batches with fsync always, message by message otherwise, as tally local), on or off")
	flag.IntVar(&s.Tenants, "tenants", 1000, "sources of the many-tenants phase, one of them big")
	flag.IntVar(&s.SmallTenantsRate, "small-tenants-rate", 500, "open-loop events/s spread over the small tenants in the many-tenants phase")
	flag.IntVar(&s.BigTenantRate, "big-tenant-rate", 0, "events/s the big tenant sends in the many-tenants phase; 0 sends closed-loop batches as fast as it can")
	flag.DurationVar(&manyWarmUp, "many-warm-up", 5*time.Second, "how long the small tenants send in the many-tenants phase before it measures (and the big tenant starts): the pool worker's connections and their plans are made then")
	flag.IntVar(&s.BigTenantLimit, "big-tenant-limit", -1, "the big tenant's rate limit (spec.receiver.rateLimit, events/s) in the many-tenants phase; -1: the small tenants' rate (half the traffic), 0: none")
	flag.StringVar(&s.SmallTenantsLogin, "small-tenants-login", "pool", "how the small tenants' pool worker logs in to Postgres in the many-tenants phase: "+
		"pool (the pool's login, naming each member's tenant, as the operator sets it up) or tenant (each tenant's own login, a connection per tenant)")
	flag.BoolVar(&s.Quick, "quick", false, "short phases for a smoke run (under two minutes)")
	flag.StringVar(&out, "out", "bench-results.json", "where to write the JSON report")
	flag.StringVar(&adminURL, "database-url", testdb.AdminURL(),
		"Postgres server to create the bench's fresh database on")
	phases := flag.String("phases", "", "comma-separated words of the phases to run (e.g. ingest, or \"100-message\" for the batch ingest alone); all when empty")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run (receiver, workers, embedded NATS, load) to this file")
	flag.Parse()
	if s.SmallTenantsLogin != "pool" && s.SmallTenantsLogin != "tenant" {
		return fmt.Errorf("--small-tenants-login must be pool or tenant, not %q", s.SmallTenantsLogin)
	}
	if !slices.Contains([]string{"auto", "on", "off"}, s.AtomicBatches) {
		return fmt.Errorf("--atomic-batches must be auto, on or off, not %q", s.AtomicBatches)
	}
	if s.NATSNodes != 1 && s.NATSNodes != 3 {
		return fmt.Errorf("--nats-nodes must be 1 or 3, not %d", s.NATSNodes)
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if s.Quick {
		duration, freshDuration = 5*time.Second, 10*time.Second
	}
	s.Duration, s.ManyWarmUp = duration.String(), manyWarmUp.String()
	s.FreshnessSeconds = int(freshDuration / time.Second)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	// The collector as tally local sets it, whose pipeline this process runs (GOGC overrides it).
	s.GCPercent = gcpolicy.Apply(log).GCPercent

	report := Report{Machine: currentMachine(), Settings: s, StartedAt: time.Now().UTC()}
	for _, mode := range splitModes(modes) {
		fmt.Fprintf(os.Stderr, "== durability %s\n", mode)
		res, err := runMode(ctx, modeConfig{
			durability: mode, adminURL: adminURL, duration: duration, freshDuration: freshDuration, manyWarmUp: manyWarmUp,
			settings: s, log: log, phases: splitList(*phases),
		})
		if err != nil {
			return err
		}
		if mode == "always" && report.Durability != "" {
			report.SyncAlways = res
		} else {
			report.Result = *res
		}
	}
	report.WriteTable(os.Stdout)
	if err := report.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, "bench: incomplete report:", err)
	}
	if err := report.WriteJSON(out); err != nil {
		return err
	}
	fmt.Println("wrote", out)
	return nil
}

// splitModes keeps the known modes of a comma-separated list, default first.
func splitModes(s string) []string {
	var modes []string
	for _, m := range []string{"default", "always"} {
		if slices.Contains(strings.Split(s, ","), m) {
			modes = append(modes, m)
		}
	}
	return modes
}

// splitList is the non-empty items of a comma-separated list.
func splitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}
