package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
)

// publishCeiling publishes the same kind of messages straight to a stream with the same settings:
// what JetStream alone can take on this machine, without HTTP, decoding or the receiver.
func (e *env) publishCeiling(ctx context.Context, res *Result) error {
	src, err := e.newSource(ctx, "ceiling")
	if err != nil {
		return err
	}
	js, err := jetstream.New(e.js.Conn(), jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		return err
	}
	g := newGenerator(1, "ceiling")
	payloads := make([][]byte, 1000)
	for i := range payloads {
		msg, _ := g.next()
		payloads[i], _ = json.Marshal(msg)
	}
	subject := src.Stream().Subject("track")
	deadline := time.Now().Add(e.phaseLength() / 2)
	start := time.Now()
	var n int
	for time.Now().Before(deadline) {
		for i := 0; i < 1000; i++ {
			m := &nats.Msg{Subject: subject, Data: payloads[i], Header: nats.Header{}}
			m.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("ceiling-%d", n))
			// fsync-always acks slowly: wait for room in the window instead of failing.
			if _, err := js.PublishMsgAsync(m, jetstream.WithStallWait(30*time.Second)); err != nil {
				return err
			}
			n++
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		return fmt.Errorf("publish acks did not complete")
	}
	res.CeilingJetStreamPublishPerS = float64(n) / time.Since(start).Seconds()
	return stream.Delete(ctx, e.js, src.Stream())
}

// copyCeiling writes event rows with COPY into a table shaped like tally.events, unique index
// included: what Postgres alone can take, without NATS or the mapping.
func (e *env) copyCeiling(ctx context.Context, res *Result) error {
	if _, err := e.pool.Exec(ctx, `CREATE TABLE public.bench_copy (LIKE tally.events INCLUDING DEFAULTS INCLUDING INDEXES)`); err != nil {
		return err
	}
	g := newGenerator(2, "copy")
	columns := []string{"tenant", "message_id", "type", "event", "user_id", "account_id", "properties", "context", "timestamp", "received_at", "source"}
	deadline := time.Now().Add(e.phaseLength() / 2)
	cpuBefore, err := sampleCPU()
	if err != nil {
		return err
	}
	start := time.Now()
	var n int64
	for time.Now().Before(deadline) {
		rows := make([][]any, 0, 5000)
		for i := 0; i < 5000; i++ {
			msg, id := g.next()
			props, _ := json.Marshal(msg["properties"])
			mctx, _ := json.Marshal(msg["context"])
			now := time.Now()
			rows = append(rows, []any{"bench", id, msg["type"], msg["event"], msg["userId"], "acct", props, mctx, now, now, "bench/copy"})
		}
		copied, err := e.pool.CopyFrom(ctx, pgx.Identifier{"public", "bench_copy"}, columns, pgx.CopyFromRows(rows))
		if err != nil {
			return err
		}
		n += copied
	}
	res.CeilingPostgresCopyRowsPerS = float64(n) / time.Since(start).Seconds()
	cpuAfter, err := sampleCPU()
	if err != nil {
		return err
	}
	res.CeilingCopyCPUUs = cpuAfter.costPer(cpuBefore, n).machineUs
	_, err = e.pool.Exec(ctx, `DROP TABLE public.bench_copy`)
	return err
}

// ingestBatches is the closed-loop ingest of 100-message batches, workers off: the receiver's
// accepted events/s with durable acks, and its latency.
func (e *env) ingestBatches(ctx context.Context, res *Result) error {
	run, err := e.ingestOnly(ctx, "batch", batchTemplates(3, 64, e.cfg.settings.BatchSize), e.cfg.settings.BatchSize)
	if err != nil {
		return err
	}
	res.IngestBatch100EventsPerS = run.eventsPerSecond()
	res.IngestBatch100P50Ms = percentileMs(run.latencies, 50)
	res.IngestBatch100P99Ms = percentileMs(run.latencies, 99)
	if run.cpuErr != nil {
		return run.cpuErr
	}
	res.IngestBatch100CPUUs, res.IngestBatch100ProcessCPUUs = run.cpu.machineUs, run.cpu.processUs
	res.Rejected += run.rejected
	return nil
}

