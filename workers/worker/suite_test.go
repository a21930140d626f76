package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tallyhq/tally/test/testdb"
	"github.com/tallyhq/tally/test/testenv"
	"github.com/tallyhq/tally/workers/natsserver"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
)

func TestWorker(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "Worker Suite")
}

var (
	// testMetrics are the metrics of the workers startWorker runs; specs read the series of
	// their own source.
	testMetrics = NewMetrics(prometheus.NewRegistry())
	// testBounds are the production bounds of a batch transaction, for specs that call apply.
	testBounds   = txBounds{statement: DefaultStatementTimeout, lock: DefaultLockTimeout, batchBytes: DefaultBatchBytes}
	databaseURL  string
	databaseName string
	testPool     *pgxpool.Pool
	natsSrv      *server.Server
	nc           *nats.Conn
	js           jetstream.JetStream
	sourceSeq    atomic.Int64
)

var _ = BeforeSuite(func(ctx SpecContext) {
	url, drop, err := testdb.Fresh(ctx, "worker")
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(drop)
	databaseURL = url
	databaseName = url[strings.LastIndex(url, "/")+1:]
	if i := strings.Index(databaseName, "?"); i >= 0 {
		databaseName = databaseName[:i]
	}
	Expect(Migrate(ctx, databaseURL)).To(Succeed())
	testPool, err = pgxpool.New(ctx, databaseURL)
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(testPool.Close)

	natsSrv, err = natsserver.Start(natsserver.Options{StoreDir: GinkgoT().TempDir()})
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(natsSrv.Shutdown)
	nc, err = nats.Connect(natsSrv.ClientURL())
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(nc.Close)
	js, err = jetstream.New(nc)
	Expect(err).NotTo(HaveOccurred())
})

// newSource makes a source with its own tenant and streams, so specs never see each other's rows.
func newSource(ctx context.Context, accountProperty string, ignored ...string) *source.Config {
	n := sourceSeq.Add(1)
	src := &source.Config{
		Namespace: "test", Name: fmt.Sprintf("src%d", n), Tenant: fmt.Sprintf("tenant%d", n),
		AccountProperty: accountProperty, IgnoredEvents: ignored,
		// JetStream reserves each stream's byte limit against its storage: the default 1 GiB per
		// source would exhaust it after some dozens of specs. The largest backlog here is 45 MB.
		StreamMaxBytes: 128 << 20,
	}
	Expect(stream.Ensure(ctx, js, src.Stream(), src.StreamSettings())).To(Succeed())
	return src
}

// writeSourceConfig writes src's settings file, as the operator mounts it, into a fresh directory
// and returns its path.
func writeSourceConfig(src *source.Config) string {
	GinkgoHelper()
	settings, err := source.EncodeConfig(src)
	Expect(err).NotTo(HaveOccurred())
	file := filepath.Join(GinkgoT().TempDir(), source.ConfigFileName)
	Expect(os.WriteFile(file, settings, 0o600)).To(Succeed())
	return file
}

// startWorker runs a worker on src until the spec ends; the returned func stops it and waits.
func startWorker(src *source.Config, batchSize int, tweak ...func(*Worker)) (stop func() error) {
	return startWorkerOn(testPool, src, batchSize, tweak...)
}

// startWorkerOn is startWorker with the worker's own database pool.
func startWorkerOn(testPool *pgxpool.Pool, src *source.Config, batchSize int, tweak ...func(*Worker)) (stop func() error) {
	w, err := New(Options{Pool: testPool, JetStream: js, Source: src, BatchSize: batchSize,
		MaxWait: 50 * time.Millisecond, Logger: testenv.QuietLogger(), Metrics: testMetrics})
	Expect(err).NotTo(HaveOccurred())
	for _, t := range tweak {
		t(w)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var runErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer GinkgoRecover()
		defer wg.Done()
		runErr = w.Run(ctx)
	}()
	var once sync.Once
	stop = func() error {
		once.Do(func() { cancel(); wg.Wait() })
		return runErr
	}
	DeferCleanup(stop)
	return stop
}

// ownNATS is a NATS server of a spec's own (the suite's other specs keep theirs running), a
// connection to it that reconnects forever, and a source whose stream is there.
type ownNATS struct {
	conn *nats.Conn
	js   jetstream.JetStream
	src  *source.Config
	// restart shuts the server down and starts it again on its store and port: the stream is
	// back, a memory-stored consumer is not.
	restart func()
}

