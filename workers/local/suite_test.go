package local

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/onsi/gomega/gbytes"

	"github.com/tallyhq/tally/test/testdb"
	"github.com/tallyhq/tally/test/testenv"
	"github.com/tallyhq/tally/workers/natsauth"
)

func TestLocal(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "Local Suite")
}

// running is one local.Run in the background.
type running struct {
	addr   string         // host:port the receiver listens on, from the banner
	banner *gbytes.Buffer // Run writes it from its goroutine while the spec reads it
	cancel context.CancelFunc
	done   chan error

	dataDir string // Options.DataDir, where the admin's NATS creds are
}

var (
	receiverLine = regexp.MustCompile(`receiver:\s+http://(\S+)`)
	natsLine     = regexp.MustCompile(`nats:\s+(nats://\S+)`)
)

// jetStream connects to the embedded NATS server named in the banner, until the spec ends.
func (r *running) jetStream() jetstream.JetStream {
	m := natsLine.FindStringSubmatch(string(r.banner.Contents()))
	Expect(m).To(HaveLen(2), string(r.banner.Contents()))
	// The embedded server checks users: connect as the admin tally local writes into its data dir.
	creds, err := os.ReadFile(filepath.Join(r.dataDir, AdminCredsFile))
	Expect(err).NotTo(HaveOccurred())
	admin, err := natsauth.CredsOption(creds)
	Expect(err).NotTo(HaveOccurred())
	nc, err := nats.Connect(m[1], nats.MaxReconnects(0), admin)
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(nc.Close)
	js, err := jetstream.New(nc)
	Expect(err).NotTo(HaveOccurred())
	return js
}

// start runs local.Run with o until the spec ends and returns once the banner names the address.
func start(o Options) *running {
	r := &running{banner: gbytes.NewBuffer(), done: make(chan error, 1), dataDir: o.DataDir}
	o.Out = r.banner
	if o.Logger == nil {
		o.Logger = testenv.QuietLogger()
	}
	if o.Listen == "" {
		o.Listen = "127.0.0.1:0"
	}
	if o.NATSPort == 0 {
		o.NATSPort = -1
	}
	if o.MaxWait == 0 {
		o.MaxWait = 50 * time.Millisecond
	}
	if o.BatchSize == 0 {
		o.BatchSize = 100
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() {
		defer GinkgoRecover()
		r.done <- Run(ctx, o)
	}()
	DeferCleanup(func() {
		cancel()
		Eventually(r.done).WithTimeout(60 * time.Second).Should(Receive())
	})
	Eventually(func(g Gomega) {
		select {
		case err := <-r.done:
			Fail(fmt.Sprintf("Run returned before serving: %v", err))
		default:
		}
		m := receiverLine.FindStringSubmatch(string(r.banner.Contents()))
		g.Expect(m).To(HaveLen(2))
		r.addr = m[1]
	}).WithTimeout(60 * time.Second).WithPolling(20 * time.Millisecond).Should(Succeed())
	// The banner is printed before the workers start: wait for the full banner.
	Eventually(r.banner).Should(gbytes.Say("Send a first event"))
	return r
}

// stop cancels Run and returns its result.
func (r *running) stop() error {
	r.cancel()
	var err error
	Eventually(r.done).WithTimeout(60 * time.Second).Should(Receive(&err))
	r.done <- err // for the cleanup
	return err
}

// post sends body to the receiver's path with key as the Basic auth username.
func (r *running) post(path, key, body string) (int, string) {
	req, err := http.NewRequest(http.MethodPost, "http://"+r.addr+path, strings.NewReader(body))
	Expect(err).NotTo(HaveOccurred())
	req.SetBasicAuth(key, "")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	Expect(err).NotTo(HaveOccurred())
	return resp.StatusCode, string(out)
}

// freshDatabase is a new database on the local Postgres, dropped when the spec ends.
func freshDatabase(ctx context.Context, prefix string) string {
	url, drop, err := testdb.Fresh(ctx, prefix)
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(drop)
	return url
}

// query returns the rows of sql on the database at url.
func query(ctx context.Context, url, sql string, args ...any) []map[string]any {
	conn, err := pgx.Connect(ctx, url)
	Expect(err).NotTo(HaveOccurred())
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, sql, args...)
	Expect(err).NotTo(HaveOccurred())
	out, err := pgx.CollectRows(rows, pgx.RowToMap)
	Expect(err).NotTo(HaveOccurred())
	return out
}

// writeManifests puts each manifest in its own file (name, possibly in subdirectories) of a fresh
// directory.
func writeManifests(files map[string]string) string {
	dir := GinkgoT().TempDir()
	for name, content := range files {
		path := filepath.Join(dir, name)
		Expect(os.MkdirAll(filepath.Dir(path), 0o755)).To(Succeed())
		Expect(os.WriteFile(path, []byte(content), 0o644)).To(Succeed())
	}
	return dir
}
