package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Result is one durability mode's figures. The JSON names are the bench's public interface.
type Result struct {
	Durability string `json:"durability"` // "default" (JetStream's periodic sync) or "always" (fsync before ack)
	// Concurrency is the closed-loop phases' concurrent clients.
	Concurrency int `json:"concurrency"`

	IngestBatch100EventsPerS float64 `json:"ingest_batch100_events_per_s"`
	IngestBatch100P50Ms      float64 `json:"ingest_batch100_p50_ms"`
	IngestBatch100P99Ms      float64 `json:"ingest_batch100_p99_ms"`
	IngestSingleEventsPerS   float64 `json:"ingest_single_events_per_s"`
	IngestSingleP50Ms        float64 `json:"ingest_single_p50_ms"`
	IngestSingleP99Ms        float64 `json:"ingest_single_p99_ms"`
	E2EEventsPerS            float64 `json:"e2e_events_per_s"`
	FreshnessP50Ms           float64 `json:"freshness_p50_ms"`
	FreshnessP99Ms           float64 `json:"freshness_p99_ms"`
	FreshnessRatePerS        float64 `json:"freshness_rate_per_s"`

	// Of the end-to-end phase: what the receiver accepted while the workers ran, and how long the
	// backlog took to drain once the load stopped. A short drain means ingest bounds end to end; a
	// long one, the workers.
	E2EIngestEventsPerS float64 `json:"e2e_ingest_events_per_s"`
	E2EDrainMs          float64 `json:"e2e_drain_after_load_ms"`

	CeilingJetStreamPublishPerS float64 `json:"ceiling_jetstream_publish_per_s"`
	CeilingPostgresCopyRowsPerS float64 `json:"ceiling_postgres_copy_rows_per_s"`

	// CPU per event in microseconds, of the whole machine (load, receiver, NATS, workers and
	// Postgres share its cores) and of the bench process alone (all of them but Postgres): the
	// machine's cores divided by a phase's machine figure bound that phase's rate here, and the
	// figures of the phases say which part an event's cost is spent in.
	IngestBatch100CPUUs        float64 `json:"ingest_batch100_cpu_us_per_event"`
	IngestBatch100ProcessCPUUs float64 `json:"ingest_batch100_process_cpu_us_per_event"`
	E2ECPUUs                   float64 `json:"e2e_cpu_us_per_event"`
	E2EProcessCPUUs            float64 `json:"e2e_process_cpu_us_per_event"`
	// CeilingCopyCPUUs is the COPY ceiling's CPU per row, the bench building its rows included.
	CeilingCopyCPUUs float64 `json:"ceiling_postgres_copy_cpu_us_per_row"`

	Rejected int64 `json:"rejected_requests"` // non-200 answers during the ingest phases

	// Of the end-to-end phase: how long its transactions waited for their users' lock slots,
	// and the events/s each consumer (workers, workers-<partition>) committed.
	LockWaitMeanMs     float64            `json:"lock_wait_mean_ms"`
	LockWaitP99Ms      float64            `json:"lock_wait_p99_ms"`
	ConsumerEventsPerS map[string]float64 `json:"consumer_events_per_s,omitempty"`

	ManyTenants *ManyTenantsResult `json:"many_tenants,omitempty"`
}

