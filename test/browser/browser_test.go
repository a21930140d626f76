// Package browser runs Segment's browser SDK (@segment/analytics-next from npm) in headless
// Chromium against `tally local`: settings from Tally instead of Segment's CDN, events over
// cross-origin requests, and a batch flushed as the page is left. It needs Debian's chromium and
// `npm ci` in this directory (make test-browser does both checks).
package browser

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/jackc/pgx/v5"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/test/testdb"
	"github.com/tallyhq/tally/test/testenv"
	"github.com/tallyhq/tally/workers/local"
)

func TestBrowser(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "Browser Suite")
}

const writeKey = "browser-key-0123456789abcdef"

var (
	chromium    string
	tallyURL    string
	pageURL     string
	databaseURL string
)

var _ = BeforeSuite(func(ctx SpecContext) {
	var err error
	chromium, err = exec.LookPath(envOr("TALLY_CHROMIUM", "chromium"))
	Expect(err).NotTo(HaveOccurred(), "the browser test needs Chromium: apt-get install chromium (or TALLY_CHROMIUM=/path)")
	sdk, err := filepath.Abs("node_modules/@segment/analytics-next/dist/umd")
	Expect(err).NotTo(HaveOccurred())
	_, err = os.Stat(filepath.Join(sdk, "index.js"))
	Expect(err).NotTo(HaveOccurred(), "the browser test needs the SDK from npm: npm ci --prefix test/browser")

	// tally local, as the README runs it, with one source.
	dir := GinkgoT().TempDir()
	Expect(os.WriteFile(filepath.Join(dir, "browser.yaml"), []byte(`apiVersion: v1
kind: Secret
metadata:
  name: browser-segment
  namespace: web
  labels:
    tally.dev/source-secret: "true"
stringData:
  writeKey: `+writeKey+`
---
apiVersion: tally.dev/v1alpha1
kind: SegmentSource
metadata:
  name: site
  namespace: web
spec:
  tenant: browser
  writeKeySecretRef:
    name: browser-segment
`), 0o600)).To(Succeed())
	url, drop, err := testdb.Fresh(ctx, "browser")
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(drop)
	databaseURL = url
	addr, err := testenv.FreeAddr()
	Expect(err).NotTo(HaveOccurred())
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- local.Run(runCtx, local.Options{Manifests: dir, Listen: addr, DataDir: GinkgoT().TempDir(), NATSPort: -1,
			DatabaseURL: url, BatchSize: 100, MaxWait: 50 * time.Millisecond, Logger: testenv.QuietLogger(), Out: io.Discard})
	}()
	DeferCleanup(func() {
		cancel()
		Eventually(done).WithTimeout(60 * time.Second).Should(Receive(BeNil()))
	})
	tallyURL = "http://" + addr
	Eventually(func() (int, error) {
		resp, err := http.Get(tallyURL + "/healthz")
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}).WithTimeout(30 * time.Second).Should(Equal(http.StatusOK))

	// The page, on an origin of its own ("localhost", not 127.0.0.1): every call to Tally is
	// cross-origin, as from a customer's site.
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, "page.html") })
	mux.HandleFunc("/bye", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "<p id=status>left</p>") })
	mux.Handle("/ajs/", http.StripPrefix("/ajs/", http.FileServer(http.Dir(sdk))))
	pages := httptest.NewServer(mux)
	DeferCleanup(pages.Close)
	pageURL = strings.Replace(pages.URL, "127.0.0.1", "localhost", 1)
})