// ingestSingles is the closed-loop ingest of one message per request.
func (e *env) ingestSingles(ctx context.Context, res *Result) error {
	run, err := e.ingestOnly(ctx, "single", singleTemplates(4, 512), 1)
	if err != nil {
		return err
	}
	res.IngestSingleEventsPerS = run.eventsPerSecond()
	res.IngestSingleP50Ms = percentileMs(run.latencies, 50)
	res.IngestSingleP99Ms = percentileMs(run.latencies, 99)
	res.Rejected += run.rejected
	return nil
}

// ingestOnly runs a closed loop against a fresh source with no workers, then removes its stream.
func (e *env) ingestOnly(ctx context.Context, name string, templates []template, perRequest int) (loadRun, error) {
	src, err := e.newServedSource(ctx, name)
	if err != nil {
		return loadRun{}, err
	}
	run := e.closedLoop(ctx, src, templates, perRequest)
	return run, stream.Delete(ctx, e.js, src.Stream())
}

// endToEnd drives the batch load with workers running and counts from the first request to the
// moment every accepted message is committed (its ack follows the commit).
func (e *env) endToEnd(ctx context.Context, res *Result) error {
	src, stop, err := e.servedWithWorker(ctx, "e2e")
	if err != nil {
		return err
	}
	defer stop()
	cpuBefore, err := sampleCPU()
	if err != nil {
		return err
	}
	start := time.Now()
	run := e.closedLoop(ctx, src, batchTemplates(5, 64, e.cfg.settings.BatchSize), e.cfg.settings.BatchSize)
	if err := e.drained(ctx, src, 10*time.Minute); err != nil {
		return err
	}
	elapsed := time.Since(start)
	cpuAfter, err := sampleCPU()
	if err != nil {
		return err
	}
	cost := cpuAfter.costPer(cpuBefore, run.accepted)
	res.E2ECPUUs, res.E2EProcessCPUUs = cost.machineUs, cost.processUs
	res.E2EEventsPerS = float64(run.accepted) / elapsed.Seconds()
	res.E2EIngestEventsPerS = float64(run.accepted) / run.elapsed.Seconds()
	res.E2EDrainMs = float64((elapsed - run.elapsed).Milliseconds())
	res.Rejected += run.rejected
	return e.workerFigures(src, elapsed, res)
}

// freshness sends at a steady open-loop rate with workers running and measures, per track call,
// the time from the client's send to its row being visible in tally.events.
func (e *env) freshness(ctx context.Context, res *Result) error {
	src, stop, err := e.servedWithWorker(ctx, "fresh")
	if err != nil {
		return err
	}
	defer stop()

	const tick = 20 * time.Millisecond
	perTick := max(1, e.cfg.settings.FreshnessRate*int(tick)/int(time.Second))
	templates := batchTemplates(6, 64, perTick)
	watch := newVisibilityWatch(e, src)
	pollCtx, stopPoll := context.WithCancel(ctx)
	polled := make(chan error, 1)
	go func() { polled <- watch.poll(pollCtx) }()

	client := e.client()
	var sends sync.WaitGroup
	ticker := time.NewTicker(tick)
	deadline := time.Now().Add(e.cfg.freshDuration)
	var n int64
	var rejected atomic.Int64
	sent := 0
	for now := range ticker.C {
		if now.After(deadline) {
			break
		}
		n++
		body, tracks := templates[n%int64(len(templates))].instantiate(n + 1e7)
		watch.sent(tracks, time.Now())
		sent += perTick
		sends.Add(1)
		go func() {
			defer sends.Done()
			// A refused request stored nothing: its rows will never appear, so stop waiting for them.
			if ok, _, _ := e.post(client, src, "/v1/batch", body); !ok {
				watch.forget(tracks)
				rejected.Add(1)
			}
		}()
	}
	ticker.Stop()
	sends.Wait()
	defer stopPoll()
	if err := e.drained(ctx, src, 5*time.Minute); err != nil {
		return err
	}
	lat, err := awaitVisible(watch.finish, polled, watch.latencies)
	if err != nil {
		return err
	}
	res.FreshnessP50Ms = percentileMs(lat, 50)
	res.FreshnessP99Ms = percentileMs(lat, 99)
	res.FreshnessRatePerS = float64(sent) / e.cfg.freshDuration.Seconds()
	res.Rejected += rejected.Load()
	return nil
}

