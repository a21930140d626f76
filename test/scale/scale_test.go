//go:build scale

// Package scale proves the operator's scale targets for shared pools on a real API server
// (envtest), `tally manager` as its own process, an embedded NATS JetStream and the local
// Postgres: a thousand member SegmentSources across ten namespaces all Ready within three
// minutes of creation, no Deployment but the pool's two, the manager's peak memory under 300 MB,
// and periodic re-checks that write nothing. `make test-scale` runs it; `make test` does not.
package scale

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/manager"
	"github.com/tallyhq/tally/controllers/resources"
	"github.com/tallyhq/tally/test/testdb"
	"github.com/tallyhq/tally/test/testenv"
	"github.com/tallyhq/tally/workers/natsserver"
	"github.com/tallyhq/tally/workers/pool"
	"github.com/tallyhq/tally/workers/worker"
)

// The targets of issue 14.
const (
	namespaces      = 10
	membersPerNS    = 100
	readyWithin     = 3 * time.Minute
	peakRSSLimit    = 300 << 20
	requeueInterval = 20 * time.Second
)

const (
	managerNamespace = "tally-system"
	platform         = "platform"
	poolName         = "shared"
)

func TestPoolScale(t *testing.T) {
	g := NewWithT(t)
	g.SetDefaultEventuallyPollingInterval(time.Second)
	ctx := context.Background()
	dir := t.TempDir()

	tallyBin, err := testenv.BuildTally(dir)
	g.Expect(err).NotTo(HaveOccurred())

	assets, err := testenv.EnvtestAssets()
	g.Expect(err).NotTo(HaveOccurred())
	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths:     []string{filepath.Join(testenv.RepoRoot(), "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	t.Cleanup(func() { _ = env.Stop() })
	cfg, err := env.Start()
	g.Expect(err).NotTo(HaveOccurred())
	// The test's own client plays many users at once; it must not be what limits the rate.
	cfg.QPS, cfg.Burst = 1000, 2000
	k8s, err := client.New(cfg, client.Options{Scheme: manager.Scheme()})
	g.Expect(err).NotTo(HaveOccurred())
	admin, err := env.AddUser(envtest.User{Name: "scale-admin", Groups: []string{"system:masters"}}, nil)
	g.Expect(err).NotTo(HaveOccurred())
	kc, err := admin.KubeConfig()
	g.Expect(err).NotTo(HaveOccurred())
	kubeconfig := filepath.Join(dir, "kubeconfig")
	g.Expect(os.WriteFile(kubeconfig, kc, 0o600)).To(Succeed())

	ns, err := natsserver.Start(natsserver.Options{StoreDir: filepath.Join(dir, "nats")})
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(ns.Shutdown)
	nc, err := nats.Connect(ns.ClientURL())
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	g.Expect(err).NotTo(HaveOccurred())

	dbURL, drop, err := testdb.Fresh(ctx, "scale")
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(drop)

	g.Expect(k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: managerNamespace}})).To(Succeed())
	g.Expect(k8s.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "tally-database", Namespace: managerNamespace},
		StringData: map[string]string{"url": dbURL},
	})).To(Succeed())

	metricsAddr, err := testenv.FreeAddr()
	g.Expect(err).NotTo(HaveOccurred())
	logFile, err := os.Create(filepath.Join(dir, "manager.log"))
	g.Expect(err).NotTo(HaveOccurred())
	mgr := exec.Command(tallyBin, "manager",
		"--kubeconfig="+kubeconfig,
		"--nats-url="+ns.ClientURL(),
		"--database-secret=tally-database",
		"--manager-namespace="+managerNamespace,
		"--workload-image=ghcr.io/tallyhq/tally:scale",
		"--leader-elect=false",
		"--metrics-bind-address="+metricsAddr,
		"--health-probe-bind-address=0",
		"--requeue-interval="+requeueInterval.String(),
		"--stream-max-bytes=1Mi",
		"--max-concurrent-reconciles=32",
		"--kube-api-qps=300",
		"--kube-api-burst=600",
		"--log-format=text",
	)
	mgr.Stdout, mgr.Stderr = logFile, logFile
	mgr.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	g.Expect(mgr.Start()).To(Succeed())
	t.Cleanup(func() {
		_ = mgr.Process.Signal(syscall.SIGTERM)
		_, _ = mgr.Process.Wait()
		if t.Failed() {
			tail(t, logFile.Name(), 80)
		}
	})

	// The platform team's part: the pool, the tenant namespaces and the Tenants naming them.
	g.Expect(k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: platform}})).To(Succeed())
	p := &tallyv1.SegmentSourcePool{
		ObjectMeta: metav1.ObjectMeta{Namespace: platform, Name: poolName},
		Spec: tallyv1.SegmentSourcePoolSpec{AllowedNamespaces: tallyv1.AllowedNamespaces{
			From:     tallyv1.NamespacesFromSelector,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"tally.dev/tier": "shared"}},
		}},
	}
	g.Expect(k8s.Create(ctx, p)).To(Succeed())
	// envtest runs no kubelet: stand in for it once the pool's Deployments exist.
	for _, name := range []string{poolName + "-receiver", poolName + "-worker"} {
		g.Eventually(func() error { return markAvailable(ctx, k8s, platform, name) }, time.Minute).Should(Succeed())
	}
	tenantNamespaces := make([]string, namespaces)
	for i := range tenantNamespaces {
		tenantNamespaces[i] = fmt.Sprintf("team-%02d", i)
		g.Expect(k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name: tenantNamespaces[i], Labels: map[string]string{"tally.dev/tier": "shared"}}})).To(Succeed())
	}
	total := namespaces * membersPerNS
	g.Expect(parallel(total, func(i int) error {
		return k8s.Create(ctx, &tallyv1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: tenantName(i)},
			Spec: tallyv1.TenantSpec{Namespaces: []string{tenantNamespaces[i%namespaces]}}})
	})).To(Succeed())

	// The tenants' part, timed: each member's write key Secret, then the member.
	start := time.Now()
	g.Expect(parallel(total, func(i int) error {
		nsName, name := tenantNamespaces[i%namespaces], fmt.Sprintf("src-%04d", i)
		if err := k8s.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: nsName, Name: name + "-segment", Labels: map[string]string{resources.LabelSourceSecret: "true"}},
			StringData: map[string]string{"writeKey": fmt.Sprintf("write-key-%04d-%s", i, strings.Repeat("x", 24))},
		}); err != nil {
			return err
		}
		return k8s.Create(ctx, &tallyv1.SegmentSource{
			ObjectMeta: metav1.ObjectMeta{Namespace: nsName, Name: name},
			Spec: tallyv1.SegmentSourceSpec{
				Tenant:            tenantName(i),
				WriteKeySecretRef: tallyv1.SecretKeyRef{Name: name + "-segment", Key: "writeKey"},
				Pool:              &tallyv1.PoolRef{Namespace: platform, Name: poolName},
			},
		})
	})).To(Succeed())
	created := time.Since(start)

	var ready int
	g.Eventually(func() int {
		ready = countReady(ctx, g, k8s)
		return ready
	}, readyWithin-time.Since(start)).Should(Equal(total), "members Ready within %s of creation", readyWithin)
	allReady := time.Since(start)
	t.Logf("created %d members (and their Secrets) in %s; all Ready %s after the first was created", total, created.Round(time.Millisecond), allReady.Round(time.Millisecond))

	var deps appsv1.DeploymentList
	g.Expect(k8s.List(ctx, &deps)).To(Succeed())
	names := []string{}
	for _, d := range deps.Items {
		names = append(names, d.Namespace+"/"+d.Name)
	}
	g.Expect(names).To(ConsistOf(platform+"/"+poolName+"-receiver", platform+"/"+poolName+"-worker"))
	kv, err := js.KeyValue(ctx, pool.Ref{Namespace: platform, Name: poolName}.Bucket())
	g.Expect(err).NotTo(HaveOccurred())
	g.Eventually(func() int32 {
		cur := &tallyv1.SegmentSourcePool{}
		g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(p), cur)).To(Succeed())
		return cur.Status.Members
	}, 30*time.Second).Should(Equal(int32(total)))

	// Steady state: let the last event-driven reconciles finish, then watch at least two
	// periodic passes over every object.
	time.Sleep(requeueInterval)
	before := versions(ctx, g, k8s)
	revision := bucketRevision(ctx, g, kv)
	reconciles := metric(g, metricsAddr, "controller_runtime_reconcile_total")
	applies := metric(g, metricsAddr, "tally_operator_applies_total")
	statusWrites := metric(g, metricsAddr, "tally_operator_status_writes_total")
	steadyStart := time.Now()
	g.Eventually(func() float64 { return metric(g, metricsAddr, "controller_runtime_reconcile_total") }, 5*requeueInterval).
		Should(BeNumerically(">=", reconciles+2*float64(total+1)), "two periodic passes")
	g.Expect(time.Since(steadyStart)).To(BeNumerically(">=", requeueInterval))
	after := versions(ctx, g, k8s)
	changed := 0
	for k, v := range after {
		if before[k] != v {
			changed++
			t.Logf("changed during steady state: %s", k)
		}
	}
	writes := changed + int(bucketRevision(ctx, g, kv)-revision)
	rss, err := testenv.PeakRSS(mgr.Process.Pid)
	g.Expect(err).NotTo(HaveOccurred())
	t.Logf("steady state over %s (%.0f reconciles): %d object(s) changed, %d bucket write(s), %.0f applies, %.0f status writes",
		time.Since(steadyStart).Round(time.Second), metric(g, metricsAddr, "controller_runtime_reconcile_total")-reconciles,
		changed, bucketRevision(ctx, g, kv)-revision,
		metric(g, metricsAddr, "tally_operator_applies_total")-applies, metric(g, metricsAddr, "tally_operator_status_writes_total")-statusWrites)
	t.Logf("manager peak RSS (VmHWM): %.1f MiB", float64(rss)/(1<<20))
	measureTenantLogins(ctx, t, g, dbURL, total)
	g.Expect(writes).To(BeZero(), "writes per periodic check in steady state")
	g.Expect(rss).To(BeNumerically("<", peakRSSLimit))
}

