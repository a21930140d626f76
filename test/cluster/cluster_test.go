//go:build scale

package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/test/testdb"
	"github.com/tallyhq/tally/test/testenv"
	"github.com/tallyhq/tally/workers/receiver"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
	"github.com/tallyhq/tally/workers/worker"
)

const (
	writeKey       = "cluster-write-key-0123456789abcd"
	senders        = 8
	perRequest     = 20
	publishTimeout = source.DefaultPublishTimeout
)

var _ = Describe("Tally on a three-node JetStream cluster", func() {
	It("keeps every acknowledged message, exactly once, when the stream leader's node dies under load", func(ctx SpecContext) {
		By("starting three NATS servers, each a process of its own, as one JetStream cluster, and a fresh database")
		nodes := startCluster(ctx, 3)
		dbURL, drop, err := testdb.Fresh(ctx, "cluster")
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(drop)
		Expect(worker.Migrate(ctx, dbURL)).To(Succeed())
		db, err := pgxpool.New(ctx, dbURL)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(db.Close)

		By("creating the source's streams with three replicas, partitioned by user (a consumer per partition)")
		src := &source.Config{Namespace: "tenants", Name: "acme-web", Tenant: "acme", WriteKeys: []string{writeKey},
			StreamReplicas: 3, StreamMaxBytes: 256 << 20, Partitions: 4}
		adminJS := jetStreamOn(nodes[0])
		Eventually(func() error {
			return stream.Ensure(ctx, adminJS, src.Stream(), src.StreamSettings())
		}, 30*time.Second, 200*time.Millisecond).Should(Succeed())
		leaderName := streamLeader(ctx, adminJS, src)
		leader := slices.IndexFunc(nodes, func(n *node) bool { return n.name == leaderName })
		Expect(leader).To(BeNumerically(">=", 0), "the stream has a leader")
		other := (leader + 1) % len(nodes)
		survivorJS := jetStreamOn(nodes[other])
		fmt.Fprintf(GinkgoWriter, "stream leader: %s\n", leaderName)

		By("connecting two receivers to the leader's node (one publishing message by message, one with group commit) and a worker to another")
		var urls []string
		for _, r := range []receiverKind{{"per message", false}, {"group commit", true}} {
			nc, err := stream.Connect(nodes[leader].url, "", "tally-receiver", testenv.QuietLogger(), nats.ReconnectBufSize(-1))
			Expect(err).NotTo(HaveOccurred())
			DeferCleanup(nc.Close)
			js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096), jetstream.WithPublishAsyncTimeout(publishTimeout))
			Expect(err).NotTo(HaveOccurred())
			rcv, err := receiver.New(receiver.Options{JetStream: js, Conn: nc, PublishTimeout: publishTimeout,
				AtomicBatches: r.atomic, Logger: testenv.QuietLogger()}, []*source.Config{src})
			Expect(err).NotTo(HaveOccurred())
			s := httptest.NewServer(rcv.Handler())
			DeferCleanup(s.Close)
			urls = append(urls, s.URL)
		}
		wnc, err := stream.Connect(nodes[other].url, "", "tally-worker", testenv.QuietLogger())
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(wnc.Close)
		wjs, err := jetstream.New(wnc)
		Expect(err).NotTo(HaveOccurred())
		w, err := worker.New(worker.Options{Pool: db, JetStream: wjs, Source: src, MaxWait: 50 * time.Millisecond, Logger: testenv.QuietLogger()})
		Expect(err).NotTo(HaveOccurred())
		workerCtx, stopWorker := context.WithCancel(context.Background())
		workerDone := make(chan error, 1)
		go func() { workerDone <- w.Run(workerCtx) }()
		DeferCleanup(func() {
			stopWorker()
			Expect(<-workerDone).To(Or(Succeed(), MatchError(context.Canceled)), "the worker stops cleanly")
		})

		By("sending from several clients that retry like Segment's")
		load := newLoad(urls)
		load.start()
		Eventually(load.acknowledgedRequests, 30*time.Second, 50*time.Millisecond).Should(BeNumerically(">=", 100))

		By("killing the stream leader's node (SIGKILL)")
		killedAt := time.Now()
		nodes[leader].kill()
		Eventually(func() string {
			name := streamLeader(ctx, survivorJS, src)
			if name == leaderName {
				return ""
			}
			return name
		}, 60*time.Second, 100*time.Millisecond).ShouldNot(BeEmpty())
		elected := time.Since(killedAt)

		By("waiting until both receivers answer 2xx again")
		Eventually(func() []int { return load.successesSince(killedAt) }, 60*time.Second, 100*time.Millisecond).
			Should(HaveEach(BeNumerically(">=", 50)))
		load.stop()

		Expect(load.violations()).To(BeEmpty(), "every answer is 2xx, or 503/429 with Retry-After, within the publish timeout")
		for i, kind := range []string{"per message", "group commit"} {
			first, last, refused := load.unavailability(i)
			fmt.Fprintf(GinkgoWriter, "receiver %s: %d non-2xx answers, unavailable %v (first to last non-2xx), slowest answer %v\n",
				kind, refused, last.Sub(first).Round(time.Millisecond), load.slowest(i).Round(time.Millisecond))
		}
		fmt.Fprintf(GinkgoWriter, "new stream leader elected %v after the kill; %d messages acknowledged\n",
			elected.Round(time.Millisecond), len(load.acknowledged()))

		By("checking that the worker stored every acknowledged message exactly once")
		acked := load.acknowledged()
		stopped := time.Now()
		// Messages delivered to the worker just before the kill, whose acks died with the node,
		// come again after the consumer's AckWait (60 s).
		Eventually(func() (int, error) { return count(ctx, db, src.Tenant) }, 3*stream.DefaultAckWait, 200*time.Millisecond).
			Should(Equal(len(acked)))
		fmt.Fprintf(GinkgoWriter, "all %d rows committed %v after the load stopped\n", len(acked), time.Since(stopped).Round(time.Millisecond))
		stored := storedIDs(ctx, db, src.Tenant)
		Expect(stored).To(HaveLen(len(acked)))
		slices.Sort(acked)
		Expect(stored).To(Equal(acked))
		Expect(workerDone).NotTo(Receive(), "the worker kept running through the election")
	})
})