func (e *env) phaseLength() time.Duration { return e.cfg.duration }

// loadRun is the outcome of a closed-loop phase.
type loadRun struct {
	accepted, rejected int64
	elapsed            time.Duration
	latencies          []time.Duration
	cpu                cpuCost // per accepted event
	cpuErr             error   // sampling the CPU failed: no cost measured
}

func (r loadRun) eventsPerSecond() float64 { return float64(r.accepted) / r.elapsed.Seconds() }

// closedLoop runs the configured number of clients, each sending its next request as soon as the
// previous one was answered, for the phase's length. Only 200 answers count; a refusal with
// Retry-After (a rate limit) is waited out, as Segment's clients do.
func (e *env) closedLoop(ctx context.Context, src *source.Config, templates []template, perRequest int) loadRun {
	client := e.client()
	var seq atomic.Int64
	var accepted, rejected atomic.Int64
	var mu sync.Mutex
	var all []time.Duration
	deadline := time.Now().Add(e.phaseLength())
	cpuBefore, cpuErr := sampleCPU()
	start := time.Now()
	var wg sync.WaitGroup
	for c := 0; c < e.cfg.concurrency(); c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := make([]time.Duration, 0, 4096)
			for time.Now().Before(deadline) && ctx.Err() == nil {
				n := seq.Add(1)
				t := templates[n%int64(len(templates))]
				body, _ := t.instantiate(n)
				began := time.Now()
				ok, wait, _ := e.post(client, src, t.path, body)
				if ok {
					local = append(local, time.Since(began))
					accepted.Add(int64(perRequest))
				} else {
					rejected.Add(1)
					if wait > 0 {
						sleepUntil(ctx, earliest(time.Now().Add(wait), deadline))
					}
				}
			}
			mu.Lock()
			all = append(all, local...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	run := loadRun{accepted: accepted.Load(), rejected: rejected.Load(), elapsed: time.Since(start), latencies: all}
	cpuAfter, err := sampleCPU()
	if run.cpuErr = errors.Join(cpuErr, err); run.cpuErr == nil {
		run.cpu = cpuAfter.costPer(cpuBefore, run.accepted)
	}
	return run
}

func (e *env) client() *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		MaxIdleConns: 1024, MaxIdleConnsPerHost: 1024, IdleConnTimeout: time.Minute,
	}}
}

// post sends one request with the source's write key; true when the receiver answered 200, else
// the Retry-After of a 429 (0 when none).
func (e *env) post(client *http.Client, src *source.Config, path string, body []byte) (bool, time.Duration, error) {
	req, err := http.NewRequest(http.MethodPost, e.baseURL+path, bytes.NewReader(body))
	if err != nil {
		return false, 0, err
	}
	req.SetBasicAuth(src.WriteKeys[0], "")
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return false, 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	var wait time.Duration
	if resp.StatusCode == http.StatusTooManyRequests {
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
			wait = time.Duration(s) * time.Second
		}
	}
	return resp.StatusCode == http.StatusOK, wait, nil
}

func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// sleepUntil waits until t or until ctx ends.
func sleepUntil(ctx context.Context, t time.Time) {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-ctx.Done():
	case <-timer.C:
	}
}
