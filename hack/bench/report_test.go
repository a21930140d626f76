package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func sampleResult(durability string) Result {
	return Result{
		Durability: durability, IngestBatch100EventsPerS: 61000, IngestBatch100P50Ms: 9, IngestBatch100P99Ms: 40,
		IngestSingleEventsPerS: 3500, IngestSingleP50Ms: 2, IngestSingleP99Ms: 12, E2EEventsPerS: 26000,
		FreshnessP50Ms: 150, FreshnessP99Ms: 700, FreshnessRatePerS: 5000,
		CeilingJetStreamPublishPerS: 110000, CeilingPostgresCopyRowsPerS: 80000,
		IngestBatch100CPUUs: 30, IngestBatch100ProcessCPUUs: 28, E2ECPUUs: 75, E2EProcessCPUUs: 40, CeilingCopyCPUUs: 25,
	}
}

// The report's JSON keys are what dashboards and the README read; they must all be there.
func TestReportJSONHasEveryKey(t *testing.T) {
	always := sampleResult("always")
	r := Report{Result: sampleResult("default"), SyncAlways: &always, Machine: currentMachine()}
	if err := r.Validate(); err != nil {
		t.Fatalf("a complete report is invalid: %v", err)
	}
	path := filepath.Join(t.TempDir(), "bench-results.json")
	if err := r.WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatalf("report is not JSON: %v", err)
	}
	keys := []string{"ingest_batch100_events_per_s", "ingest_batch100_p50_ms", "ingest_batch100_p99_ms",
		"ingest_single_events_per_s", "ingest_single_p99_ms", "e2e_events_per_s", "freshness_p50_ms",
		"freshness_p99_ms", "ceiling_jetstream_publish_per_s", "ceiling_postgres_copy_rows_per_s", "durability",
		"ingest_batch100_cpu_us_per_event", "e2e_cpu_us_per_event", "e2e_process_cpu_us_per_event"}
	nested, ok := doc["sync_always"].(map[string]any)
	if !ok {
		t.Fatalf("sync_always run missing: %s", data)
	}
	for _, k := range keys {
		if _, ok := doc[k]; !ok {
			t.Errorf("top level lacks %q", k)
		}
		if _, ok := nested[k]; !ok {
			t.Errorf("sync_always lacks %q", k)
		}
	}
	if doc["durability"] != "default" || nested["durability"] != "always" {
		t.Errorf("durability labels wrong: %v / %v", doc["durability"], nested["durability"])
	}
	var table bytes.Buffer
	r.WriteTable(&table)
	if !strings.Contains(table.String(), "sync always") || !strings.Contains(table.String(), "61000") {
		t.Errorf("table lacks a column or a figure:\n%s", table.String())
	}
}

func TestValidateRejectsMissingFigures(t *testing.T) {
	r := Report{Result: sampleResult("default"), Machine: currentMachine()}
	r.E2EEventsPerS = 0
	if err := r.Validate(); err == nil || !strings.Contains(err.Error(), "e2e_events_per_s") {
		t.Fatalf("missing e2e figure not reported: %v", err)
	}
	r = Report{Result: sampleResult("fsync"), Machine: currentMachine()}
	if err := r.Validate(); err == nil {
		t.Fatal("unknown durability accepted")
	}
	r = Report{Result: sampleResult("default"), Machine: currentMachine()}
	r.IngestBatch100P50Ms = 100
	if err := r.Validate(); err == nil {
		t.Fatal("p50 above p99 accepted")
	}
}

// Every instantiated request must carry unique messageIds, or JetStream's de-duplication would
// make the receiver look faster than it is.
func TestTemplatesMakeUniqueMessageIDs(t *testing.T) {
	templates := batchTemplates(1, 4, 100)
	seen := map[string]bool{}
	for n := int64(1); n <= 8; n++ {
		body, tracks := templates[n%4].instantiate(n)
		if bytes.Contains(body, []byte(requestToken)) {
			t.Fatalf("request %d still holds the token", n)
		}
		var req struct {
			Batch []struct {
				MessageID string `json:"messageId"`
				Type      string `json:"type"`
			} `json:"batch"`
		}
		if err := json.Unmarshal(body, &req); err != nil {
			t.Fatal(err)
		}
		if len(req.Batch) != 100 {
			t.Fatalf("batch of %d", len(req.Batch))
		}
		trackSet := map[string]bool{}
		for _, id := range tracks {
			trackSet[id] = true
		}
		for _, m := range req.Batch {
			if seen[m.MessageID] {
				t.Fatalf("messageId %s repeats", m.MessageID)
			}
			seen[m.MessageID] = true
			if (m.Type == "track") != trackSet[m.MessageID] {
				t.Fatalf("track ids out of step for %s (%s)", m.MessageID, m.Type)
			}
		}
	}
}

// The load is the mix the issue asks for: about 70% track, 20% identify, 10% group, 300-800 bytes.
func TestGeneratorMix(t *testing.T) {
	g := newGenerator(7, "mix")
	counts := map[string]int{}
	for i := 0; i < 10000; i++ {
		msg, _ := g.next()
		counts[msg["type"].(string)]++
		size := len(mustJSON(t, msg))
		if size < 250 || size > 900 {
			t.Fatalf("message of %d bytes: %s", size, mustJSON(t, msg))
		}
	}
	for typ, want := range map[string]int{"track": 7000, "identify": 2000, "group": 1000} {
		if got := counts[typ]; got < want*85/100 || got > want*115/100 {
			t.Errorf("%s: %d of 10000, want about %d", typ, got, want)
		}
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