// measureTenantLogins checks that every member's tenant got a login of its own and times what
// creating one costs (the manager creates a thousand during the run above).
func measureTenantLogins(ctx context.Context, t *testing.T, g Gomega, dbURL string, tenants int) {
	db, err := pgxpool.New(ctx, dbURL)
	g.Expect(err).NotTo(HaveOccurred())
	defer db.Close()
	var logins int
	g.Expect(db.QueryRow(ctx, "SELECT count(*) FROM tally.tenant_roles").Scan(&logins)).To(Succeed())
	g.Expect(logins).To(Equal(tenants), "a Postgres login per tenant")
	roles := worker.NewTenantRoles(db, dbURL)
	const n = 100
	start := time.Now()
	for i := range n {
		_, err := roles.Ensure(ctx, fmt.Sprintf("login-cost-%03d", i), "")
		g.Expect(err).NotTo(HaveOccurred())
	}
	each := time.Since(start) / n
	t.Logf("tenant logins: %d created during the run; creating one costs %s (%d: %s of the manager's time)",
		logins, each.Round(10*time.Microsecond), tenants, (each * time.Duration(tenants)).Round(100*time.Millisecond))
}

func tenantName(i int) string { return fmt.Sprintf("tenant-%04d", i) }

// parallel runs f for 0..n-1 on a few goroutines, as many users applying manifests at once.
func parallel(n int, f func(i int) error) error {
	var wg sync.WaitGroup
	errs := make(chan error, n)
	next := make(chan int)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(i); err != nil {
					errs <- err
				}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	close(errs)
	return <-errs
}