func startOwnNATS(ctx context.Context) *ownNATS {
	GinkgoHelper()
	dir := GinkgoT().TempDir()
	ns, err := natsserver.Start(natsserver.Options{StoreDir: dir})
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(func() { ns.Shutdown() }) // the server running when the spec ends
	port := ns.Addr().(*net.TCPAddr).Port
	conn, err := nats.Connect(ns.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(conn.Close)
	ownJS, err := jetstream.New(conn)
	Expect(err).NotTo(HaveOccurred())
	n := sourceSeq.Add(1)
	src := &source.Config{Namespace: "test", Name: fmt.Sprintf("src%d", n), Tenant: fmt.Sprintf("tenant%d", n)}
	Expect(stream.Ensure(ctx, ownJS, src.Stream(), src.StreamSettings())).To(Succeed())
	return &ownNATS{conn: conn, js: ownJS, src: src, restart: func() {
		GinkgoHelper()
		ns.Shutdown()
		ns.WaitForShutdown()
		ns, err = natsserver.Start(natsserver.Options{StoreDir: dir, Port: port})
		Expect(err).NotTo(HaveOccurred())
	}}
}

// runWorker runs a worker on the source until the spec ends.
func (o *ownNATS) runWorker() {
	GinkgoHelper()
	w, err := New(Options{Pool: testPool, JetStream: o.js, Source: o.src, MaxWait: 50 * time.Millisecond,
		Logger: testenv.QuietLogger(), Metrics: testMetrics})
	Expect(err).NotTo(HaveOccurred())
	ctx, stop := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- w.Run(ctx) }()
	DeferCleanup(func() error { stop(); return <-ran })
}

// eventCount is how many events src's tenant has in Postgres.
func eventCount(ctx context.Context, src *source.Config) int64 {
	return queryRow(ctx, `SELECT count(*) AS n FROM tally.events WHERE tenant = $1`, src.Tenant)["n"].(int64)
}

// storedMessages is how many messages src's stream holds (acknowledged ones until a purge).
func storedMessages(ctx context.Context, src *source.Config) uint64 {
	GinkgoHelper()
	state, err := stream.Inspect(ctx, js, src.Stream())
	Expect(err).NotTo(HaveOccurred())
	return state.Messages
}

// msg is a normalised Segment message as the receiver publishes it.
type msg map[string]any

var baseTime = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// at is baseTime plus s seconds, formatted as the receiver does.
func at(s float64) string {
	return baseTime.Add(time.Duration(s * float64(time.Second))).Format(time.RFC3339Nano)
}

func identify(id, user string, ts float64, traits map[string]any) msg {
	return msg{"type": "identify", "messageId": id, "userId": user, "traits": traits, "timestamp": at(ts), "receivedAt": at(ts + 1)}
}

func group(id, user, account string, ts float64, traits map[string]any) msg {
	m := msg{"type": "group", "messageId": id, "groupId": account, "traits": traits, "timestamp": at(ts), "receivedAt": at(ts + 1)}
	if user != "" {
		m["userId"] = user
	}
	return m
}

func track(id, user, event string, ts float64, properties, context map[string]any) msg {
	m := msg{"type": "track", "messageId": id, "event": event, "timestamp": at(ts), "receivedAt": at(ts + 1)}
	if user != "" {
		m["userId"] = user
	}
	if properties != nil {
		m["properties"] = properties
	}
	if context != nil {
		m["context"] = context
	}
	return m
}

// publish puts messages on src's stream the way the receiver does: one subject per type and the
// messageId as Nats-Msg-Id.
func publish(ctx context.Context, src *source.Config, msgs ...msg) {
	for _, m := range msgs {
		data, err := json.Marshal(m)
		Expect(err).NotTo(HaveOccurred())
		publishRaw(ctx, src, m["type"].(string), m["messageId"].(string), data)
	}
}

func publishRaw(ctx context.Context, src *source.Config, typ, msgID string, data []byte) {
	var ids struct{ UserID, AnonymousID string }
	_ = json.Unmarshal(data, &ids) // a poison message has none: partition 0
	n := src.Partitions
	out := nats.NewMsg(src.Stream().PartitionSubject(typ, stream.Partition(stream.UserKey(ids.UserID, ids.AnonymousID), n), n))
	out.Data = data
	out.Header.Set(nats.MsgIdHdr, msgID)
	_, err := js.PublishMsg(ctx, out)
	Expect(err).NotTo(HaveOccurred())
}

// drained waits until every message of src's stream has been acknowledged by a worker.
func drained(ctx context.Context, src *source.Config) {
	Eventually(func() error {
		if src.ConsumedPartitions() > 1 {
			return testenv.Drained(ctx, js, src.Stream().StreamName())
		}
		return testenv.Acknowledged(ctx, js, src.Stream().StreamName(), stream.WorkerConsumer)
	}).WithContext(ctx).WithTimeout(60 * time.Second).WithPolling(50 * time.Millisecond).Should(Succeed())
}

// queryRows returns the rows of a query as maps, JSON-friendly, for assertions and dumps.
func queryRows(ctx context.Context, sql string, args ...any) []map[string]any {
	rows, err := testPool.Query(ctx, sql, args...)
	Expect(err).NotTo(HaveOccurred())
	out, err := pgx.CollectRows(rows, pgx.RowToMap)
	Expect(err).NotTo(HaveOccurred())
	return out
}

func queryRow(ctx context.Context, sql string, args ...any) map[string]any {
	rows := queryRows(ctx, sql, args...)
	Expect(rows).To(HaveLen(1), "rows of %s %v", sql, args)
	return rows[0]
}

func ts(s float64) time.Time { return baseTime.Add(time.Duration(s * float64(time.Second))) }
