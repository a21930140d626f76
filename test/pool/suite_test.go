// Package pool runs the pods of a SegmentSourcePool the way the operator deploys them: `tally
// receiver --pool` and `tally worker --pool`, in-process, on an embedded NATS server holding the
// pool's bucket, the members' streams and nothing else, and the local Postgres with a login of
// its own per tenant. NATS runs in decentralized JWT mode: the pods connect as the pool's own
// users (natsauth.PoolPermissions), as the operator issues them. The bucket is written here as the
// operator writes it (package pool).
package pool

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
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

	"github.com/tallyhq/tally/test/testdb"
	"github.com/tallyhq/tally/test/testenv"
	"github.com/tallyhq/tally/workers/natsauth"
	"github.com/tallyhq/tally/workers/natsserver"
	"github.com/tallyhq/tally/workers/pool"
	"github.com/tallyhq/tally/workers/receiver"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
	"github.com/tallyhq/tally/workers/worker"
)

func TestPool(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "SegmentSourcePool pods")
}

var (
	adminURL string
	admin    *pgxpool.Pool
	roles    *worker.TenantRoles
	natsSrv  *server.Server
	issuer   *natsauth.Issuer
	js       jetstream.JetStream
	seq      atomic.Int64
)

var _ = BeforeSuite(func(ctx SpecContext) {
	url, drop, err := testdb.Fresh(ctx, "pool")
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(drop)
	adminURL = url
	Expect(worker.Migrate(ctx, adminURL)).To(Succeed())
	admin, err = pgxpool.New(ctx, adminURL)
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(admin.Close)
	roles = worker.NewTenantRoles(admin, adminURL)

	auth, err := natsserver.NewAuth()
	Expect(err).NotTo(HaveOccurred())
	natsSrv, err = natsserver.Start(natsserver.Options{StoreDir: GinkgoT().TempDir(), Auth: auth})
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(natsSrv.Shutdown)
	issuer, err = natsauth.EmbeddedIssuer(auth)
	Expect(err).NotTo(HaveOccurred())
	adminCreds, err := natsauth.EmbeddedAdminCreds(auth)
	Expect(err).NotTo(HaveOccurred())
	adminOpt, err := natsauth.CredsOption(adminCreds)
	Expect(err).NotTo(HaveOccurred())
	nc, err := nats.Connect(natsSrv.ClientURL(), adminOpt)
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(nc.Close)
	js, err = jetstream.New(nc)
	Expect(err).NotTo(HaveOccurred())
})

// podsOf is one pool with its receiver and worker running, as the operator's Deployments run
// them, with the directories the operator mounts.
type podsOf struct {
	ref         pool.Ref
	kv          jetstream.KeyValue
	receiver    string // base URL
	metrics     string // the worker's metrics base URL
	secretsDir  string // receiver: <ns>.<name> shared secrets
	credsDir    string // worker: <ns>.<name>.database-url, .insights-write-key
	stopWorker  func()
	workerExtra []string
}

// newPool creates a pool's bucket and starts its receiver and worker (with workerArgs).
func newPool(ctx context.Context, workerArgs ...string) *podsOf {
	GinkgoHelper()
	p := &podsOf{ref: pool.Ref{Namespace: "platform", Name: fmt.Sprintf("pool%d", seq.Add(1))},
		secretsDir: GinkgoT().TempDir(), credsDir: GinkgoT().TempDir()}
	var err error
	p.kv, err = pool.EnsureBucket(ctx, js, p.ref, 1)
	Expect(err).NotTo(HaveOccurred())
	p.receiver = startReceiver(p.ref, "--shared-secrets-dir", p.secretsDir)
	p.workerExtra = append([]string{"--nats-creds", poolCreds(p.ref, natsauth.Worker)}, workerArgs...)
	p.startWorker()
	return p
}

// startReceiver runs `tally receiver --pool` until the spec ends and waits until it is ready.
func startReceiver(ref pool.Ref, extra ...string) string {
	GinkgoHelper()
	base := startReceiverUnready(ref, extra...)
	Eventually(func() int { return statusOf(http.Get(base + "/readyz")) }).WithTimeout(10 * time.Second).Should(Equal(http.StatusOK))
	return base
}

