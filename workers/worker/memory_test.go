package worker

import (
	"fmt"
	"os/exec"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/controllers/resources"
	"github.com/tallyhq/tally/test/testenv"
)

// The worker's memory is measured where the kubelet measures it: the peak resident set of the
// `tally worker` process, with its default settings, working through a backlog of the largest
// messages the receiver lets through.
var _ = Describe("The worker process with a backlog of large messages", Serial, func() {
	It("stays within the default pod's memory limit and maps every message", func(ctx SpecContext) {
		dir := GinkgoT().TempDir()
		bin, err := testenv.BuildTally(dir)
		Expect(err).NotTo(HaveOccurred())
		src := newSource(ctx, "")
		config := writeSourceConfig(src)

		const n = 1500 // 45 MB: 2,000 of them would have been one 60 MB batch before the byte budget
		blob := strings.Repeat("x", 30<<10)
		for i := range n {
			publish(ctx, src, track(fmt.Sprintf("big-%04d", i), fmt.Sprintf("u%d", i%50), "Uploaded", float64(i), map[string]any{"blob": blob}, nil))
		}

		metricsAddr, err := testenv.FreeAddr()
		Expect(err).NotTo(HaveOccurred())
		cmd := exec.Command(bin, "worker", "--nats-url", natsSrv.ClientURL(), "--database-url", databaseURL,
			"--source-config", config, "--metrics-listen", metricsAddr)
		cmd.Stdout, cmd.Stderr = GinkgoWriter, GinkgoWriter
		Expect(cmd.Start()).To(Succeed())
		DeferCleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

		Eventually(func() any {
			return queryRow(ctx, `SELECT count(*) AS n FROM tally.events WHERE tenant = $1`, src.Tenant)["n"]
		}).WithTimeout(3 * time.Minute).WithPolling(200 * time.Millisecond).Should(BeEquivalentTo(n))
		drained(ctx, src)

		peak, err := testenv.PeakRSS(cmd.Process.Pid)
		Expect(err).NotTo(HaveOccurred())
		limits := resources.DefaultWorkerResources().Limits
		limit := limits.Memory().Value()
		AddReportEntry("worker peak memory", fmt.Sprintf("peak %d MiB mapping %d messages of 30 KB (limit %d MiB)", peak>>20, n, limit>>20))
		Expect(peak).To(BeNumerically("<", limit))
	})
})
