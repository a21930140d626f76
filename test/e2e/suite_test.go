// Package e2e runs the whole path the way a cluster would, short of a kubelet: a real API server
// (envtest), `tally manager` as its own process, the receiver and worker processes started from
// the exact pod templates the operator wrote, real NATS JetStream, the local Postgres, and a real
// Segment client.
package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/test/testdb"
	"github.com/tallyhq/tally/test/testenv"
	"github.com/tallyhq/tally/workers/natsauth"
	"github.com/tallyhq/tally/workers/natsserver"
)

func TestE2E(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "End to end")
}

const managerNamespace = "tally-system"

var (
	ctx        context.Context
	repoRoot   string
	tallyBin   string
	kubectlBin string
	kubeconfig string
	k8s        client.Client
	natsURL    string
	js         jetstream.JetStream
	dbURL      string
	db         *pgxpool.Pool
	workDir    string
)

var _ = BeforeSuite(func() {
	ctx = context.Background()
	var err error
	repoRoot, err = filepath.Abs("../..")
	Expect(err).NotTo(HaveOccurred())
	workDir = GinkgoT().TempDir()

	By("building the tally binary the pods run")
	tallyBin, err = testenv.BuildTally(workDir)
	Expect(err).NotTo(HaveOccurred())

	By("starting a real API server")
	assets, err := testenv.EnvtestAssets()
	Expect(err).NotTo(HaveOccurred())
	kubectlBin = filepath.Join(assets, "kubectl")
	scheme := runtime.NewScheme()
	Expect(clientgoscheme.AddToScheme(scheme)).To(Succeed())
	Expect(tallyv1.AddToScheme(scheme)).To(Succeed())
	testEnv := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths:     []string{filepath.Join(repoRoot, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		Scheme:                scheme,
	}
	// Stop even when Start fails half-way, or etcd and kube-apiserver outlive the suite.
	DeferCleanup(testEnv.Stop)
	cfg, err := testEnv.Start()
	Expect(err).NotTo(HaveOccurred())
	k8s, err = client.New(cfg, client.Options{Scheme: scheme})
	Expect(err).NotTo(HaveOccurred())
	admin, err := testEnv.AddUser(envtest.User{Name: "e2e-admin", Groups: []string{"system:masters"}}, nil)
	Expect(err).NotTo(HaveOccurred())
	kc, err := admin.KubeConfig()
	Expect(err).NotTo(HaveOccurred())
	kubeconfig = filepath.Join(workDir, "kubeconfig")
	Expect(os.WriteFile(kubeconfig, kc, 0o600)).To(Succeed())

	By("starting NATS with JetStream in decentralized JWT mode")
	natsAuth, err := natsserver.NewAuth()
	Expect(err).NotTo(HaveOccurred())
	ns, err := natsserver.Start(natsserver.Options{StoreDir: filepath.Join(workDir, "nats"), Auth: natsAuth})
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(func() { stopNATS(ns) })
	natsURL = ns.ClientURL()
	// The account's full user: the manager's own connection, and the test's.
	adminCreds, err := natsauth.EmbeddedAdminCreds(natsAuth)
	Expect(err).NotTo(HaveOccurred())
	adminCredsFile := filepath.Join(workDir, "manager.creds")
	Expect(os.WriteFile(adminCredsFile, adminCreds, 0o600)).To(Succeed())
	nc, err := nats.Connect(natsURL, nats.UserCredentials(adminCredsFile))
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(nc.Close)
	js, err = jetstream.New(nc)
	Expect(err).NotTo(HaveOccurred())

	By("creating a fresh database on the local Postgres")
	var drop func()
	dbURL, drop, err = testdb.Fresh(ctx, "e2e")
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(drop)
	db, err = pgxpool.New(ctx, dbURL)
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(db.Close)

	By("installing the manager's namespace and database Secret")
	Expect(k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: managerNamespace}})).To(Succeed())
	Expect(k8s.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "tally-database", Namespace: managerNamespace},
		StringData: map[string]string{"url": dbURL},
	})).To(Succeed())
	// The signing key the manager issues each source's receiver and worker NATS users with.
	Expect(k8s.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "tally-nats-signing-key", Namespace: managerNamespace},
		StringData: map[string]string{"seed": natsAuth.SigningKeySeed, "account": natsAuth.AccountPublicKey()},
	})).To(Succeed())

	By("running tally manager as its own process")
	manager := startProcess("manager", exec.Command(tallyBin, "manager",
		"--kubeconfig="+kubeconfig,
		"--nats-url="+natsURL,
		"--nats-creds="+adminCredsFile,
		"--nats-account-signing-key-secret=tally-nats-signing-key",
		"--database-secret=tally-database",
		"--manager-namespace="+managerNamespace,
		"--workload-image=ghcr.io/tallyhq/tally:e2e",
		"--leader-elect=false",
		"--metrics-bind-address=0",
		"--health-probe-bind-address=0",
		"--requeue-interval=2s",
		"--log-format=text",
	))
	DeferCleanup(manager.stop)
})

func stopNATS(ns *server.Server) {
	ns.Shutdown()
	ns.WaitForShutdown()
}

// kubectl runs the kubectl built at the API server's version against the test cluster.
func kubectl(args ...string) (string, error) {
	cmd := exec.Command(kubectlBin, append([]string{"--kubeconfig=" + kubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func kubectlApply(manifest string) {
	cmd := exec.Command(kubectlBin, "--kubeconfig="+kubeconfig, "apply", "-f", "-")
	cmd.Stdin = strings.NewReader(manifest)
	out, err := cmd.CombinedOutput()
	Expect(err).NotTo(HaveOccurred(), string(out))
}