type receiverKind struct {
	name   string
	atomic bool
}

// node is one NATS server of the cluster, a process of its own.
type node struct {
	name string
	url  string
	cmd  *exec.Cmd
}

// startCluster starts n NATS servers (test/cluster/natsnode) on loopback as one JetStream
// cluster and returns once it has a JetStream meta leader.
func startCluster(ctx context.Context, n int) []*node {
	GinkgoHelper()
	dir := GinkgoT().TempDir()
	bin := filepath.Join(dir, "natsnode")
	build := exec.Command("go", "build", "-o", bin, "./test/cluster/natsnode")
	build.Dir = testenv.RepoRoot()
	out, err := build.CombinedOutput()
	Expect(err).NotTo(HaveOccurred(), "go build: %s", out)

	clientAddrs, routeAddrs, routes := make([]string, n), make([]string, n), make([]string, n)
	for i := range n {
		clientAddrs[i], err = testenv.FreeAddr()
		Expect(err).NotTo(HaveOccurred())
		routeAddrs[i], err = testenv.FreeAddr()
		Expect(err).NotTo(HaveOccurred())
		routes[i] = "nats-route://" + routeAddrs[i]
	}
	var nodes []*node
	for i := range n {
		nd := &node{name: fmt.Sprintf("tally-%d", i), url: "nats://" + clientAddrs[i]}
		nd.cmd = exec.Command(bin, "-name", nd.name, "-port", port(clientAddrs[i]), "-cluster-port", port(routeAddrs[i]),
			"-routes", strings.Join(routes, ","), "-store", filepath.Join(dir, nd.name))
		nd.cmd.Stdout, nd.cmd.Stderr = GinkgoWriter, GinkgoWriter
		Expect(nd.cmd.Start()).To(Succeed())
		DeferCleanup(nd.kill)
		nodes = append(nodes, nd)
	}
	js := jetStreamOn(nodes[0])
	Eventually(func() error {
		_, err := js.AccountInfo(ctx)
		return err
	}, 60*time.Second, 100*time.Millisecond).Should(Succeed(), "the cluster elects a JetStream meta leader")
	return nodes
}

// kill ends the node as a crash would.
func (n *node) kill() {
	if n.cmd.ProcessState == nil {
		_ = n.cmd.Process.Kill()
		_ = n.cmd.Wait()
	}
}

func port(addr string) string { return addr[strings.LastIndexByte(addr, ':')+1:] }

// jetStreamOn is a JetStream context on a connection to the node (and only to it: no reconnects
// elsewhere, so what it reports is that node's view).
func jetStreamOn(n *node) jetstream.JetStream {
	GinkgoHelper()
	nc, err := nats.Connect(n.url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond), nats.IgnoreDiscoveredServers(), nats.RetryOnFailedConnect(true))
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(nc.Close)
	js, err := jetstream.New(nc)
	Expect(err).NotTo(HaveOccurred())
	return js
}

// streamLeader names the node leading the source's stream, "" while there is none.
func streamLeader(ctx context.Context, js jetstream.JetStream, src *source.Config) string {
	// Short: while there is no leader the request goes unanswered, and the poll should not wait
	// out the API's default timeout.
	ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	s, err := js.Stream(ctx, src.Stream().StreamName())
	if err != nil {
		return ""
	}
	info, err := s.Info(ctx)
	if err != nil || info.Cluster == nil {
		return ""
	}
	return info.Cluster.Leader
}

func count(ctx context.Context, db *pgxpool.Pool, tenant string) (int, error) {
	var n int
	err := db.QueryRow(ctx, `SELECT count(*) FROM tally.events WHERE tenant = $1`, tenant).Scan(&n)
	return n, err
}