// ManyTenantsResult is the skewed many-tenants phase: one big tenant saturating its workers,
// the others' freshness meanwhile.
type ManyTenantsResult struct {
	Tenants       int     `json:"tenants"`
	BigEventsPerS float64 `json:"big_tenant_events_per_s"`
	// BigBacklogAtEnd: the big tenant's messages not yet applied when the load stopped (its
	// workers were saturated when it is more than a batch or so).
	BigBacklogAtEnd     uint64  `json:"big_tenant_backlog_at_end"`
	SmallEventsPerS     float64 `json:"small_tenants_events_per_s"`
	SmallFreshnessP50Ms float64 `json:"small_tenants_freshness_p50_ms"`
	SmallFreshnessP99Ms float64 `json:"small_tenants_freshness_p99_ms"`
	// SmallWarmUpFreshnessP99Ms: of the small tenants' rows sent in the warm-up, before the
	// measured phase (--many-warm-up).
	SmallWarmUpFreshnessP99Ms float64 `json:"small_tenants_warm_up_freshness_p99_ms"`
	// SmallAck*: send to 2xx of the small tenants' calls, the receiver's share of their freshness.
	SmallAckP50Ms float64 `json:"small_tenants_ack_p50_ms"`
	SmallAckP99Ms float64 `json:"small_tenants_ack_p99_ms"`
	Rejected      int64   `json:"rejected_requests"`
	// SessionsOpened counts the Postgres sessions the phase opened (pg_stat_database.sessions):
	// what the small tenants' logins cost in connections.
	SessionsOpened int64 `json:"postgres_sessions_opened"`
	// IdleCPUPercent is this process's CPU (NATS, receiver, the pool worker with every small
	// tenant, the big tenant's workers) before anyone sends, in percent of one core.
	IdleCPUPercent float64 `json:"idle_cpu_percent"`
	// MachineBusyPercent is how busy the machine's cores were (every process, Postgres too) while
	// the phase measured, in percent of all of them: near 100, the phase measured a saturated machine.
	MachineBusyPercent float64 `json:"machine_busy_percent"`
	// WatchLookUpPercent is the share of the measured time the freshness watch spent in its
	// look-ups (wall time on its one connection, so percent of one core, not of the machine; at
	// most a tenth, see pollPacer): an upper bound of the Postgres CPU that measuring took.
	WatchLookUpPercent float64 `json:"watch_look_up_percent"`
}

// Report is what `make bench` writes: the default-mode figures at the top level, the fsync-always
// run beside them, and the machine and settings that produced them.
type Report struct {
	Result
	SyncAlways *Result   `json:"sync_always,omitempty"`
	Machine    Machine   `json:"machine"`
	Settings   Settings  `json:"settings"`
	StartedAt  time.Time `json:"started_at"`
}

// Machine describes where the figures were measured.
type Machine struct {
	CPU        string `json:"cpu"`
	Cores      int    `json:"cores"`
	GoMaxProcs int    `json:"gomaxprocs"`
	GoVersion  string `json:"go_version"`
	OS         string `json:"os"`
}

// Settings are the flags the run used.
type Settings struct {
	Duration         string `json:"duration"`
	Concurrency      int    `json:"concurrency"`
	BatchSize        int    `json:"batch_size"`
	FreshnessRate    int    `json:"freshness_rate"`
	FreshnessSeconds int    `json:"freshness_seconds"`
	WorkerBatchSize  int    `json:"worker_batch_size"`
	Partitions       int    `json:"partitions"`
	WorkerReplicas   int    `json:"worker_replicas"`
	// NATSNodes is how many NATS servers the run's JetStream cluster has; every stream has as
	// many replicas.
	NATSNodes int `json:"nats_nodes"`
	// AtomicBatches is the receiver's publishing: auto (group commit with fsync always, as tally
	// local runs it), on or off.
	AtomicBatches    string `json:"atomic_batches"`
	Tenants          int    `json:"tenants"`
	SmallTenantsRate int    `json:"small_tenants_rate"`
	BigTenantRate    int    `json:"big_tenant_rate"`
	BigTenantLimit   int    `json:"big_tenant_limit"`
	ManyWarmUp       string `json:"many_warm_up"`
	// SmallTenantsLogin is how the small tenants' pool worker logs in to Postgres: pool or tenant.
	SmallTenantsLogin string `json:"small_tenants_login"`
	Quick             bool   `json:"quick"`
	// GCPercent is the process's garbage collector target: the data path's (gcpolicy), or GOGC.
	GCPercent int `json:"gc_percent"`
}

func currentMachine() Machine {
	return Machine{CPU: cpuModel(), Cores: runtime.NumCPU(), GoMaxProcs: runtime.GOMAXPROCS(0),
		GoVersion: runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH}
}

func cpuModel() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// Validate checks a report is complete and plausible; the unit test and the bench itself use it.
func (r *Report) Validate() error {
	results := []*Result{&r.Result}
	if r.SyncAlways != nil {
		results = append(results, r.SyncAlways)
	}
	for _, res := range results {
		if res.Durability != "default" && res.Durability != "always" {
			return fmt.Errorf("durability %q is neither default nor always", res.Durability)
		}
		for name, v := range res.figures() {
			if !(v > 0) {
				return fmt.Errorf("%s (%s): %v is not a positive figure", name, res.Durability, v)
			}
		}
		if res.IngestBatch100P50Ms > res.IngestBatch100P99Ms || res.IngestSingleP50Ms > res.IngestSingleP99Ms ||
			res.FreshnessP50Ms > res.FreshnessP99Ms {
			return fmt.Errorf("%s: a p50 exceeds its p99", res.Durability)
		}
	}
	if r.Machine.Cores <= 0 {
		return fmt.Errorf("machine not described")
	}
	return nil
}

