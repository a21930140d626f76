package controllers_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/yaml"

	"github.com/tallyhq/tally/controllers"
	"github.com/tallyhq/tally/controllers/manager"
	"github.com/tallyhq/tally/controllers/resources"
	"github.com/tallyhq/tally/test/testdb"
	"github.com/tallyhq/tally/test/testenv"
	"github.com/tallyhq/tally/workers/natsserver"
	"github.com/tallyhq/tally/workers/worker"
)

// The suite runs the real manager (caches, watches, field index, the reconciler) against a real
// API server from envtest and a real embedded NATS server with JetStream. envtest runs no
// kubelet and no controllers: Deployments never become available by themselves (tests patch
// their status) and garbage collection does not run (tests assert owner references).

const (
	managerNamespace = "tally-system"
	databaseSecret   = "tally-database"
	workloadImage    = "registry.example/tally:test"
)

var (
	ctx        context.Context
	restCfg    *rest.Config
	managerCfg *rest.Config
	k8s        client.Client
	testEnv    *envtest.Environment
	natsSrv    *server.Server
	natsPort   int
	natsDir    string
	natsURL    string
	testNC     *nats.Conn
	testJS     jetstream.JetStream
	kubeconfig string
	kubectlBin string
	// databaseURL is the manager's database (its database Secret).
	databaseURL string
)

func TestControllers(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "SegmentSource controller suite")
}

// Waits of the suite. The manager re-checks each source every testRequeueInterval (production:
// 15s), so drift, Receiving and deletion show within a few seconds; one default timeout covers
// every wait but the recovery from a NATS outage, which the operator's failure backoff (capped
// at 30s) may stretch.
const (
	testRequeueInterval = 2 * time.Second
	natsRecoveryTimeout = 45 * time.Second
)

var _ = BeforeSuite(func() {
	SetDefaultEventuallyTimeout(20 * time.Second)
	SetDefaultEventuallyPollingInterval(100 * time.Millisecond)
	SetDefaultConsistentlyDuration(2 * time.Second)
	SetDefaultConsistentlyPollingInterval(100 * time.Millisecond)
	ctx = context.Background()
	ctrl.SetLogger(GinkgoLogr)
	assets, err := testenv.EnvtestAssets()
	Expect(err).NotTo(HaveOccurred())
	kubectlBin = filepath.Join(assets, "kubectl")

	testEnv = &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
	}
	// Stop even when Start fails half-way: it can leave etcd and kube-apiserver running.
	DeferCleanup(func() { _ = testEnv.Stop() })
	restCfg, err = testEnv.Start()
	Expect(err).NotTo(HaveOccurred())

	k8s, err = client.New(restCfg, client.Options{Scheme: manager.Scheme()})
	Expect(err).NotTo(HaveOccurred())

	admin, err := testEnv.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}}, nil)
	Expect(err).NotTo(HaveOccurred())
	kc, err := admin.KubeConfig()
	Expect(err).NotTo(HaveOccurred())
	kubeconfig = filepath.Join(GinkgoT().TempDir(), "kubeconfig")
	Expect(os.WriteFile(kubeconfig, kc, 0o600)).To(Succeed())

	natsDir = GinkgoT().TempDir()
	startNATS(-1)
	natsPort = natsSrv.Addr().(*net.TCPAddr).Port
	natsURL = natsSrv.ClientURL()
	DeferCleanup(func() { natsSrv.Shutdown() })

	testNC, err = nats.Connect(natsURL, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(testNC.Close)
	testJS, err = jetstream.New(testNC)
	Expect(err).NotTo(HaveOccurred())

	Expect(k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: managerNamespace}})).To(Succeed())
	// A real database, so the status can report on the tenants' rows.
	dbURL, drop, err := testdb.Fresh(ctx, "controllers")
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(drop)
	Expect(worker.Migrate(ctx, dbURL)).To(Succeed())
	databaseURL = dbURL
	Expect(k8s.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: databaseSecret, Namespace: managerNamespace},
		StringData: map[string]string{"url": dbURL},
	})).To(Succeed())

	managerCfg = managerIdentity()
	operatorMetrics = controllers.NewMetrics(metrics.Registry)
	stopManager = startManager()
	DeferCleanup(func() { stopManager() })
})

// managerIdentity is a user bound to nothing but the ClusterRole that `make manifests` generates
// from the RBAC markers (config/rbac/role.yaml), so the suite fails if the markers miss a
// permission the operator needs.
func managerIdentity() *rest.Config {
	GinkgoHelper()
	raw, err := os.ReadFile(filepath.Join("..", "config", "rbac", "role.yaml"))
	Expect(err).NotTo(HaveOccurred())
	role := &rbacv1.ClusterRole{}
	Expect(yaml.UnmarshalStrict(raw, role)).To(Succeed())
	role.Name = "tally-manager-test"
	Expect(k8s.Create(ctx, role)).To(Succeed())
	Expect(k8s.Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "tally-manager-test"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: "User", APIGroup: "rbac.authorization.k8s.io", Name: "tally-manager"}},
	})).To(Succeed())
	user, err := testEnv.AddUser(envtest.User{Name: "tally-manager"}, nil)
	Expect(err).NotTo(HaveOccurred())
	return user.Config()
}

