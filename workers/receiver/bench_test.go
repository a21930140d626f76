package receiver_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tallyhq/tally/workers/natsserver"
	"github.com/tallyhq/tally/workers/receiver"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
)

// benchBatch is an analytics-go-shaped batch of n mixed messages with messageIds <id>-<i>, so
// every request's messages are new to JetStream and stored (a body sent twice would be
// deduplicated: messages with a timestamp and no messageId get one from their content).
func benchBatch(id int64, n int) []byte {
	var b strings.Builder
	b.WriteString(`{"sentAt":"2024-05-01T12:00:10.123456789+02:00","batch":[`)
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"messageId":"%d-%d",`, id, i)
		switch i % 3 {
		case 0:
			fmt.Fprintf(&b, `"type":"track","userId":"user-%d","event":"Report Exported","timestamp":"2024-05-01T12:00:09.5+02:00","context":{"groupId":"acct-%d"},"properties":{"format":"csv","rows":%d,"plan":"enterprise"}}`, i%50, i%7, i*10)
		case 1:
			fmt.Fprintf(&b, `"type":"identify","userId":"user-%d","timestamp":"2024-05-01T12:00:09.5+02:00","traits":{"email":"user%d@example.com","name":"User %d","company":{"id":%d,"name":"Acme"}}}`, i%50, i, i, i%7)
		default:
			fmt.Fprintf(&b, `"type":"group","userId":"user-%d","groupId":"acct-%d","timestamp":"2024-05-01T12:00:09.5+02:00","traits":{"name":"Account %d","plan":"enterprise","employees":250}}`, i%50, i%7, i%7)
		}
	}
	b.WriteString(`],"context":{"library":{"name":"analytics-go","version":"3.0.0"}}}`)
	return []byte(b.String())
}

// BenchmarkHandler100 posts 100-message batches over HTTP to a receiver backed by a real
// embedded JetStream server (file storage, same process), from 16 concurrent clients. Each
// request returns only once JetStream stored all 100 messages. The sub-benchmarks cover both
// durability settings, each with the receiver sending atomic batches (group commit: concurrent
// requests share them) and publishing message by message.
func BenchmarkHandler100(b *testing.B) { benchHandlerVariants(b, 100) }

// BenchmarkHandler1000 is BenchmarkHandler100 with 1,000 messages per request, where an atomic
// batch's fixed cost is spread over ten times as many messages.
func BenchmarkHandler1000(b *testing.B) { benchHandlerVariants(b, 1000) }

func benchHandlerVariants(b *testing.B, size int) {
	for _, syncAlways := range []bool{false, true} {
		for _, atomic := range []bool{true, false} {
			name := fmt.Sprintf("sync=%s/atomic=%t", map[bool]string{false: "default", true: "always"}[syncAlways], atomic)
			b.Run(name, func(b *testing.B) { benchHandler(b, size, syncAlways, atomic) })
		}
	}
}

func benchHandler(b *testing.B, size int, syncAlways, atomicBatches bool) {
	js, src := benchJetStream(b, syncAlways, atomicBatches)
	// atomicBatches: the stream allows atomic batches and the receiver sends them (group commit);
	// otherwise it publishes message by message.
	reg := prometheus.NewRegistry()
	rcv, err := receiver.New(receiver.Options{JetStream: js, AtomicBatches: atomicBatches, Metrics: receiver.NewMetrics(reg),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, []*source.Config{src})
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(rcv.Handler())
	defer srv.Close()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	var seq atomic.Int64

	var mu sync.Mutex
	var latencies []time.Duration
	b.SetBytes(int64(len(benchBatch(0, size))))
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var mine []time.Duration
		for pb.Next() {
			body := benchBatch(seq.Add(1), size)
			start := time.Now()
			req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/batch", bytes.NewReader(body))
			req.SetBasicAuth("bench-key", "")
			resp, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
			mine = append(mine, time.Since(start))
		}
		mu.Lock()
		latencies = append(latencies, mine...)
		mu.Unlock()
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "msgs/s")
	if len(latencies) > 0 {
		slices.Sort(latencies)
		b.ReportMetric(float64(latencies[len(latencies)/2].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(latencies[len(latencies)*99/100].Microseconds())/1000, "p99-ms")
	}
	if batches, messages := histogram(b, reg, "tally_receiver_atomic_batch_messages"); batches > 0 {
		b.ReportMetric(messages/float64(batches), "msgs/batch") // group commit at work
	}
}

// histogram is the sample count and sum of one of the receiver's histograms.
func histogram(b *testing.B, reg *prometheus.Registry, name string) (uint64, float64) {
	families, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			h := f.GetMetric()[0].GetHistogram()
			return h.GetSampleCount(), h.GetSampleSum()
		}
	}
	return 0, 0
}

// benchJetStream starts an embedded JetStream server with one source's streams.
func benchJetStream(b *testing.B, syncAlways, atomic bool) (jetstream.JetStream, *source.Config) {
	ns, err := natsserver.Start(natsserver.Options{StoreDir: b.TempDir(), SyncAlways: syncAlways})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(ns.Shutdown)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	src := &source.Config{Namespace: "bench", Name: "web", Tenant: "bench", WriteKeys: []string{"bench-key"}}
	if err := stream.Ensure(context.Background(), js, src.Stream(), src.StreamSettings()); err != nil {
		b.Fatal(err)
	}
	if !atomic {
		cfg := stream.StreamConfig(src.Stream(), src.StreamSettings())
		cfg.AllowAtomicPublish = false
		if _, err := js.UpdateStream(context.Background(), cfg); err != nil {
			b.Fatal(err)
		}
	}
	return js, src
}

// BenchmarkJetStreamOnly100 is the ceiling BenchmarkHandler100 compares against: the same
// 100-message requests' worth of async publishes and PubAcks, without HTTP, decoding or
// normalising.
func BenchmarkJetStreamOnly100(b *testing.B) {
	js, src := benchJetStream(b, false, true)
	data := benchBatch(0, 1) // one ~300-byte message body
	b.SetParallelism(8)
	b.ResetTimer()
	var seq atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		futures := make([]jetstream.PubAckFuture, 100)
		for pb.Next() {
			for i := range futures {
				msg := &nats.Msg{Subject: src.Stream().Subject("track"), Data: data,
					Header: nats.Header{jetstream.MsgIDHeader: []string{strconv.FormatInt(seq.Add(1), 10)}}}
				f, err := js.PublishMsgAsync(msg, jetstream.WithStallWait(5*time.Second))
				if err != nil {
					b.Error(err)
					return
				}
				futures[i] = f
			}
			for _, f := range futures {
				select {
				case <-f.Ok():
				case err := <-f.Err():
					b.Error(err)
					return
				}
			}
		}
	})
	b.ReportMetric(float64(b.N*100)/b.Elapsed().Seconds(), "msgs/s")
}