func (res *Result) figures() map[string]float64 {
	return map[string]float64{
		"ingest_batch100_events_per_s":             res.IngestBatch100EventsPerS,
		"ingest_batch100_p50_ms":                   res.IngestBatch100P50Ms,
		"ingest_batch100_p99_ms":                   res.IngestBatch100P99Ms,
		"ingest_single_events_per_s":               res.IngestSingleEventsPerS,
		"ingest_single_p99_ms":                     res.IngestSingleP99Ms,
		"e2e_events_per_s":                         res.E2EEventsPerS,
		"freshness_p50_ms":                         res.FreshnessP50Ms,
		"freshness_p99_ms":                         res.FreshnessP99Ms,
		"ceiling_jetstream_publish_per_s":          res.CeilingJetStreamPublishPerS,
		"ceiling_postgres_copy_rows_per_s":         res.CeilingPostgresCopyRowsPerS,
		"ingest_batch100_cpu_us_per_event":         res.IngestBatch100CPUUs,
		"ingest_batch100_process_cpu_us_per_event": res.IngestBatch100ProcessCPUUs,
		"e2e_cpu_us_per_event":                     res.E2ECPUUs,
		"e2e_process_cpu_us_per_event":             res.E2EProcessCPUUs,
		"ceiling_postgres_copy_cpu_us_per_row":     res.CeilingCopyCPUUs,
	}
}

// WriteJSON writes the report to path.
func (r *Report) WriteJSON(path string) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