// startReceiverUnready runs `tally receiver --pool` and returns once it listens.
func startReceiverUnready(ref pool.Ref, extra ...string) string {
	GinkgoHelper()
	addr, err := testenv.FreeAddr()
	Expect(err).NotTo(HaveOccurred())
	cmd := receiver.NewCommand()
	cmd.SetArgs(append([]string{"--pool", ref.String(), "--listen", addr, "--nats-url", natsSrv.ClientURL(),
		"--nats-creds", poolCreds(ref, natsauth.Receiver),
		"--reload-interval", "50ms", "--shutdown-delay", "0s"}, extra...))
	runCommand(cmd.ExecuteContext)
	base := "http://" + addr
	Eventually(func() int { return statusOf(http.Get(base + "/healthz")) }).WithTimeout(10 * time.Second).Should(Equal(http.StatusOK))
	return base
}

// startWorker runs `tally worker --pool` (again, after stopWorker) and waits until it is ready.
func (p *podsOf) startWorker() {
	GinkgoHelper()
	addr, err := testenv.FreeAddr()
	Expect(err).NotTo(HaveOccurred())
	var cmd func(context.Context) error
	for _, c := range worker.Commands() {
		if c.Name() == "worker" {
			c.SetArgs(append([]string{"--pool", p.ref.String(), "--nats-url", natsSrv.ClientURL(),
				"--credentials-dir", p.credsDir, "--metrics-listen", addr, "--max-wait", "50ms", "--reload-interval", "50ms"},
				p.workerExtra...))
			cmd = c.ExecuteContext
		}
	}
	p.stopWorker = runCommand(cmd)
	p.metrics = "http://" + addr
	Eventually(func() int { return statusOf(http.Get(p.metrics + "/readyz")) }).WithTimeout(10 * time.Second).Should(Equal(http.StatusOK))
}

// poolCreds writes a creds file of the pool role's user, as the operator mounts it.
func poolCreds(ref pool.Ref, role natsauth.Role) string {
	GinkgoHelper()
	creds, err := issuer.IssuePool(ref, role, time.Now().Add(time.Hour))
	Expect(err).NotTo(HaveOccurred())
	file := filepath.Join(GinkgoT().TempDir(), string(role)+".creds")
	Expect(os.WriteFile(file, creds, 0o600)).To(Succeed())
	return file
}

// runCommand runs a command until the spec ends (or the returned stop, which is SIGTERM) and
// expects it to exit cleanly.
func runCommand(execute func(context.Context) error) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- execute(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		Eventually(done).WithTimeout(30 * time.Second).Should(Receive(BeNil()))
	}
	DeferCleanup(stop)
	return stop
}

// member is a source of the pool: its settings, write keys and tenant login.
type member struct {
	src  *source.Config
	keys []string
	url  string // the tenant's own Postgres login
}

// newMember makes a source of a tenant of its own, with its stream and its tenant's Postgres
// login; it is not in the pool yet. opts are the tenant ("" for one of its own) and the number of
// partitions.
func newMember(ctx context.Context, opts ...string) *member {
	GinkgoHelper()
	n := seq.Add(1)
	src := &source.Config{Namespace: fmt.Sprintf("team%d", n%3), Name: fmt.Sprintf("src%d", n), Tenant: fmt.Sprintf("tenant%d", n),
		StreamMaxBytes: 16 << 20}
	if len(opts) > 0 && opts[0] != "" {
		src.Tenant = opts[0]
	}
	if len(opts) > 1 {
		_, err := fmt.Sscan(opts[1], &src.Partitions)
		Expect(err).NotTo(HaveOccurred())
	}
	Expect(stream.Ensure(ctx, js, src.Stream(), src.StreamSettings())).To(Succeed())
	url, err := roles.Ensure(ctx, src.Tenant, "")
	Expect(err).NotTo(HaveOccurred())
	return &member{src: src, keys: []string{fmt.Sprintf("key-%d-%d-0123456789abcdef", n, time.Now().UnixNano())}, url: url}
}

