package worker

import (
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/test/testenv"
	"github.com/tallyhq/tally/workers/source"
)

var _ = Describe("tally worker with insights", func() {
	run := func(ctx context.Context, args ...string) error {
		cmd := workerCommand()
		cmd.SetArgs(args)
		cmd.SetOut(io.Discard)
		cmd.SetErr(io.Discard)
		return cmd.ExecuteContext(ctx)
	}

	It("pushes the insights of its source with the mounted write key, and needs that key", func(ctx SpecContext) {
		fake := newSegmentRecorder()
		src := newSource(ctx, "accountId")
		src.Insights = &source.InsightsConfig{Endpoint: fake.URL, Interval: 200 * time.Millisecond}
		file := writeSourceConfig(src)
		addr, err := testenv.FreeAddr()
		Expect(err).NotTo(HaveOccurred())
		args := []string{"--nats-url", natsSrv.ClientURL(), "--database-url", databaseURL,
			"--source-config", file, "--metrics-listen", addr, "--max-wait", "50ms"}

		Expect(run(ctx, args...)).To(MatchError(ContainSubstring("--insights-write-key-file is required")))

		keyFile := filepath.Join(GinkgoT().TempDir(), "writeKey")
		Expect(os.WriteFile(keyFile, []byte("insights-key\n"), 0o600)).To(Succeed())
		runCtx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- run(runCtx, append(args, "--insights-write-key-file", keyFile)...) }()
		DeferCleanup(func() { cancel(); Eventually(done).WithTimeout(10 * time.Second).Should(Receive(BeNil())) })

		minuteAgo := float64(time.Since(baseTime)/time.Second) - 60
		publish(ctx, src, identify("i1", "u1", minuteAgo, map[string]any{"email": "u1@example.test"}),
			track("t1", "u1", "Clicked", minuteAgo, map[string]any{"accountId": "acme"}, nil))
		drained(ctx, src)
		Eventually(fake.identified).WithTimeout(30 * time.Second).Should(ContainElement(And(
			HaveKeyWithValue("userId", "u1"),
			HaveKeyWithValue("traits", HaveKeyWithValue("tally_events_30d", 1.0)))))
		Expect(fake.writeKeys()).To(HaveEach("insights-key"))

		metrics := func() string {
			resp, err := http.Get("http://" + addr + "/metrics")
			if err != nil {
				return err.Error()
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			return string(body)
		}
		// The endpoint has answered; the pusher counts once it has recorded the delivery.
		Eventually(metrics).WithTimeout(30 * time.Second).Should(ContainSubstring(`tally_insights_entities_pushed_total{kind="user",source="` + src.String() + `"} 1`))
		Expect(metrics()).To(ContainSubstring(`tally_insights_lock_held{source="` + src.String() + `"} 1`))
	})
})

// segmentRecorder is a fake Segment endpoint for insights: it keeps the identify calls and the
// write keys of the batches it receives.
type segmentRecorder struct {
	*httptest.Server
	mu         sync.Mutex
	identifies []map[string]any
	keys       []string
}

func newSegmentRecorder() *segmentRecorder {
	s := &segmentRecorder{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer GinkgoRecover()
		var body io.Reader = r.Body
		if r.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(r.Body)
			Expect(err).NotTo(HaveOccurred())
			body = zr
		}
		var payload struct {
			Batch []map[string]any `json:"batch"`
		}
		Expect(json.NewDecoder(body).Decode(&payload)).To(Succeed())
		key, _, _ := r.BasicAuth()
		s.mu.Lock()
		defer s.mu.Unlock()
		s.keys = append(s.keys, key)
		for _, m := range payload.Batch {
			if m["type"] == "identify" {
				s.identifies = append(s.identifies, m)
			}
		}
	}))
	DeferCleanup(s.Close)
	return s
}

func (s *segmentRecorder) identified() []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.identifies)
}

func (s *segmentRecorder) writeKeys() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.keys)
}

// identifiedUsers are the userIds of the identify calls received.
func (s *segmentRecorder) identifiedUsers() []any {
	var users []any
	for _, m := range s.identified() {
		users = append(users, m["userId"])
	}
	return users
}