func markAvailable(ctx context.Context, k8s client.Client, ns, name string) error {
	d := &appsv1.Deployment{}
	if err := k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, d); err != nil {
		return err
	}
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: want, UpdatedReplicas: want,
		ReadyReplicas: want, AvailableReplicas: want}
	return k8s.Status().Update(ctx, d)
}

func countReady(ctx context.Context, g Gomega, k8s client.Client) int {
	var list tallyv1.SegmentSourceList
	g.Expect(k8s.List(ctx, &list)).To(Succeed())
	n := 0
	for _, s := range list.Items {
		if meta.IsStatusConditionTrue(s.Status.Conditions, tallyv1.ConditionReady) {
			n++
		}
	}
	return n
}

// versions are the resourceVersions of everything the operator reads or writes.
func versions(ctx context.Context, g Gomega, k8s client.Client) map[string]string {
	out := map[string]string{}
	lists := map[string]client.ObjectList{
		"SegmentSource": &tallyv1.SegmentSourceList{}, "SegmentSourcePool": &tallyv1.SegmentSourcePoolList{},
		"Secret": &corev1.SecretList{}, "ConfigMap": &corev1.ConfigMapList{}, "Deployment": &appsv1.DeploymentList{},
		"Service": &corev1.ServiceList{}, "Tenant": &tallyv1.TenantList{},
	}
	for kind, list := range lists {
		g.Expect(k8s.List(ctx, list)).To(Succeed())
		items, err := meta.ExtractList(list)
		g.Expect(err).NotTo(HaveOccurred())
		for _, item := range items {
			o := item.(client.Object)
			out[kind+" "+o.GetNamespace()+"/"+o.GetName()] = o.GetResourceVersion()
		}
	}
	return out
}

func bucketRevision(ctx context.Context, g Gomega, kv jetstream.KeyValue) uint64 {
	st, err := kv.Status(ctx)
	g.Expect(err).NotTo(HaveOccurred())
	return st.(*jetstream.KeyValueBucketStatus).StreamInfo().State.LastSeq
}

// metric sums every series of a counter on the manager's metrics endpoint.
func metric(g Gomega, addr, name string) float64 {
	resp, err := http.Get("http://" + addr + "/metrics")
	g.Expect(err).NotTo(HaveOccurred())
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		g.Expect(err).NotTo(HaveOccurred())
		sum += v
	}
	return sum
}

func tail(t *testing.T, path string, n int) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	raw, _ := io.ReadAll(f)
	lines := strings.Split(string(raw), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	t.Logf("manager log (last %d lines):\n%s", n, strings.Join(lines, "\n"))
}
