package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tallyhq/tally/test/testdb"
	"github.com/tallyhq/tally/test/testenv"
	"github.com/tallyhq/tally/workers/stream"
)

var _ = Describe("Failures", func() {
	It("holds messages while Postgres is unavailable and maps every one of them once it is back", Serial, func(ctx SpecContext) {
		src := newSource(ctx, "")
		startWorker(src, 20)
		publish(ctx, src, track("before", "u1", "Clicked", 1, nil, nil))
		drained(ctx, src)

		retries := func() float64 {
			return testutil.ToFloat64(testMetrics.retries.WithLabelValues(src.String(), "infrastructure"))
		}
		restore := postgresOutage(ctx)
		DeferCleanup(restore)

		const n = 60
		for i := range n {
			publish(ctx, src, track(fmt.Sprintf("during-%02d", i), "u1", "Clicked", float64(10+i), nil, nil))
		}
		By("the worker retries with backoff and acknowledges nothing")
		Eventually(retries).WithTimeout(30 * time.Second).Should(BeNumerically(">=", 2))
		c, err := js.Consumer(ctx, src.Stream().StreamName(), stream.WorkerConsumer)
		Expect(err).NotTo(HaveOccurred())
		info, err := c.Info(ctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(info.NumAckPending + int(info.NumPending)).To(Equal(n))

		By("Postgres comes back")
		restore()
		drained(ctx, src)
		Eventually(func(g Gomega) {
			var count int
			g.Expect(testPool.QueryRow(ctx, `SELECT count(*) FROM tally.events WHERE tenant = $1`, src.Tenant).Scan(&count)).To(Succeed())
			g.Expect(count).To(Equal(n + 1))
		}).WithTimeout(30 * time.Second).Should(Succeed())
		Expect(queryRow(ctx, `SELECT count FROM tally.event_catalog WHERE tenant = $1 AND event = 'Clicked'`, src.Tenant)["count"]).To(BeEquivalentTo(n + 1))
		letters, err := stream.ListDeadLetters(ctx, js, src.Stream())
		Expect(err).NotTo(HaveOccurred())
		Expect(letters).To(BeEmpty())
	})

	It("maps nothing twice when a worker dies between commit and ack", func(ctx SpecContext) {
		src := newSource(ctx, "")
		// A short AckWait so JetStream redelivers the unacknowledged batch quickly.
		cfg := stream.ConsumerConfig(src.Stream())
		cfg.AckWait = time.Second
		_, err := js.CreateOrUpdateConsumer(ctx, src.Stream().StreamName(), cfg)
		Expect(err).NotTo(HaveOccurred())

		publish(ctx, src,
			group("g1", "u1", "acme", 1, map[string]any{"name": "Acme"}),
			track("t1", "u1", "Clicked", 2, nil, nil),
			track("t2", "u1", "Clicked", 3, nil, nil),
		)
		// The worker dies right after its first commit: none of its acks leave the process.
		dying, die := context.WithCancel(ctx)
		doomed, err := New(Options{Pool: testPool, JetStream: js, Source: src, Logger: testenv.QuietLogger(),
			Acknowledger: killedBeforeAck{die}})
		Expect(err).NotTo(HaveOccurred())
		died := make(chan error, 1)
		go func() { died <- doomed.Run(dying) }()
		Eventually(died).WithTimeout(30 * time.Second).Should(Receive(BeNil()))
		Expect(queryRow(ctx, `SELECT count(*) AS n FROM tally.events WHERE tenant = $1`, src.Tenant)["n"]).To(BeEquivalentTo(2))
		before := dumpTenant(ctx, src.Tenant)

		startWorker(src, 100)
		drained(ctx, src)
		Expect(dumpTenant(ctx, src.Tenant)).To(Equal(before))
		Expect(queryRow(ctx, `SELECT count FROM tally.event_catalog WHERE tenant = $1 AND event = 'Clicked'`, src.Tenant)["count"]).To(BeEquivalentTo(2))
	})

	It("changes nothing when a whole batch is applied again", func(ctx SpecContext) {
		msgs := generateMessages(7, 80)
		tenant := "redelivered-batch"
		applyDirect(ctx, tenant, msgs, 1, len(msgs), nil)
		once := dumpTenant(ctx, tenant)
		applyDirect(ctx, tenant, msgs, 1, len(msgs), nil)
		applyDirect(ctx, tenant, msgs, 2, 9, nil)
		Expect(dumpTenant(ctx, tenant)).To(Equal(once))
	})

	It("creates its consumer again when it is gone, and binds again when its whole stream is recreated", func(ctx SpecContext) {
		src := newSource(ctx, "")
		var w *Worker
		startWorker(src, 10, func(worker *Worker) { w = worker })
		publish(ctx, src, track("t1", "u1", "Clicked", 1, nil, nil))
		drained(ctx, src)

		By("a deleted consumer is created again by the worker, without the operator")
		name := src.Stream().StreamName()
		before, err := js.Consumer(ctx, name, stream.WorkerConsumer)
		Expect(err).NotTo(HaveOccurred())
		Expect(js.DeleteConsumer(ctx, name, stream.WorkerConsumer)).To(Succeed())
		Eventually(func(g Gomega) {
			again, err := js.Consumer(ctx, name, stream.WorkerConsumer)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(again.CachedInfo().Created).To(BeTemporally(">", before.CachedInfo().Created))
			g.Expect(again.CachedInfo().Config.MemoryStorage).To(BeTrue())
		}).WithTimeout(30 * time.Second).Should(Succeed())
		publish(ctx, src, track("t2", "u1", "Clicked", 2, nil, nil))
		drained(ctx, src)
		Eventually(w.Ready).WithTimeout(30 * time.Second).Should(BeTrue())

		By("a deleted stream is waited for (the worker creates no stream); once recreated, it binds again")
		// Wait until the worker has noticed the loss (it reports not ready), so what follows shows
		// it bound again rather than a consumer handle that never broke.
		Expect(stream.Delete(ctx, js, src.Stream())).To(Succeed())
		Eventually(w.Ready).WithTimeout(30 * time.Second).Should(BeFalse())
		Expect(stream.Ensure(ctx, js, src.Stream(), src.StreamSettings())).To(Succeed())
		publish(ctx, src, track("t3", "u1", "Clicked", 3, nil, nil))
		drained(ctx, src)
		Eventually(func() []map[string]any {
			return queryRows(ctx, `SELECT message_id FROM tally.events WHERE tenant = $1 ORDER BY message_id`, src.Tenant)
		}).Should(Equal([]map[string]any{{"message_id": "t1"}, {"message_id": "t2"}, {"message_id": "t3"}}))
	})

	It("maps every accepted message once across a NATS restart that forgets its consumer", Serial, func(ctx SpecContext) {
		own := startOwnNATS(ctx)
		ownJS, src := own.js, own.src
		send := func(prefix string) {
			for i := range 10 {
				id := fmt.Sprintf("%s-%d", prefix, i)
				data, err := json.Marshal(track(id, "u1", "Clicked", float64(i), nil, nil))
				Expect(err).NotTo(HaveOccurred())
				_, err = ownJS.Publish(ctx, src.Stream().Subject("track"), data, jetstream.WithMsgID(id))
				Expect(err).NotTo(HaveOccurred())
			}
		}
		events := func() int {
			var count int
			Expect(testPool.QueryRow(ctx, `SELECT count(*) FROM tally.events WHERE tenant = $1`, src.Tenant).Scan(&count)).To(Succeed())
			return count
		}
		own.runWorker()

		send("before")
		Eventually(events).WithTimeout(30 * time.Second).Should(Equal(10))

		By("ten more, some held by the worker unacknowledged, the rest waiting, while Postgres is away")
		restore := postgresOutage(ctx)
		DeferCleanup(restore)
		send("held")
		old, err := ownJS.Consumer(ctx, src.Stream().StreamName(), stream.WorkerConsumer)
		Expect(err).NotTo(HaveOccurred())
		// How many the worker holds depends on how the ten arrive: it hands a pull's messages to
		// its (now failing) transaction once their arrivals pause, and the rest wait for the next
		// pull. Either way none is acknowledged.
		Eventually(func(g Gomega) {
			info, err := old.Info(ctx)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(info.NumAckPending).To(BeNumerically(">=", 1))
			g.Expect(info.NumAckPending + int(info.NumPending)).To(Equal(10))
		}).WithTimeout(30 * time.Second).Should(Succeed())

		By("the server restarts on its store: the stream is back, the memory-stored consumer is not")
		own.restart()
		restore()
		send("after")

		By("the worker created its consumer again, and every message is in Postgres once")
		Eventually(func(g Gomega) {
			again, err := ownJS.Consumer(ctx, src.Stream().StreamName(), stream.WorkerConsumer)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(again.CachedInfo().Created).To(BeTemporally(">", old.CachedInfo().Created))
		}).WithTimeout(30 * time.Second).Should(Succeed())
		Eventually(events).WithTimeout(90 * time.Second).Should(Equal(30))
		Eventually(func() error {
			return testenv.Acknowledged(ctx, ownJS, src.Stream().StreamName(), stream.WorkerConsumer)
		}).WithTimeout(60 * time.Second).Should(Succeed())
		Expect(queryRow(ctx, `SELECT count FROM tally.event_catalog WHERE tenant = $1 AND event = 'Clicked'`, src.Tenant)["count"]).To(BeEquivalentTo(30))
	})

	It("migrates safely when several processes migrate at once, and again", func(ctx SpecContext) {
		url, drop, err := testdb.Fresh(ctx, "worker_migrate")
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(drop)
		var wg sync.WaitGroup
		errs := make(chan error, 4)
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs <- Migrate(ctx, url)
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			Expect(err).NotTo(HaveOccurred())
		}
		Expect(Migrate(ctx, url)).To(Succeed())
		conn, err := pgx.Connect(ctx, url)
		Expect(err).NotTo(HaveOccurred())
		defer conn.Close(ctx)
		var applied int
		Expect(conn.QueryRow(ctx, `SELECT count(*) FROM tally.goose_db_version WHERE version_id > 0`).Scan(&applied)).To(Succeed())
		files, err := fs.ReadDir(migrationFiles, "migrations")
		Expect(err).NotTo(HaveOccurred())
		Expect(applied).To(Equal(len(files)), "each migration applied once")
	})
})

