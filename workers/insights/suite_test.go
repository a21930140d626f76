package insights_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tallyhq/tally/test/testdb"
	"github.com/tallyhq/tally/test/testenv"
	"github.com/tallyhq/tally/workers/insights"
	"github.com/tallyhq/tally/workers/local"
	"github.com/tallyhq/tally/workers/natsserver"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
	"github.com/tallyhq/tally/workers/worker"
)

func TestInsights(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "Insights Suite")
}

// The suite runs Tally's real data path (receiver, JetStream, workers, Postgres, as tally local
// wires them) to build each spec's data set, and pushers against a fake Segment endpoint or
// against that very receiver.
var (
	databaseURL string
	pool        *pgxpool.Pool
	natsSrv     *server.Server
	pipeline    *local.Pipeline
	tallyURL    string // the pipeline's receiver
	registry    = prometheus.NewRegistry()
	metrics     = insights.NewMetrics(registry)

	sourcesMu sync.Mutex
	sources   []*source.Config
	sourceSeq atomic.Int64
)

var _ = BeforeSuite(func(ctx SpecContext) {
	// Waits are for events (rows committed, requests received, pushes counted), never for time:
	// the bound is only how long a loaded machine may take.
	SetDefaultEventuallyTimeout(60 * time.Second)
	SetDefaultEventuallyPollingInterval(10 * time.Millisecond)
	url, drop, err := testdb.Fresh(ctx, "insights")
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(drop)
	databaseURL = url
	Expect(worker.Migrate(ctx, databaseURL)).To(Succeed())
	pool, err = pgxpool.New(ctx, databaseURL)
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(pool.Close)

	natsSrv, err = natsserver.Start(natsserver.Options{StoreDir: GinkgoT().TempDir()})
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(natsSrv.Shutdown)
	nc, err := nats.Connect(natsSrv.ClientURL())
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(nc.Close)

	pipeline, err = local.NewPipeline(local.PipelineOptions{Conn: nc, Pool: pool, BatchSize: 100,
		MaxWait: 20 * time.Millisecond, Logger: testenv.QuietLogger()})
	Expect(err).NotTo(HaveOccurred())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	Expect(err).NotTo(HaveOccurred())
	pipeline.Start(ln)
	tallyURL = "http://" + ln.Addr().String()
	DeferCleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = pipeline.Stop(ctx)
	})
})

// newSource makes a source with its own tenant, served by the pipeline's receiver and workers,
// with insights going to endpoint.
func newSource(ctx context.Context, endpoint string) *source.Config {
	n := sourceSeq.Add(1)
	src := &source.Config{
		Namespace: "test", Name: fmt.Sprintf("src%d", n), Tenant: fmt.Sprintf("tenant%d", n),
		WriteKeys: []string{fmt.Sprintf("write-key-%d", n)},
		Insights:  &source.InsightsConfig{Endpoint: endpoint, Interval: time.Hour, WriteKey: fmt.Sprintf("insights-key-%d", n)},
	}
	sourcesMu.Lock()
	sources = append(sources, src)
	all := append([]*source.Config(nil), sources...)
	sourcesMu.Unlock()
	Expect(pipeline.Serve(ctx, all)).To(Succeed())
	stop, err := pipeline.StartWorkers(src, 1)
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(stop)
	return src
}

// pusher makes a pusher of src with test-sized pages and retries; tweak adjusts its options.
func pusher(src *source.Config, tweak ...func(*insights.Options)) *insights.Pusher {
	GinkgoHelper()
	conn, err := pgx.ParseConfig(databaseURL)
	Expect(err).NotTo(HaveOccurred())
	o := insights.Options{Source: src, Conn: conn, Logger: testenv.QuietLogger(), Metrics: metrics,
		LibraryVersion: "test", RetryBase: 5 * time.Millisecond, RetryMax: 20 * time.Millisecond,
		FailureBackoff: 10 * time.Millisecond, StandbyRecheck: 10 * time.Millisecond}
	for _, t := range tweak {
		t(&o)
	}
	p, err := insights.New(o)
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(p.Close)
	return p
}

// msg is a Segment message as Segment's destination delivery would send it to /v1/segment:
// timestamps are stored as sent.
type msg map[string]any

func iso(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

func group(id, user, account string, at time.Time, traits map[string]any) msg {
	m := msg{"type": "group", "messageId": id, "groupId": account, "traits": traits, "timestamp": iso(at)}
	if user != "" {
		m["userId"] = user
	} else {
		m["anonymousId"] = "admin-console"
	}
	return m
}

func identify(id, user string, at time.Time, traits map[string]any) msg {
	return msg{"type": "identify", "messageId": id, "userId": user, "traits": traits, "timestamp": iso(at)}
}

func track(id, user, account string, at time.Time) msg {
	m := msg{"type": "track", "messageId": id, "userId": user, "event": "Report Exported", "timestamp": iso(at)}
	if account != "" {
		m["context"] = map[string]any{"groupId": account}
	}
	return m
}

// send posts msgs to the pipeline's destination route as Segment would, and waits until the
// workers committed them.
func send(ctx context.Context, src *source.Config, msgs ...msg) {
	GinkgoHelper()
	body, err := json.Marshal(map[string]any{"batch": msgs})
	Expect(err).NotTo(HaveOccurred())
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, tallyURL+"/v1/segment", bytes.NewReader(body))
	Expect(err).NotTo(HaveOccurred())
	req.Header.Set("Authorization", "Bearer "+src.WriteKeys[0])
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	Expect(err).NotTo(HaveOccurred())
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	Expect(resp.StatusCode).To(Equal(http.StatusOK), string(out))
	Expect(string(out)).NotTo(ContainSubstring("rejected"))
	drained(ctx, src)
}