// join writes the member into the pool's bucket, as the operator does: digests, never keys.
func (p *podsOf) join(ctx context.Context, m *member, suspended bool) {
	GinkgoHelper()
	digests := make([]string, len(m.keys))
	for i, k := range m.keys {
		digests[i] = pool.DigestKey(k)
	}
	_, err := pool.Put(ctx, p.kv, pool.Member{Source: *m.src, WriteKeyDigests: digests, Suspended: suspended})
	Expect(err).NotTo(HaveOccurred())
}

// leave removes the member from the bucket.
func (p *podsOf) leave(ctx context.Context, m *member) {
	GinkgoHelper()
	Expect(pool.Remove(ctx, p.kv, m.src.Namespace, m.src.Name)).To(Succeed())
}

// mountCredentials grants the pool's Postgres login the member's tenant role and writes both
// where the operator mounts them for the worker.
func (p *podsOf) mountCredentials(ctx context.Context, m *member) {
	GinkgoHelper()
	url, err := roles.EnsurePoolLogin(ctx, p.ref.String())
	Expect(err).NotTo(HaveOccurred())
	role, err := roles.GrantPoolMember(ctx, p.ref.String(), m.src.Namespace+"/"+m.src.Name, m.src.Tenant)
	Expect(err).NotTo(HaveOccurred())
	Expect(os.WriteFile(filepath.Join(p.credsDir, "pool.database-url"), []byte(url+"\n"), 0o600)).To(Succeed())
	Expect(os.WriteFile(filepath.Join(p.credsDir, pool.Key(*m.src)+".database-role"), []byte(role+"\n"), 0o600)).To(Succeed())
}

// mountOwnLogin writes a login of the member's own (a source naming its database Secret; here its
// tenant's login) where the operator mounts it for the worker.
func (p *podsOf) mountOwnLogin(m *member) {
	GinkgoHelper()
	Expect(os.WriteFile(filepath.Join(p.credsDir, pool.Key(*m.src)+".database-url"), []byte(m.url+"\n"), 0o600)).To(Succeed())
}

// track sends one track call with key and returns the status and error code.
func (p *podsOf) track(key, messageID, event string, properties map[string]any) (int, string) {
	GinkgoHelper()
	body, err := json.Marshal(map[string]any{"userId": "u1", "event": event, "messageId": messageID, "properties": properties})
	Expect(err).NotTo(HaveOccurred())
	return post(p.receiver+"/v1/track", key, body)
}

func post(url, key string, body []byte) (int, string) {
	GinkgoHelper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	Expect(err).NotTo(HaveOccurred())
	req.Header.Set("Content-Type", "application/json")
	req.SetBasicAuth(key, "")
	resp, err := http.DefaultClient.Do(req)
	Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var answer struct {
		Code string `json:"code"`
	}
	_ = json.Unmarshal(raw, &answer)
	if resp.StatusCode == http.StatusServiceUnavailable {
		Expect(resp.Header.Get("Retry-After")).NotTo(BeEmpty())
	}
	return resp.StatusCode, answer.Code
}

// eventsOf lists the message ids of the tenant's events, read with the tenant's own login.
func eventsOf(ctx context.Context, m *member) []string {
	GinkgoHelper()
	return asTenant[string](ctx, m, `SELECT message_id FROM tally.events ORDER BY message_id`)
}

// drained waits until the member's messages have all been acknowledged by a worker.
func drained(ctx context.Context, m *member) {
	GinkgoHelper()
	drainedWithin(ctx, m, 30*time.Second)
}

// drainedWithin is drained with a wait of its own.
func drainedWithin(ctx context.Context, m *member, wait time.Duration) {
	GinkgoHelper()
	Eventually(func() error {
		return testenv.Acknowledged(ctx, js, m.src.Stream().StreamName(), stream.WorkerConsumer)
	}).WithTimeout(wait).Should(Succeed())
}

// members is how many of the pool's members the worker counts in the state; -1 when absent.
func (p *podsOf) members(state string) float64 {
	return metric(p.metrics, fmt.Sprintf(`tally_worker_pool_members{pool=%q,state=%q}`, p.ref.String(), state))
}