// open loads the test page in a fresh headless Chromium and waits until the page (or the one it
// went on to) shows wantStatus; it returns the page's path then.
func open(ctx context.Context, mode, wantStatus string) string {
	q := url.Values{"key": {writeKey}, "tally": {tallyURL}, "mode": {mode}}
	alloc, cancel := chromedp.NewExecAllocator(ctx, append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium), chromedp.NoSandbox, chromedp.UserDataDir(GinkgoT().TempDir()))...)
	defer cancel()
	tab, cancel := chromedp.NewContext(alloc)
	defer cancel()
	_, err := chromedp.Run(tab, chromedp.Navigate(pageURL+"/?"+q.Encode()))
	Expect(err).NotTo(HaveOccurred())
	type pageState struct{ Status, Path string }
	var state pageState
	Eventually(func() (string, error) {
		state, err = chromedp.Run(tab, chromedp.Evaluate[pageState](
			`({Status: document.getElementById('status')?.textContent ?? '', Path: location.pathname})`))
		return state.Status, err
	}).WithTimeout(60 * time.Second).WithPolling(200 * time.Millisecond).Should(Equal(wantStatus))
	return state.Path
}

func queryRows(ctx context.Context, sql string) []map[string]any {
	conn, err := pgx.Connect(ctx, databaseURL)
	Expect(err).NotTo(HaveOccurred())
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, sql)
	Expect(err).NotTo(HaveOccurred())
	out, err := pgx.CollectRows(rows, pgx.RowToMap)
	Expect(err).NotTo(HaveOccurred())
	return out
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

var _ = Describe("Segment's browser SDK against tally local", func() {
	It("loads its settings from Tally and sends page, identify, group and track across origins, preflighted or not", func(ctx SpecContext) {
		Expect(open(ctx, "calls", "sent")).To(Equal("/"))

		Eventually(func(g Gomega) {
			g.Expect(queryRows(ctx, `SELECT type, event, user_id, account_id, context->'library'->>'name' AS library,
					context->'page'->>'path' AS path FROM tally.events WHERE tenant = 'browser' ORDER BY type, event`)).To(Equal([]map[string]any{
				// Sent before identify with only the anonymousId, which identify then ties to the
				// user: the page is theirs, and their account's (identity stitching).
				{"type": "page", "event": "Pricing", "user_id": "u-browser", "account_id": "acct-browser", "library": "analytics.js", "path": "/pricing"},
				{"type": "track", "event": "Preflighted", "user_id": "u-browser", "account_id": "acct-browser", "library": nil, "path": nil},
				{"type": "track", "event": "Report Built", "user_id": "u-browser", "account_id": "acct-browser", "library": "analytics.js", "path": "/"},
			}))
			g.Expect(queryRows(ctx, `SELECT user_id, traits->>'email' AS email FROM tally.users WHERE tenant = 'browser'`)).To(Equal([]map[string]any{
				{"user_id": "u-browser", "email": "ada@browser.test"},
			}))
			g.Expect(queryRows(ctx, `SELECT account_id, name, traits->>'plan' AS plan FROM tally.accounts WHERE tenant = 'browser'`)).To(Equal([]map[string]any{
				{"account_id": "acct-browser", "name": "Browser Co", "plan": "pro"},
			}))
		}).WithTimeout(30 * time.Second).Should(Succeed())

		By("the settings came from Tally, not from Segment's CDN")
		resp, err := http.Get(tallyURL + "/metrics")
		Expect(err).NotTo(HaveOccurred())
		defer resp.Body.Close()
		metrics, err := io.ReadAll(resp.Body)
		Expect(err).NotTo(HaveOccurred())
		Expect(string(metrics)).To(MatchRegexp(`tally_receiver_requests_total\{code="200",route="settings"\} [1-9]`))
	})

	It("delivers a batch the page leaves behind, flushed with keepalive as the page hides", func(ctx SpecContext) {
		Expect(open(ctx, "unload", "left")).To(Equal("/bye"))
		Eventually(func() []map[string]any {
			return queryRows(ctx, `SELECT type, event, user_id FROM tally.events WHERE tenant = 'browser' AND user_id = 'u-leaving'`)
		}).WithTimeout(30 * time.Second).Should(Equal([]map[string]any{{"type": "track", "event": "Left Page", "user_id": "u-leaving"}}))
	})
})