// drained waits until every message of src's stream has been acknowledged by a worker.
func drained(ctx context.Context, src *source.Config) {
	GinkgoHelper()
	js := pipeline.JetStream()
	Eventually(func() error {
		return testenv.Acknowledged(ctx, js, src.Stream().StreamName(), stream.WorkerConsumer)
	}).WithContext(ctx).WithTimeout(60 * time.Second).WithPolling(20 * time.Millisecond).Should(Succeed())
}

func queryRows(ctx context.Context, sql string, args ...any) []map[string]any {
	GinkgoHelper()
	rows, err := pool.Query(ctx, sql, args...)
	Expect(err).NotTo(HaveOccurred())
	out, err := pgx.CollectRows(rows, pgx.RowToMap)
	Expect(err).NotTo(HaveOccurred())
	return out
}

// fakeSegment is Segment's Tracking API as far as a pusher sees it: /v1/batch, Basic auth with
// the write key, gzip bodies. It records every request and answers from a script of statuses
// first (then 200).
type fakeSegment struct {
	srv *httptest.Server

	mu       sync.Mutex
	requests []request
	script   []int // statuses to answer next, in order
	always   int   // when set, the status of every request after the script
	noGzip   bool  // answer 415 to gzip bodies
}

type request struct {
	key      string
	gzip     bool
	status   int
	messages []map[string]any
	context  map[string]any
}

func newFakeSegment() *fakeSegment {
	f := &fakeSegment{}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	DeferCleanup(f.srv.Close)
	return f
}

func (f *fakeSegment) URL() string { return f.srv.URL }

func (f *fakeSegment) serve(w http.ResponseWriter, r *http.Request) {
	defer GinkgoRecover()
	Expect(r.Method + " " + r.URL.Path).To(Equal("POST /v1/batch"))
	key, _, _ := r.BasicAuth()
	var body io.Reader = r.Body
	gz := r.Header.Get("Content-Encoding") == "gzip"
	f.mu.Lock()
	status := http.StatusOK
	switch {
	case gz && f.noGzip:
		status = http.StatusUnsupportedMediaType
	case len(f.script) > 0:
		status, f.script = f.script[0], f.script[1:]
	case f.always != 0:
		status = f.always
	}
	f.mu.Unlock()
	if gz && status != http.StatusUnsupportedMediaType {
		zr, err := gzip.NewReader(r.Body)
		Expect(err).NotTo(HaveOccurred())
		body = zr
	}
	var payload struct {
		Batch   []map[string]any `json:"batch"`
		Context map[string]any   `json:"context"`
	}
	if status != http.StatusUnsupportedMediaType {
		Expect(json.NewDecoder(body).Decode(&payload)).To(Succeed())
	}
	f.mu.Lock()
	f.requests = append(f.requests, request{key: key, gzip: gz, status: status, messages: payload.Batch, context: payload.Context})
	f.mu.Unlock()
	if status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "1")
	}
	w.WriteHeader(status)
	if status == http.StatusBadRequest {
		_, _ = w.Write([]byte(`{"error":"bad write key"}`))
	}
}

// fail answers the next requests with these statuses.
func (f *fakeSegment) fail(statuses ...int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.script = append(f.script, statuses...)
}

func (f *fakeSegment) setAlways(status int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.always = status
}

func (f *fakeSegment) all() []request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]request(nil), f.requests...)
}

// reset forgets the requests so far.
func (f *fakeSegment) reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = nil
}

// accepted are the messages of the requests answered 200, in order.
func (f *fakeSegment) accepted() []map[string]any {
	var out []map[string]any
	for _, r := range f.all() {
		if r.status == http.StatusOK {
			out = append(out, r.messages...)
		}
	}
	return out
}

// traitsByEntity is the traits of the accepted messages by "group:<id>" and "identify:<id>"; a
// later message of an entity replaces an earlier one.
func traitsByEntity(msgs []map[string]any) map[string]map[string]any {
	out := map[string]map[string]any{}
	for _, m := range msgs {
		id := m["userId"]
		if m["type"] == "group" {
			id = m["groupId"]
		}
		out[fmt.Sprintf("%s:%s", m["type"], id)] = m["traits"].(map[string]any)
	}
	return out
}

func entityKeys(msgs []map[string]any) []string {
	var keys []string
	for k := range traitsByEntity(msgs) {
		keys = append(keys, k)
	}
	return keys
}

// deliveredRows are the source's rows of tally.insights_delivered by "kind:id".
func deliveredRows(ctx context.Context, src *source.Config) map[string]map[string]any {
	out := map[string]map[string]any{}
	for _, r := range queryRows(ctx, `SELECT kind, id, traits, message_id FROM tally.insights_delivered
		WHERE tenant = $1 AND source = $2`, src.Tenant, src.String()) {
		out[r["kind"].(string)+":"+r["id"].(string)] = r
	}
	return out
}

func lastSeenText(ctx context.Context, table, column, tenant, id string) any {
	GinkgoHelper()
	rows := queryRows(ctx, fmt.Sprintf(`SELECT last_seen_at FROM tally.%s WHERE tenant = $1 AND %s = $2`, table, column), tenant, id)
	Expect(rows).To(HaveLen(1))
	t, ok := rows[0]["last_seen_at"].(time.Time)
	if !ok {
		return nil
	}
	return t.UTC().Format("2006-01-02T15:04:05.000Z")
}

// metricValue is the value of the registry's series name with these label pairs (0 when absent).
func metricValue(name string, labelPairs ...string) float64 {
	GinkgoHelper()
	families, err := registry.Gather()
	Expect(err).NotTo(HaveOccurred())
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	metrics:
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for i := 0; i+1 < len(labelPairs); i += 2 {
				if labels[labelPairs[i]] != labelPairs[i+1] {
					continue metrics
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	return 0
}
