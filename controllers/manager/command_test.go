package manager_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/manager"
	"github.com/tallyhq/tally/workers/natsserver"
)

func TestNATSURLIsRequired(t *testing.T) {
	cmd := manager.NewCommand()
	cmd.SetArgs([]string{"--leader-elect=false"})
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "--nats-url is required") {
		t.Fatalf("err = %v", err)
	}
}

// TestManagerCommand runs `tally manager` as a user would (flags only, a kubeconfig file, leader
// election on) against an envtest API server and an embedded NATS server, and checks that it
// elects itself, reconciles a SegmentSource, and serves health and per-object metrics.
func TestManagerCommand(t *testing.T) {
	g := NewWithT(t)
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		out, err := exec.Command(filepath.Join("..", "..", "hack", "envtest.sh")).Output()
		g.Expect(err).NotTo(HaveOccurred())
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		assets = lines[len(lines)-1]
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
	}
	t.Cleanup(func() { _ = env.Stop() })
	cfg, err := env.Start()
	g.Expect(err).NotTo(HaveOccurred())
	admin, err := env.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}}, nil)
	g.Expect(err).NotTo(HaveOccurred())
	kc, err := admin.KubeConfig()
	g.Expect(err).NotTo(HaveOccurred())
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	g.Expect(os.WriteFile(kubeconfig, kc, 0o600)).To(Succeed())

	ns, err := natsserver.Start(natsserver.Options{StoreDir: t.TempDir()})
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(ns.Shutdown)

	c, err := client.New(cfg, client.Options{Scheme: manager.Scheme()})
	g.Expect(err).NotTo(HaveOccurred())
	ctx := context.Background()
	for _, name := range []string{"tally-system", "tenants"} {
		g.Expect(c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})).To(Succeed())
	}
	g.Expect(c.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "tally-database", Namespace: "tally-system"},
		StringData: map[string]string{"url": "postgres://db/tally"}})).To(Succeed())
	g.Expect(c.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "nats-creds", Namespace: "tally-system"},
		StringData: map[string]string{"nats.creds": "-----BEGIN NATS USER JWT-----"}})).To(Succeed())

	metricsAddr, probeAddr := freeAddr(t), freeAddr(t)
	cmd := manager.NewCommand()
	cmd.SetArgs([]string{
		"--kubeconfig=" + kubeconfig,
		"--nats-url=" + ns.ClientURL(),
		"--database-secret=tally-database",
		"--nats-creds-secret=nats-creds",
		"--manager-namespace=tally-system",
		"--workload-image=registry.example/tally:v1",
		"--metrics-bind-address=" + metricsAddr,
		"--health-probe-bind-address=" + probeAddr,
		"--leader-elect=true",
		"--leader-elect-lease-duration=4s", "--leader-elect-renew-deadline=3s", "--leader-elect-retry-period=500ms",
		"--log-level=error",
	})
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(runCtx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("manager: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("manager did not stop")
		}
	})

	g.Eventually(func() error {
		return c.Get(ctx, types.NamespacedName{Namespace: "tally-system", Name: "tally-manager.tally.dev"}, &coordinationv1.Lease{})
	}, "30s").Should(Succeed(), "leader election lease")
	g.Eventually(func() (int, error) { return httpStatus("http://" + probeAddr + "/readyz") }, "10s").Should(Equal(http.StatusOK))

	g.Expect(c.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "web-segment", Namespace: "tenants"},
		StringData: map[string]string{"writeKey": "k1"}})).To(Succeed())
	src := &tallyv1.SegmentSource{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "tenants"},
		Spec:       tallyv1.SegmentSourceSpec{Tenant: "acme", WriteKeySecretRef: tallyv1.SecretKeyRef{Name: "web-segment"}},
	}
	g.Expect(c.Create(ctx, src)).To(Succeed())
	g.Eventually(func() string {
		got := &tallyv1.SegmentSource{}
		if err := c.Get(ctx, client.ObjectKeyFromObject(src), got); err != nil {
			return err.Error()
		}
		if r := meta.FindStatusCondition(got.Status.Conditions, tallyv1.ConditionReady); r != nil {
			return r.Reason
		}
		return ""
	}, "30s").Should(Equal("RollingOut"))

	recv := &appsv1.Deployment{}
	g.Expect(c.Get(ctx, types.NamespacedName{Namespace: "tenants", Name: "web-receiver"}, recv)).To(Succeed())
	g.Expect(recv.Spec.Template.Spec.Containers[0].Image).To(Equal("registry.example/tally:v1"))
	g.Expect(recv.Spec.Template.Spec.Containers[0].Args).To(ContainElement("--nats-creds=/etc/tally/nats/nats.creds"))
	creds := &corev1.Secret{}
	g.Expect(c.Get(ctx, types.NamespacedName{Namespace: "tenants", Name: "web-nats-creds"}, creds)).To(Succeed())
	g.Expect(string(creds.Data["nats.creds"])).To(Equal("-----BEGIN NATS USER JWT-----"))

	g.Eventually(func() (string, error) { return httpBody("http://" + metricsAddr + "/metrics") }, "10s").Should(
		ContainSubstring(`tally_segmentsource_condition{name="web",namespace="tenants",status="False",type="Ready"} 1`))
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func httpStatus(url string) (int, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

func httpBody(url string) (string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", url, resp.Status)
	}
	return string(b), err
}