// WriteTable prints the figures side by side, with the ratio of each rate to its ceiling.
func (r *Report) WriteTable(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	cols := []*Result{&r.Result}
	header := "metric\tdefault\t"
	if r.SyncAlways != nil {
		cols = append(cols, r.SyncAlways)
		header += "sync always\t"
	}
	fmt.Fprintln(tw, header)
	row := func(name string, get func(*Result) float64, format string) {
		line := name + "\t"
		for _, c := range cols {
			line += fmt.Sprintf(format, get(c)) + "\t"
		}
		fmt.Fprintln(tw, line)
	}
	row("closed-loop clients", func(x *Result) float64 { return float64(x.Concurrency) }, "%.0f")
	row("ingest batch100 events/s", func(x *Result) float64 { return x.IngestBatch100EventsPerS }, "%.0f")
	row("ingest batch100 p50 ms", func(x *Result) float64 { return x.IngestBatch100P50Ms }, "%.1f")
	row("ingest batch100 p99 ms", func(x *Result) float64 { return x.IngestBatch100P99Ms }, "%.1f")
	row("ingest single req/s", func(x *Result) float64 { return x.IngestSingleEventsPerS }, "%.0f")
	row("ingest single p50 ms", func(x *Result) float64 { return x.IngestSingleP50Ms }, "%.1f")
	row("ingest single p99 ms", func(x *Result) float64 { return x.IngestSingleP99Ms }, "%.1f")
	row("end to end events/s", func(x *Result) float64 { return x.E2EEventsPerS }, "%.0f")
	row("e2e ingest while applying events/s", func(x *Result) float64 { return x.E2EIngestEventsPerS }, "%.0f")
	row("e2e drain after the load ms", func(x *Result) float64 { return x.E2EDrainMs }, "%.0f")
	row("freshness p50 ms", func(x *Result) float64 { return x.FreshnessP50Ms }, "%.0f")
	row("freshness p99 ms", func(x *Result) float64 { return x.FreshnessP99Ms }, "%.0f")
	row("ceiling JetStream publish/s", func(x *Result) float64 { return x.CeilingJetStreamPublishPerS }, "%.0f")
	row("ceiling Postgres COPY rows/s", func(x *Result) float64 { return x.CeilingPostgresCopyRowsPerS }, "%.0f")
	row("ingest / publish ceiling", func(x *Result) float64 { return ratio(x.IngestBatch100EventsPerS, x.CeilingJetStreamPublishPerS) }, "%.2f")
	row("e2e / COPY ceiling", func(x *Result) float64 { return ratio(x.E2EEventsPerS, x.CeilingPostgresCopyRowsPerS) }, "%.2f")
	row("ingest batch100 CPU µs/event, machine", func(x *Result) float64 { return x.IngestBatch100CPUUs }, "%.1f")
	row("ingest batch100 CPU µs/event, bench process", func(x *Result) float64 { return x.IngestBatch100ProcessCPUUs }, "%.1f")
	row("e2e CPU µs/event, machine", func(x *Result) float64 { return x.E2ECPUUs }, "%.1f")
	row("e2e CPU µs/event, bench process", func(x *Result) float64 { return x.E2EProcessCPUUs }, "%.1f")
	row("e2e CPU µs/event, the rest (Postgres)", func(x *Result) float64 { return x.E2ECPUUs - x.E2EProcessCPUUs }, "%.1f")
	row("COPY ceiling CPU µs/row, machine", func(x *Result) float64 { return x.CeilingCopyCPUUs }, "%.1f")
	row("e2e lock wait mean ms", func(x *Result) float64 { return x.LockWaitMeanMs }, "%.2f")
	row("e2e lock wait p99 ms (bucket)", func(x *Result) float64 { return x.LockWaitP99Ms }, "%.2f")
	for _, consumer := range consumerNames(cols) {
		row("e2e "+consumer+" events/s", func(x *Result) float64 { return x.ConsumerEventsPerS[consumer] }, "%.0f")
	}
	many := func(get func(*ManyTenantsResult) float64) func(*Result) float64 {
		return func(x *Result) float64 {
			if x.ManyTenants == nil {
				return 0
			}
			return get(x.ManyTenants)
		}
	}
	row("many tenants: tenants", many(func(m *ManyTenantsResult) float64 { return float64(m.Tenants) }), "%.0f")
	row("many tenants: big events/s", many(func(m *ManyTenantsResult) float64 { return m.BigEventsPerS }), "%.0f")
	row("many tenants: big backlog at end", many(func(m *ManyTenantsResult) float64 { return float64(m.BigBacklogAtEnd) }), "%.0f")
	row("many tenants: small events/s", many(func(m *ManyTenantsResult) float64 { return m.SmallEventsPerS }), "%.0f")
	row("many tenants: small fresh p50 ms", many(func(m *ManyTenantsResult) float64 { return m.SmallFreshnessP50Ms }), "%.0f")
	row("many tenants: small fresh p99 ms", many(func(m *ManyTenantsResult) float64 { return m.SmallFreshnessP99Ms }), "%.0f")
	row("many tenants: warm-up fresh p99 ms", many(func(m *ManyTenantsResult) float64 { return m.SmallWarmUpFreshnessP99Ms }), "%.0f")
	row("many tenants: small ack p50 ms", many(func(m *ManyTenantsResult) float64 { return m.SmallAckP50Ms }), "%.1f")
	row("many tenants: small ack p99 ms", many(func(m *ManyTenantsResult) float64 { return m.SmallAckP99Ms }), "%.1f")
	row("many tenants: Postgres sessions opened", many(func(m *ManyTenantsResult) float64 { return float64(m.SessionsOpened) }), "%.0f")
	row("many tenants: machine busy %", many(func(m *ManyTenantsResult) float64 { return m.MachineBusyPercent }), "%.0f")
	row("many tenants: watch look-ups % of one core", many(func(m *ManyTenantsResult) float64 { return m.WatchLookUpPercent }), "%.1f")
	row("many tenants: idle CPU % of a core", many(func(m *ManyTenantsResult) float64 { return m.IdleCPUPercent }), "%.1f")
	tw.Flush()
	fmt.Fprintf(w, "machine: %s, %d cores, %s, GOGC %d\n", r.Machine.CPU, r.Machine.Cores, r.Machine.GoVersion, r.Settings.GCPercent)
}

// consumerNames are the consumers any column reports, sorted.
func consumerNames(cols []*Result) []string {
	var names []string
	for _, c := range cols {
		for name := range c.ConsumerEventsPerS {
			if !slices.Contains(names, name) {
				names = append(names, name)
			}
		}
	}
	slices.Sort(names)
	return names
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// percentileMs is the p-th percentile (0-100) of durations, in milliseconds.
func percentileMs(d []time.Duration, p float64) float64 {
	if len(d) == 0 {
		return 0
	}
	sorted := slices.Sorted(slices.Values(d))
	idx := int(float64(len(sorted)-1) * p / 100)
	return float64(sorted[idx]) / float64(time.Millisecond)
}
