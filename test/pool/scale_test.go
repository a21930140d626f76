//go:build scale

package pool

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/test/testenv"
	"github.com/tallyhq/tally/workers/natsauth"
	"github.com/tallyhq/tally/workers/pool"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
)

// idleMembers is how many members the scale spec gives one pool worker, each of its own tenant.
const idleMembers = 1000

// A platform team sizes a pool worker's memory limit by this figure.
var _ = Describe("A pool worker with a thousand idle members", Label("scale"), func() {
	It("runs them all in bounded memory and CPU, and still applies a member's events", func(ctx SpecContext) {
		By("building the tally binary the pods run")
		bin, err := testenv.BuildTally(GinkgoT().TempDir())
		Expect(err).NotTo(HaveOccurred())

		ref := pool.Ref{Namespace: "platform", Name: "thousand"}
		kv, err := pool.EnsureBucket(ctx, js, ref, 1)
		Expect(err).NotTo(HaveOccurred())
		credsDir := GinkgoT().TempDir()
		poolURL, err := roles.EnsurePoolLogin(ctx, ref.String())
		Expect(err).NotTo(HaveOccurred())
		Expect(os.WriteFile(filepath.Join(credsDir, "pool.database-url"), []byte(poolURL), 0o600)).To(Succeed())
		var first, last *member
		By(fmt.Sprintf("making %d members of %d tenants, each with its stream and Postgres role, granted to the pool's login", idleMembers, idleMembers))
		for i := range idleMembers {
			src := &source.Config{Namespace: fmt.Sprintf("ns%d", i%10), Name: fmt.Sprintf("idle%d", i), Tenant: fmt.Sprintf("idle-tenant-%d", i),
				StreamMaxBytes: 1 << 20}
			Expect(stream.Ensure(ctx, js, src.Stream(), src.StreamSettings())).To(Succeed())
			url, err := roles.Ensure(ctx, src.Tenant, "")
			Expect(err).NotTo(HaveOccurred())
			m := &member{src: src, keys: []string{fmt.Sprintf("idle-key-%d-0123456789abcdef", i)}, url: url}
			role, err := roles.GrantPoolMember(ctx, ref.String(), src.Namespace+"/"+src.Name, src.Tenant)
			Expect(err).NotTo(HaveOccurred())
			Expect(os.WriteFile(filepath.Join(credsDir, pool.Key(*src)+".database-role"), []byte(role), 0o600)).To(Succeed())
			_, err = pool.Put(ctx, kv, pool.Member{Source: *src, WriteKeyDigests: []string{pool.DigestKey(m.keys[0])}})
			Expect(err).NotTo(HaveOccurred())
			if first == nil {
				first = m
			}
			last = m
		}

		By("starting tally worker --pool as its own process")
		addr, err := testenv.FreeAddr()
		Expect(err).NotTo(HaveOccurred())
		cmd := exec.Command(bin, "worker", "--pool", ref.String(), "--nats-url", natsSrv.ClientURL(),
			"--nats-creds", poolCreds(ref, natsauth.Worker), "--credentials-dir", credsDir, "--metrics-listen", addr)
		cmd.Stderr = GinkgoWriter
		Expect(cmd.Start()).To(Succeed())
		DeferCleanup(func() {
			_ = cmd.Process.Signal(os.Interrupt)
			_ = cmd.Wait()
		})
		metrics := "http://" + addr
		started := time.Now()
		Eventually(func() float64 {
			return metric(metrics, fmt.Sprintf(`tally_worker_pool_members{pool=%q,state="running"}`, ref.String()))
		}).
			WithTimeout(3 * time.Minute).WithPolling(time.Second).Should(Equal(float64(idleMembers)))
		AddReportEntry("all members running after", time.Since(started).Round(time.Second).String())

		By("idling: every member's worker fetching from its consumer")
		Eventually(func() int { return statusOf(http.Get(metrics + "/readyz")) }).Should(Equal(http.StatusOK))
		publish(ctx, first, "idle-0")
		published := time.Now()
		// The members' start (a catalog transaction each, under its own login, through the
		// worker's connection limit) is still running: on the slower AMD machine it took longer
		// than drained's 30 s, before and after streams were purged (HEAD 25296b9 and 982ac40).
		drainedWithin(ctx, first, 3*time.Minute)
		AddReportEntry("first member's event applied after", time.Since(published).Round(time.Second).String())
		Expect(eventsOf(ctx, first)).To(Equal([]string{"idle-0"}))
		// Measurement windows, not waits for a condition: the members' start (a catalog
		// transaction each) settles during the first, the second is the steady idle state.
		time.Sleep(15 * time.Second)
		cpuBefore, wallBefore := cpuTime(cmd.Process.Pid), time.Now()
		time.Sleep(10 * time.Second)
		cpu := (cpuTime(cmd.Process.Pid) - cpuBefore).Seconds() / time.Since(wallBefore).Seconds()
		rss, peak := memory(cmd.Process.Pid)
		goroutines := metric(metrics, "go_goroutines")
		AddReportEntry("idle pool worker", fmt.Sprintf("%d members: RSS %d MiB (peak %d MiB), %.0f goroutines, %.2f cores idle",
			idleMembers, rss>>20, peak>>20, goroutines, cpu))
		fmt.Fprintf(GinkgoWriter, "idle pool worker: %d members: RSS %d MiB (peak %d MiB), %.0f goroutines, %.2f cores\n",
			idleMembers, rss>>20, peak>>20, goroutines, cpu)
		Expect(peak).To(BeNumerically("<", 512<<20), "the operator's default worker pod has 512 MiB")

		By("a pool receiver serving the same thousand members")
		listen, err := testenv.FreeAddr()
		Expect(err).NotTo(HaveOccurred())
		rcv := exec.Command(bin, "receiver", "--pool", ref.String(), "--nats-url", natsSrv.ClientURL(),
			"--nats-creds", poolCreds(ref, natsauth.Receiver), "--listen", listen, "--shutdown-delay", "0s")
		rcv.Stderr = GinkgoWriter
		Expect(rcv.Start()).To(Succeed())
		DeferCleanup(func() {
			_ = rcv.Process.Signal(os.Interrupt)
			_ = rcv.Wait()
		})
		p := &podsOf{receiver: "http://" + listen}
		Eventually(func() int { return statusOf(http.Get(p.receiver + "/readyz")) }).WithTimeout(30 * time.Second).Should(Equal(http.StatusOK))
		Expect(p.status(last.keys[0], "last-0", "E", nil)).To(Equal(http.StatusOK))
		drained(ctx, last)
		Expect(eventsOf(ctx, last)).To(Equal([]string{"last-0"}))
		rss, peak = memory(rcv.Process.Pid)
		AddReportEntry("pool receiver", fmt.Sprintf("%d members: RSS %d MiB (peak %d MiB)", idleMembers, rss>>20, peak>>20))
		fmt.Fprintf(GinkgoWriter, "pool receiver: %d members: RSS %d MiB (peak %d MiB)\n", idleMembers, rss>>20, peak>>20)
	})
})

// memory is the process's resident memory now and at its peak (VmRSS, VmHWM).
func memory(pid int) (rss, peak int64) {
	GinkgoHelper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	Expect(err).NotTo(HaveOccurred())
	for _, line := range strings.Split(string(raw), "\n") {
		for name, v := range map[string]*int64{"VmRSS:": &rss, "VmHWM:": &peak} {
			if rest, ok := strings.CutPrefix(line, name); ok {
				kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				Expect(err).NotTo(HaveOccurred())
				*v = kb << 10
			}
		}
	}
	return rss, peak
}

// cpuTime is the user and system time the process has used (/proc/PID/stat, clock ticks of
// 10 ms on Linux).
func cpuTime(pid int) time.Duration {
	GinkgoHelper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	Expect(err).NotTo(HaveOccurred())
	fields := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	utime, err := strconv.ParseInt(fields[11], 10, 64)
	Expect(err).NotTo(HaveOccurred())
	stime, err := strconv.ParseInt(fields[12], 10, 64)
	Expect(err).NotTo(HaveOccurred())
	return time.Duration(utime+stime) * 10 * time.Millisecond
}
