package receiver_test

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/controllers/resources"
	"github.com/tallyhq/tally/test/testenv"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
)

// The receiver's memory is measured where the kubelet measures it: the peak resident set of the
// `tally receiver` process, attacked from every side at once with its default settings.
var _ = Describe("The receiver process under attack", Serial, func() {
	It("stays within the default pod's memory limit and stores every good message", func(ctx SpecContext) {
		dir := GinkgoT().TempDir()
		bin, err := testenv.BuildTally(dir)
		Expect(err).NotTo(HaveOccurred())

		key := "memory-key-0123456789abcdef01234"
		src := &source.Config{Namespace: "tenants", Name: "memory", Tenant: "memory", WriteKeys: []string{key}}
		Expect(stream.Ensure(ctx, js, src.Stream(), src.StreamSettings())).To(Succeed())
		settings, err := source.EncodeConfig(src)
		Expect(err).NotTo(HaveOccurred())
		Expect(os.WriteFile(filepath.Join(dir, "source.json"), settings, 0o600)).To(Succeed())
		Expect(os.WriteFile(filepath.Join(dir, "writeKey"), []byte(key+"\n"), 0o600)).To(Succeed())
		addr, err := testenv.FreeAddr()
		Expect(err).NotTo(HaveOccurred())
		base := "http://" + addr

		cmd := exec.Command(bin, "receiver", "--listen", addr, "--nats-url", ns.ClientURL(),
			"--source-config", filepath.Join(dir, "source.json"), "--write-keys-file", filepath.Join(dir, "writeKey"),
			"--shutdown-delay", "0s")
		cmd.Stdout, cmd.Stderr = GinkgoWriter, GinkgoWriter
		Expect(cmd.Start()).To(Succeed())
		DeferCleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		Eventually(func() int { return statusOf(http.Get(base + "/readyz")) }).WithTimeout(30 * time.Second).Should(Equal(http.StatusOK))
		from := mark(src)
		idle, err := testenv.PeakRSS(cmd.Process.Pid)
		Expect(err).NotTo(HaveOccurred())

		expansion := []byte(`{"context":{"blob":"` + strings.Repeat("c", 31<<10) + `"},"batch":[` +
			strings.TrimSuffix(strings.Repeat(`{"type":"track","userId":"u","event":"E"},`, 2500), ",") + `]}`)
		deep := []byte(`{"batch":[` + strings.Repeat("[", 200_000) + strings.Repeat("]", 200_000) + `]}`)
		item := `{"type":"track","userId":"u1","event":"E","properties":{"p":"` + strings.Repeat("x", 30<<10) + `"}}`
		large := []byte(`{"batch":[` + strings.TrimSuffix(strings.Repeat(item+",", 15), ",") + `]}`)
		attacks := []struct {
			name    string
			body    []byte
			gzipped bool
		}{
			{"amplification", gzipped(amplificationBatch()), true},
			{"expansion", gzipped(expansion), true},
			{"gzip bomb", gzipped(make([]byte, 50<<20)), true},
			{"deep nesting", deep, false},
			{"large batches", large, false},
		}
		send := func(body []byte, gz bool) int {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/batch", strings.NewReader(string(body)))
			req.SetBasicAuth(key, "")
			if gz {
				req.Header.Set("Content-Encoding", "gzip")
			}
			return statusOf(http.DefaultClient.Do(req))
		}

		var wg sync.WaitGroup
		var mu sync.Mutex
		statuses := map[string]int{} // "attack status" -> answers, for the report
		for _, a := range attacks {
			for range 6 { // six attackers per kind, 30 at once
				wg.Go(func() {
					for range 8 {
						status := send(a.body, a.gzipped)
						mu.Lock()
						statuses[fmt.Sprintf("%s %d", a.name, status)]++
						mu.Unlock()
					}
				})
			}
		}
		const goodRequests, perRequest = 40, 50
		good := []byte(`{"batch":[` + strings.TrimSuffix(strings.Repeat(`{"type":"track","userId":"u2","event":"Good"},`, perRequest), ",") + `]}`)
		var goodWG sync.WaitGroup
		for range goodRequests {
			goodWG.Go(func() {
				defer GinkgoRecover()
				// A client retries a 429 after its Retry-After, as every Segment library does.
				Eventually(func() int { return send(good, false) }).WithTimeout(2 * time.Minute).WithPolling(500 * time.Millisecond).
					Should(Equal(http.StatusOK))
			})
		}
		goodWG.Wait()
		wg.Wait()

		peak, err := testenv.PeakRSS(cmd.Process.Pid)
		Expect(err).NotTo(HaveOccurred())
		limits := resources.DefaultReceiverResources().Limits
		limit := limits.Memory().Value()
		var report strings.Builder
		fmt.Fprintf(&report, "idle %d MiB, peak %d MiB under attack (limit %d MiB)\n", idle>>20, peak>>20, limit>>20)
		for k, n := range statuses {
			fmt.Fprintf(&report, "  %s: %d\n", k, n)
		}
		AddReportEntry("receiver peak memory", report.String())
		GinkgoWriter.Print(report.String())
		Expect(peak).To(BeNumerically("<", limit))

		By("the receiver still answers, and every good message is in the stream")
		Expect(statusOf(http.Get(base + "/readyz"))).To(Equal(http.StatusOK))
		var goodStored int
		for _, m := range since(src, from) {
			if m.Message.Event == "Good" {
				goodStored++
			}
		}
		Expect(goodStored).To(Equal(goodRequests * perRequest))
	})
})