func storedIDs(ctx context.Context, db *pgxpool.Pool, tenant string) []string {
	GinkgoHelper()
	rows, err := db.Query(ctx, `SELECT message_id FROM tally.events WHERE tenant = $1 ORDER BY message_id COLLATE "C"`, tenant)
	Expect(err).NotTo(HaveOccurred())
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	Expect(err).NotTo(HaveOccurred())
	return ids
}

// load is the clients: each sends batches of track calls to one of the receivers, one request at
// a time, and retries a refused request with the same messageIds until it is accepted, as
// Segment's libraries do (they honour Retry-After; these wait 100 ms to keep the test short).
type load struct {
	urls   []string
	client *http.Client
	done   chan struct{}
	wg     sync.WaitGroup

	mu     sync.Mutex
	acked  []string
	events [][]answer // per receiver
	bad    []string
}

type answer struct {
	at     time.Time
	status int
	took   time.Duration
}

func newLoad(urls []string) *load {
	return &load{urls: urls, done: make(chan struct{}), events: make([][]answer, len(urls)),
		// A hang is an answer that never comes: the receiver must answer within its publish
		// timeout, so anything far beyond it is a failure, not a slow figure.
		client: &http.Client{Timeout: publishTimeout + 10*time.Second}}
}

func (l *load) start() {
	for s := range senders {
		l.wg.Go(func() { l.send(s) })
	}
}

// stop ends the load once every client's request in hand is accepted.
func (l *load) stop() {
	close(l.done)
	l.wg.Wait()
}

func (l *load) send(sender int) {
	target := sender % len(l.urls)
	for r := 0; ; r++ {
		select {
		case <-l.done:
			return
		default:
		}
		ids := make([]string, perRequest)
		var body strings.Builder
		body.WriteString(`{"batch":[`)
		for k := range ids {
			ids[k] = fmt.Sprintf("s%d-r%05d-%02d", sender, r, k)
			if k > 0 {
				body.WriteByte(',')
			}
			fmt.Fprintf(&body, `{"type":"track","userId":"u%d","event":"Clicked","messageId":"%s"}`, (sender*7+k)%50, ids[k])
		}
		body.WriteString(`]}`)
		for {
			status, retryAfter, took, err := l.post(target, body.String())
			l.record(target, answer{at: time.Now(), status: status, took: took})
			switch {
			case err != nil:
				l.violation(fmt.Sprintf("receiver %d: %v after %v", target, err, took))
			case status == http.StatusOK:
				l.mu.Lock()
				l.acked = append(l.acked, ids...)
				l.mu.Unlock()
			case status == http.StatusServiceUnavailable || status == http.StatusTooManyRequests:
				if retryAfter == "" {
					l.violation(fmt.Sprintf("receiver %d: %d without Retry-After", target, status))
				}
			default:
				l.violation(fmt.Sprintf("receiver %d: status %d", target, status))
			}
			if status == http.StatusOK {
				break
			}
			if len(l.violations()) > 20 {
				return // the spec fails; do not spin
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

func (l *load) post(target int, body string) (status int, retryAfter string, took time.Duration, err error) {
	req, err := http.NewRequest(http.MethodPost, l.urls[target]+"/v1/batch", bytes.NewReader([]byte(body)))
	if err != nil {
		return 0, "", 0, err
	}
	req.SetBasicAuth(writeKey, "")
	req.Header.Set("Content-Type", "application/json")
	began := time.Now()
	resp, err := l.client.Do(req)
	if err != nil {
		var ne interface{ Timeout() bool }
		if errors.As(err, &ne) && ne.Timeout() {
			err = fmt.Errorf("no answer (hang): %w", err)
		}
		return 0, "", time.Since(began), err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Retry-After"), time.Since(began), nil
}

func (l *load) record(target int, a answer) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events[target] = append(l.events[target], a)
}

func (l *load) violation(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.bad = append(l.bad, s)
}

func (l *load) violations() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.bad)
}

func (l *load) acknowledged() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.acked)
}

func (l *load) acknowledgedRequests() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acked) / perRequest
}

// successesSince counts each receiver's 2xx answers after t.
func (l *load) successesSince(t time.Time) []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]int, len(l.events))
	for i, evs := range l.events {
		for _, e := range evs {
			if e.at.After(t) && e.status == http.StatusOK {
				out[i]++
			}
		}
	}
	return out
}

// unavailability is the first and last non-2xx answer of a receiver, and how many there were.
func (l *load) unavailability(target int) (first, last time.Time, n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.events[target] {
		if e.status == http.StatusOK {
			continue
		}
		if n == 0 {
			first = e.at.Add(-e.took) // when the refused request was sent
		}
		last = e.at
		n++
	}
	return first, last, n
}

func (l *load) slowest(target int) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	var d time.Duration
	for _, e := range l.events[target] {
		d = max(d, e.took)
	}
	return d
}
