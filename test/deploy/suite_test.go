// Package deploy_test checks the two ways users install Tally: the Helm chart (charts/tally) and the
// kustomize install (config/default). Both are rendered the way users render them, inspected, and
// applied with server-side dry-run to a real API server (envtest) in namespaces that enforce the
// "restricted" Pod Security Standard.
//
// Helm is the real helm CLI, installed from the Go module proxy (`go install
// helm.sh/helm/v3/cmd/helm@v3.22.0`, cached by the Go build cache) unless HELM names another
// binary; kustomize is the kustomize API (krusty). KUBEBUILDER_ASSETS, or else the last line of hack/envtest.sh, gives kube-apiserver, etcd
// and kubectl.
package deploy_test

import (
	"os"
	"path/filepath"
	"testing"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/tallyhq/tally/test/testenv"
)

func TestDeploy(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "Deploy (Helm chart and kustomize)")
}

var (
	// repoRoot is the repository's top directory.
	repoRoot string
	// kube runs kubectl against the envtest API server.
	kube *kubectl
	// env is the envtest API server, for identities of the tests' own (env.AddUser).
	env *envtest.Environment
)

// Namespaces the tests install into. Both enforce and warn on the "restricted" Pod Security Standard.
const (
	defaultNamespace = "tally-system"
	customNamespace  = "tally-ops"
	watchedNamespace = "tenants"
	installNamespace = "tally-helm"
	// natsNamespace is where custom-values.yaml says NATS runs (its ingress NetworkPolicy goes there).
	natsNamespace = "messaging"
)

var _ = BeforeSuite(func() {
	var err error
	repoRoot, err = filepath.Abs(filepath.Join("..", ".."))
	Expect(err).NotTo(HaveOccurred())
	Expect(filepath.Join(repoRoot, "go.mod")).To(BeAnExistingFile())

	By("installing helm " + helmVersion + " from the Go module proxy")
	installHelm(GinkgoT().TempDir())

	By("building or finding the envtest binaries with hack/envtest.sh")
	assets, err := testenv.EnvtestAssets()
	Expect(err).NotTo(HaveOccurred())
	Expect(filepath.Join(assets, "kubectl")).To(BeAnExistingFile(), "kubectl in KUBEBUILDER_ASSETS")

	By("starting the envtest API server")
	env = &envtest.Environment{BinaryAssetsDirectory: assets}
	// Stop even when Start fails half-way: Start can leave etcd and kube-apiserver running.
	DeferCleanup(env.Stop)
	_, err = env.Start()
	Expect(err).NotTo(HaveOccurred())

	user, err := env.AddUser(envtest.User{Name: "deploy-test", Groups: []string{"system:masters"}}, nil)
	Expect(err).NotTo(HaveOccurred())
	kubeconfig, err := user.KubeConfig()
	Expect(err).NotTo(HaveOccurred())
	kubeconfigPath := filepath.Join(GinkgoT().TempDir(), "kubeconfig")
	Expect(os.WriteFile(kubeconfigPath, kubeconfig, 0o600)).To(Succeed())
	kube = &kubectl{path: filepath.Join(assets, "kubectl"), kubeconfig: kubeconfigPath}

	By("creating namespaces that enforce the restricted Pod Security Standard")
	for _, ns := range []string{defaultNamespace, customNamespace, watchedNamespace, installNamespace, natsNamespace} {
		kube.MustApply(restrictedNamespace(ns))
	}

	By("installing the ServiceMonitor CRD (a stand-in for the Prometheus Operator's)")
	kube.MustApply(readFile("testdata/servicemonitor-crd.yaml"))
})
