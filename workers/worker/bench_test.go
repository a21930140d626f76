package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tallyhq/tally/test/testdb"
	"github.com/tallyhq/tally/workers/natsserver"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
)

// BenchmarkWorker measures mapped messages per second of one worker, from a stream already holding
// b.N messages (70% track, 20% identify, 10% group over 5,000 users and 500 accounts) until every
// one is committed and acknowledged: logged in as the tenant's own role (row-level security, as
// the operator runs workers) and as the schema's owner (policies bypassed). Run it with:
//
//	go test ./workers/worker/ -run '^$' -bench BenchmarkWorker -benchtime 50000x
func BenchmarkWorker(b *testing.B) {
	b.Run("tenant-role", func(b *testing.B) { benchmarkWorker(b, true) })
	b.Run("owner", func(b *testing.B) { benchmarkWorker(b, false) })
}

func benchmarkWorker(b *testing.B, tenantRole bool) {
	ctx := context.Background()
	url, drop, err := testdb.Fresh(ctx, "worker_bench")
	if err != nil {
		b.Fatal(err)
	}
	defer drop()
	if err := Migrate(ctx, url); err != nil {
		b.Fatal(err)
	}
	if tenantRole {
		admin, err := pgxpool.New(ctx, url)
		if err != nil {
			b.Fatal(err)
		}
		url, err = NewTenantRoles(admin, url).Ensure(ctx, "bench", "")
		admin.Close()
		if err != nil {
			b.Fatal(err)
		}
	}
	benchPool, err := pgxpool.New(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	defer benchPool.Close()
	srv, err := natsserver.Start(natsserver.Options{StoreDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Shutdown()
	conn, err := nats.Connect(srv.ClientURL())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	benchJS, err := jetstream.New(conn)
	if err != nil {
		b.Fatal(err)
	}
	src := &source.Config{Namespace: "bench", Name: "web", Tenant: "bench", AccountProperty: "accountId"}
	if err := stream.Ensure(ctx, benchJS, src.Stream(), src.StreamSettings()); err != nil {
		b.Fatal(err)
	}

	rng := rand.New(rand.NewPCG(1, 2))
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range b.N {
		user := fmt.Sprintf("user-%d", rng.IntN(5000))
		account := fmt.Sprintf("account-%d", rng.IntN(500))
		m := map[string]any{"messageId": fmt.Sprintf("bench-%d", i), "userId": user,
			"timestamp": start.Add(time.Duration(i) * time.Millisecond).Format(time.RFC3339Nano), "receivedAt": start.Format(time.RFC3339Nano),
			"context": map[string]any{"library": map[string]any{"name": "analytics-go", "version": "3.3.0"}, "ip": "10.0.0.1"}}
		switch r := rng.IntN(10); {
		case r < 7:
			m["type"], m["event"] = "track", fmt.Sprintf("Feature %d Used", rng.IntN(40))
			m["properties"] = map[string]any{"plan": "pro", "value": rng.IntN(100), "path": "/app/dashboard"}
			if rng.IntN(2) == 0 {
				m["context"].(map[string]any)["groupId"] = account
			}
		case r < 9:
			m["type"] = "identify"
			m["traits"] = map[string]any{"email": user + "@example.com", "plan": "pro", "seats": rng.IntN(50),
				"company": map[string]any{"id": account, "name": "Company " + account}}
		default:
			m["type"], m["groupId"] = "group", account
			m["traits"] = map[string]any{"name": "Company " + account, "plan": "enterprise", "mrr": rng.IntN(10000)}
		}
		data, _ := json.Marshal(m)
		out := nats.NewMsg(src.Stream().Subject(m["type"].(string)))
		out.Data = data
		out.Header.Set(nats.MsgIdHdr, m["messageId"].(string))
		if _, err := benchJS.PublishMsgAsync(out); err != nil {
			b.Fatal(err)
		}
	}
	<-benchJS.PublishAsyncComplete()

	w, err := New(Options{Pool: benchPool, JetStream: benchJS, Source: src,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	consumer, err := benchJS.Consumer(ctx, src.Stream().StreamName(), stream.WorkerConsumer)
	if err != nil {
		b.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	b.ResetTimer()
	began := time.Now()
	go func() { done <- w.Run(runCtx) }()
	for {
		info, err := consumer.Info(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if info.NumPending == 0 && info.NumAckPending == 0 && info.AckFloor.Stream >= uint64(b.N) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	elapsed := time.Since(began)
	b.StopTimer()
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
}