// postgresOutage makes Postgres unavailable to the workers and returns the func that ends the
// outage (safe to call twice). By default it cuts off only this suite's database, since other
// suites may share the server: new connections are refused and existing ones are terminated. With
// TALLY_TEST_PG_RESTART=1 it stops the whole local cluster instead, and starts it again.
func postgresOutage(ctx context.Context) (restore func()) {
	var once sync.Once
	if os.Getenv("TALLY_TEST_PG_RESTART") == "1" {
		cluster := func(action string, extra ...string) {
			args := append([]string{"--skip-systemctl-redirect", "15", "main", action}, extra...)
			out, err := exec.Command("pg_ctlcluster", args...).CombinedOutput()
			Expect(err).NotTo(HaveOccurred(), string(out))
		}
		cluster("stop", "-m", "fast")
		return func() { once.Do(func() { cluster("start") }) }
	}
	admin, err := pgx.Connect(ctx, testdb.AdminURL())
	Expect(err).NotTo(HaveOccurred())
	db := pgx.Identifier{databaseName}.Sanitize()
	_, err = admin.Exec(ctx, "ALTER DATABASE "+db+" ALLOW_CONNECTIONS false")
	Expect(err).NotTo(HaveOccurred())
	_, err = admin.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`, databaseName)
	Expect(err).NotTo(HaveOccurred())
	return func() {
		once.Do(func() {
			defer admin.Close(context.Background())
			_, err := admin.Exec(context.Background(), "ALTER DATABASE "+db+" ALLOW_CONNECTIONS true")
			Expect(err).NotTo(HaveOccurred())
		})
	}
}

// killedBeforeAck stands for a process killed between commit and ack: it stops the worker and
// acknowledges nothing.
type killedBeforeAck struct{ kill context.CancelFunc }

func (k killedBeforeAck) Ack(jetstream.Msg) error {
	k.kill()
	return errors.New("killed after commit, before ack")
}