// metricsText is what base serves at /metrics; "" when it does not answer.
func metricsText(base string) string {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return string(raw)
}

// seriesOf lists the series served at base whose labels contain labels.
func seriesOf(base, labels string) []string {
	var out []string
	for _, line := range strings.Split(metricsText(base), "\n") {
		if !strings.HasPrefix(line, "#") && strings.Contains(line, labels) {
			out = append(out, line)
		}
	}
	return out
}

// metric reads one series of the metrics served at base; -1 when absent.
func metric(base, series string) float64 {
	for _, line := range strings.Split(metricsText(base), "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			var v float64
			if _, err := fmt.Sscan(rest, &v); err == nil {
				return v
			}
		}
	}
	return -1
}

// status is the status of p.track.
func (p *podsOf) status(key, messageID, event string, properties map[string]any) int {
	GinkgoHelper()
	s, _ := p.track(key, messageID, event, properties)
	return s
}

// until sends track calls with key (message ids prefix-1, prefix-2, ...) until one is answered
// want, and returns the ids accepted on the way (a change still on its way to the receiver).
func (p *podsOf) until(key, prefix string, want int) (accepted []string) {
	GinkgoHelper()
	n := 0
	Eventually(func() int {
		n++
		id := fmt.Sprintf("%s-%d", prefix, n)
		status := p.status(key, id, "E", nil)
		if status == http.StatusOK {
			accepted = append(accepted, id)
		}
		return status
	}).Should(Equal(want))
	return accepted
}

// signed delivers body to a destination route's URL signed with secret, as Segment's classic
// Webhooks destination does, and returns the status.
func signed(url string, body []byte, secret string) int {
	GinkgoHelper()
	mac := hmac.New(sha1.New, []byte(secret))
	mac.Write(body)
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	Expect(err).NotTo(HaveOccurred())
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Signature", hex.EncodeToString(mac.Sum(nil)))
	return statusOf(http.DefaultClient.Do(req))
}

// asTenant runs a query with the member's tenant login (row-level security applies).
func asTenant[T any](ctx context.Context, m *member, sql string, args ...any) []T {
	GinkgoHelper()
	conn, err := pgx.Connect(ctx, m.url)
	Expect(err).NotTo(HaveOccurred())
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, sql, args...)
	Expect(err).NotTo(HaveOccurred())
	out, err := pgx.CollectRows(rows, pgx.RowTo[T])
	Expect(err).NotTo(HaveOccurred())
	return out
}

// accountOf is the account an event was attributed to ("" when none).
func accountOf(ctx context.Context, m *member, messageID string) string {
	GinkgoHelper()
	accounts := asTenant[*string](ctx, m, `SELECT account_id FROM tally.events WHERE message_id = $1`, messageID)
	Expect(accounts).To(HaveLen(1))
	if accounts[0] == nil {
		return ""
	}
	return *accounts[0]
}

// catalogIgnored reports whether the tenant's catalog marks the event as ignored.
func catalogIgnored(ctx context.Context, m *member, event string) bool {
	GinkgoHelper()
	ignored := asTenant[bool](ctx, m, `SELECT ignored FROM tally.event_catalog WHERE event = $1`, event)
	return len(ignored) == 1 && ignored[0]
}

// storedMessages is how many messages the member's stream holds: those no worker has
// acknowledged yet, and those acknowledged since the workers' last purge.
func storedMessages(ctx context.Context, m *member) uint64 {
	GinkgoHelper()
	s, err := js.Stream(ctx, m.src.Stream().StreamName())
	Expect(err).NotTo(HaveOccurred())
	info, err := s.Info(ctx)
	Expect(err).NotTo(HaveOccurred())
	return info.State.Msgs
}

// unacknowledged is how many of the member's messages no worker has acknowledged yet: the backlog
// the operator reports (its worker consumers' pending and in-flight messages).
func unacknowledged(ctx context.Context, m *member) uint64 {
	GinkgoHelper()
	state, err := stream.Inspect(ctx, js, m.src.Stream())
	Expect(err).NotTo(HaveOccurred())
	return state.Backlog
}

func statusOf(resp *http.Response, err error) int {
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}