// The operator's write and reconcile counters, printed with the suite's report: they show
// whether periodic reconciles stay free of API writes.
var _ = AfterSuite(func() {
	families, err := metrics.Registry.Gather()
	Expect(err).NotTo(HaveOccurred())
	var b strings.Builder
	for _, f := range families {
		switch f.GetName() {
		case "controller_runtime_reconcile_total", "tally_operator_applies_total", "tally_operator_status_writes_total":
			for _, m := range f.GetMetric() {
				var labels []string
				for _, l := range m.GetLabel() {
					labels = append(labels, l.GetName()+"="+l.GetValue())
				}
				fmt.Fprintf(&b, "%s{%s} %v\n", f.GetName(), strings.Join(labels, ","), m.GetCounter().GetValue())
			}
		case "tally_segmentsource_reconcile_duration_seconds", "controller_runtime_reconcile_time_seconds":
			for _, m := range f.GetMetric() {
				h := m.GetHistogram()
				if h.GetSampleCount() > 0 {
					fmt.Fprintf(&b, "%s count=%d mean=%.1fms\n", f.GetName(), h.GetSampleCount(), 1000*h.GetSampleSum()/float64(h.GetSampleCount()))
				}
			}
		}
	}
	AddReportEntry("operator metrics", b.String())
	GinkgoWriter.Print(b.String())
})

// operatorMetrics are the reconciler's metrics, registered once for every manager the suite starts.
var operatorMetrics *controllers.Metrics

// stopManager stops the running manager. The suite runs one with --require-tenant=false (the
// first-claim rule, recorded as Tenants: sources need no Tenant); specs that need another one stop
// it and start their own (see restartManager).
var stopManager func()

// startManager runs `tally manager`'s wiring (NewManager + Setup) with test settings: no leader
// election, no metrics or probe listeners, and a NATS connection that reconnects quickly.
// configure changes the options; the returned func stops the manager.
func startManager(configure ...func(*manager.Options)) (stop func()) {
	opts := &manager.Options{
		NATSURL:            natsURL,
		NATSCredsSecretKey: "nats.creds",
		WorkloadImage:      workloadImage,
		DatabaseSecret:     databaseSecret,
		DatabaseSecretKey:  "url",
		// Each tenant gets its own login, as `tally manager` does by default.
		TenantDatabaseRoles: true,
		ManagerNamespace:    managerNamespace,
		RequeueInterval:     testRequeueInterval,
		NATSTimeout:         2 * time.Second,
		MetricsAddr:         "0",
		ProbeAddr:           "0",
		GracefulShutdown:    5 * time.Second,
		EventRecorderName:   "tally-operator",
		// What `tally manager` runs with when neither --receiver-resources nor --worker-resources is given.
		ReceiverResources: resources.DefaultReceiverResources(),
		WorkerResources:   resources.DefaultWorkerResources(),
		// The suite may stop the manager and start another one.
		SkipControllerNameValidation: true,
	}
	for _, c := range configure {
		c(opts)
	}
	mgr, err := manager.NewManager(managerCfg, opts)
	Expect(err).NotTo(HaveOccurred())
	nc, err := nats.Connect(natsURL, nats.Name("tally-manager-test"), nats.MaxReconnects(-1),
		nats.ReconnectWait(200*time.Millisecond), nats.RetryOnFailedConnect(true))
	Expect(err).NotTo(HaveOccurred())
	Expect(manager.SetupWithMetrics(mgr, opts, manager.NewNATS(nc, natsURL), operatorMetrics)).To(Succeed())

	mctx, cancel := context.WithCancel(ctrl.LoggerInto(context.Background(), GinkgoLogr))
	done := make(chan struct{})
	go func() {
		defer GinkgoRecover()
		defer close(done)
		Expect(mgr.Start(mctx)).To(Succeed())
	}()
	return func() {
		cancel()
		Eventually(done).Should(BeClosed())
		nc.Close()
	}
}

// restartManager replaces the suite's manager with one configured by configure until the
// current container ends (call it from BeforeAll of a Serial, Ordered container), then brings
// the suite's own back.
func restartManager(configure func(*manager.Options)) {
	stopManager()
	DeferCleanup(func() {
		stopManager()
		stopManager = startManager()
	})
	stopManager = startManager(configure)
}

func startNATS(port int) {
	var err error
	natsSrv, err = natsserver.Start(natsserver.Options{Port: port, StoreDir: natsDir})
	Expect(err).NotTo(HaveOccurred())
}
